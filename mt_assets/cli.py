"""`mt-assets`: the command line over the core (no Dagster here).

Exit status, for every command: 0 when the answer is "all good", 1 when something is missing
or wrong on the volume, 2 for bad input (an unreadable manifest, a volume that is not a
directory, bad flags), with a message on stderr that names it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from rich.console import Console

from mt_assets.audit import audit as run_audit
from mt_assets.config import Settings
from mt_assets.manifest import Manifest, ManifestError, load_manifest, load_profile
from mt_assets.terminal import RichProgress, print_audit
from mt_assets.volume import LocalVolume, VolumeError, open_volume

EXIT_OK, EXIT_PROBLEM, EXIT_BAD_INPUT = 0, 1, 2


def _bad_input_exits(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ManifestError, VolumeError) as e:
            # Plain text, never wrapped: scripts grep these messages.
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


def _manifest_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--manifest",
        "manifest_path",
        type=click.Path(dir_okay=False),
        help="A manifest YAML file (instead of --profile).",
    )(fn)
    fn = click.option("--profile", help="A shipped profile name (default: $MT_PROFILE or multitalk-480p).")(
        fn
    )
    return fn


def _volume_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--volume", help="The volume folder (default: $MT_VOLUME or ./var/volume).")(fn)


def resolve_manifest(profile: str | None, manifest_path: str | None) -> Manifest:
    if profile and manifest_path:
        raise click.UsageError("give --profile or --manifest, not both")
    if manifest_path:
        return load_manifest(manifest_path)
    return load_profile(profile or Settings.from_env().profile)


def resolve_volume(volume: str | None) -> LocalVolume:
    return open_volume(volume or Settings.from_env().volume)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Are all the models MultiTalk uses on the network volume, verified? Answer, and keep it true."""


@main.command()
@_manifest_options
@_volume_option
@click.option("--full", is_flag=True, help="Ignore the hash cache: re-read and re-hash every file.")
@click.option(
    "--jobs", type=click.IntRange(min=1), default=None, help="Files hashed at once (default: up to 4)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout, nothing else.")
@_bad_input_exits
def audit(
    profile: str | None,
    manifest_path: str | None,
    volume: str | None,
    full: bool,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Check every file of a profile on the volume: ok, missing, size_mismatch, hash_mismatch or unpinned."""
    manifest = resolve_manifest(profile, manifest_path)
    vol = resolve_volume(volume)
    err = Console(stderr=True)
    total = sum((f.size or f.estimated_size or 0) for f in manifest.files)
    with RichProgress(err, "hashing" if full else "checking", total) as progress:
        report = run_audit(manifest, vol, full=full, jobs=jobs, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        print_audit(report, Console(highlight=False))
    sys.exit(EXIT_OK if report.complete else EXIT_PROBLEM)


if __name__ == "__main__":
    main()
