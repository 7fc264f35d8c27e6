"""`mt-assets`: the command line over the core (no Dagster here).

Exit status, for every command: 0 when the answer is "all good", 1 when something is missing
or wrong on the volume, 2 for bad input (an unreadable manifest, a volume that is not a
directory, bad flags), with a message on stderr that names it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from mt_assets import provision as provision_core
from mt_assets.audit import audit as run_audit
from mt_assets.config import PROFILE, SOURCE, VOLUME, ConfigError
from mt_assets.manifest import Manifest, ManifestError, load_manifest, load_profile
from mt_assets.sources import SourceError, TransientSourceError, open_source
from mt_assets.terminal import RichProgress, print_audit, print_plan, print_provision
from mt_assets.volume import (
    LocalVolume,
    Volume,
    VolumeError,
    close_volume,
    open_mounted_volume,
    open_volume,
)

EXIT_OK, EXIT_PROBLEM, EXIT_BAD_INPUT = 0, 1, 2


def _bad_input_exits(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TransientSourceError as e:
            # The network or the server, not the input: worth a retry later.
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_PROBLEM)
        except (ManifestError, VolumeError, SourceError, ConfigError) as e:
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
    fn = click.option("--profile", help="A shipped profile name (default: $MT_PROFILE or tiny).")(fn)
    return fn


def _volume_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--volume", help="The volume folder (default: $MT_VOLUME or ./var/volume).")(fn)


def resolve_manifest(profile: str | None, manifest_path: str | None) -> Manifest:
    if profile and manifest_path:
        raise click.UsageError("give --profile or --manifest, not both")
    if manifest_path:
        return load_manifest(manifest_path)
    return load_profile(profile or PROFILE.read())


def resolve_volume(volume: str | None) -> Volume:
    """The volume to audit or provision: a folder, or s3://bucket[/prefix]; closed (an S3 volume's
    connections and hash record) when the command ends, however it ends."""
    vol = open_volume(volume or VOLUME.read())
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(lambda: close_volume(vol))
    return vol


def resolve_mounted_volume(volume: str | None, purpose: str) -> LocalVolume:
    """The volume as a folder, for commands that read files as a filesystem; s3:// is refused."""
    return open_mounted_volume(volume or VOLUME.read(), purpose)


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
    # Files checked count on their own bar; the bytes read are known up front only with --full.
    total = sum((f.size or f.estimated_size or 0) for f in manifest.files) if full else None
    with RichProgress(err, "hashing", total) as progress:
        report = run_audit(manifest, vol, full=full, jobs=jobs, progress=progress)
    if as_json:
        report.write_json(sys.stdout)  # a file at a time: a million files' document is never held whole
        sys.stdout.write("\n")
    else:
        print_audit(report, Console(highlight=False))
    sys.exit(EXIT_OK if report.complete else EXIT_PROBLEM)


@main.command()
@_manifest_options
@_volume_option
@click.option(
    "--source",
    help="hub | s3://bucket/prefix | a mirror folder | a volume (a folder or s3:// prefix holding models/: "
    "replication, audited in full at the end) (default: $MT_SOURCE or hub).",
)
@click.option("--only", "only", multiple=True, help="Only this component (repeatable).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Files fetched at once (default: 4).")
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=provision_core.DEFAULT_RETRIES,
    show_default=True,
    help="Retries per file for transient source errors, with exponential backoff.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout, nothing else.")
@_bad_input_exits
def provision(
    profile: str | None,
    manifest_path: str | None,
    volume: str | None,
    source: str | None,
    only: tuple[str, ...],
    jobs: int | None,
    retries: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Fetch every missing or wrong file of a profile from a source onto the volume, verified."""
    manifest = resolve_manifest(profile, manifest_path)
    if only:
        manifest = manifest.select(list(only))
    vol = resolve_volume(volume)
    err = Console(stderr=True)
    out = Console(highlight=False)
    with RichProgress(err, "hashing", None) as progress:
        the_plan = provision_core.plan(manifest, vol, progress=progress)
    if dry_run:
        if as_json:
            click.echo(json.dumps(the_plan.to_json(), indent=2))
        else:
            print_plan(the_plan, out)
        # As audit's: 0 only when there is nothing to do.
        sys.exit(EXIT_OK if the_plan.audit.complete else EXIT_PROBLEM)
    try:
        the_plan.check_space()
    except provision_core.NotEnoughSpace as e:
        if as_json:
            click.echo(json.dumps({"complete": False, "error": str(e), "plan": the_plan.to_json()}, indent=2))
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_PROBLEM)
    src = open_source(source or SOURCE.read())
    try:
        with RichProgress(err, "fetching", the_plan.to_fetch_bytes) as progress:
            report = provision_core.apply(
                the_plan, src, vol, jobs=jobs or 4, retries=retries, progress=progress
            )
    finally:
        src.close()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        print_provision(report, out)
    if report.stopped:
        click.echo(f"error: {report.stopped}", err=True)  # one line: a full volume stopped the run
    sys.exit(EXIT_OK if report.complete else EXIT_PROBLEM)


@main.command("verify-offline")
@_manifest_options
@_volume_option
@click.option(
    "--only", "only", multiple=True, help="Only this load unit (repeatable; default: the whole load)."
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "all"]),
    default="auto",
    show_default=True,
    help="The load path(s) to prove: float32 (the originals), bfloat16 (the bf16 repacks where usable), "
    "all (both); auto: float32, and bfloat16 too when the volume holds a repack.",
)
@click.option(
    "--isolation",
    type=click.Choice(["auto", "netns", "audit-hooks"]),
    default=None,
    help="How the network is cut: netns (a fresh network namespace: every connection fails, native ones "
    "too; an error where the kernel refuses one), audit-hooks (Python's audit hook only); "
    "auto: netns where available. Default: $MT_OFFLINE_ISOLATION or auto.",
)
@click.option(
    "--override-unit",
    "override_unit",
    multiple=True,
    metavar="UNIT=LOCATION",
    help="Test the verifier: load UNIT naively from LOCATION (a repo id or a path) instead of the volume.",
)
@click.option(
    "--socket-only",
    is_flag=True,
    help="Leave HF_HUB_OFFLINE unset: only the audit hook cuts the network (the stricter proof).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout, nothing else.")
@_bad_input_exits
def verify_offline(
    profile: str | None,
    manifest_path: str | None,
    volume: str | None,
    only: tuple[str, ...],
    dtype: str,
    isolation: str | None,
    override_unit: tuple[str, ...],
    socket_only: bool,
    as_json: bool,
) -> None:
    """Run the worker's load with the network cut and prove it touches only the volume's declared files."""
    from mt_assets.offline import IsolationError, parse_overrides, prove_offline, resolve_isolation
    from mt_assets.offline.terminal import print_offline

    manifest = resolve_manifest(profile, manifest_path)
    vol = resolve_mounted_volume(volume, "verify-offline")
    try:
        overrides = parse_overrides(override_unit)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--override-unit") from None
    try:
        # Before the load: a namespace asked for and refused here is bad input, not a failed proof.
        cut = resolve_isolation(isolation)
    except IsolationError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    err = Console(stderr=True)
    with (
        err.status("loading with the network cut", spinner="dots")
        if err.is_terminal
        else contextlib.nullcontext()
    ):
        proof = prove_offline(
            vol,
            manifest,
            dtype=dtype,
            isolation=cut,
            only=list(only) or None,
            overrides=overrides,
            hub_offline=not socket_only,
        )
    if as_json:
        click.echo(json.dumps(proof.to_json(), indent=2))
    else:
        print_offline(proof, Console(highlight=False))
    sys.exit(EXIT_OK if proof.ok else EXIT_PROBLEM)


@main.command()
@_manifest_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Where to write the lock file (default: <manifest>.lock.yaml, or ./<profile>.lock.yaml).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the changes as one JSON document.")
@_bad_input_exits
def lock(profile: str | None, manifest_path: str | None, output: str | None, as_json: bool) -> None:
    """Resolve refs to commits and pin every file's size and sha256 (or git_sha1) from the Hub."""
    from mt_assets.manifest import lockfile
    from mt_assets.sources.hub import HubSource

    manifest = resolve_manifest(profile, manifest_path)
    if output:
        out_path = Path(output)
    elif manifest_path:
        out_path = Path(manifest_path).with_suffix(".lock.yaml")
    else:
        out_path = Path(f"{manifest.profile}.lock.yaml")
    previous = load_manifest(out_path) if out_path.exists() else None
    hub = HubSource()
    try:
        locked = lockfile.lock_manifest(manifest, hub)
    finally:
        hub.close()
    changes = lockfile.diff(previous if previous is not None else manifest, locked)
    lockfile.write_lock(
        locked,
        out_path,
        header=f"Locked from {manifest.source} by `mt-assets lock`.\nEvery revision is a commit; every file has its size and sha256 or git_sha1.",
    )
    if as_json:
        click.echo(json.dumps({"output": str(out_path), "changes": [c.__dict__ for c in changes]}, indent=2))
    else:
        against = f"previous lock {out_path}" if previous is not None else manifest.source
        click.echo(f"locked {len(locked.files)} files of profile {locked.profile} into {out_path}")
        click.echo(f"{len(changes)} changes against {against}:")
        for c in changes:
            click.echo(f"  {c.describe()}")
        click.echo(f"next: mt-assets provision --manifest {out_path} --source hub")


@main.command()
@click.argument("job_file", metavar="JOB", type=click.Path())
@_manifest_options
@_volume_option
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: <volume>/outputs).")
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="cpu renders in float32 (the reference's numbers); cuda in bfloat16 with TF32 off.",
)
@click.option("--t5-cpu", is_flag=True, help="Keep the T5 encoder on the CPU (saves ~11 GB of GPU memory).")
@click.option("--offload", is_flag=True, help="Move each model to the GPU only while it is used.")
@click.option(
    "--persistent-params",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Low VRAM: keep up to N DiT parameters (its first modules, in order) on the device; the rest "
    "stay on the host and move in one layer at a time (0: none resident). Default: MT_PERSISTENT_PARAMS; "
    "unset, the whole DiT.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the DiT evaluations the job will run and skip, and its clip plan, without rendering "
    "(with teacache only the DiT is loaded, for its time embedding; without it no model).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout, nothing else.")
@_bad_input_exits
def render(
    job_file: str,
    profile: str | None,
    manifest_path: str | None,
    volume: str | None,
    out: str | None,
    device: str,
    t5_cpu: bool,
    offload: bool,
    persistent_params: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Render a job file (YAML or JSON, MultiTalk's input format) or job folder to <out>/<id>/video.mp4."""
    # Before the heavy imports below (torch): a manifest or volume that cannot serve is refused at once.
    manifest = resolve_manifest(profile, manifest_path)
    vol = resolve_mounted_volume(volume, "render")

    from mt_assets.jobs.decode import load_job_media
    from mt_assets.jobs.outputs import OutputExists, check_output_free, output_dir
    from mt_assets.jobs.reader import load_job
    from mt_assets.jobs.schema import JobError, check_preset_served
    from mt_assets.render.pipeline import DeviceError, MultiTalkRenderer, RenderError, resolve_device
    from mt_assets.render.run import render_job
    from mt_assets.render.terminal import StepProgress, print_render
    from mt_assets.terminal import audit_summary

    err = Console(stderr=True)
    out_dir = output_dir(vol.root, Path(out) if out else None)
    try:
        # Decoded once: the same media validate the job and feed the render.
        job = load_job(job_file, volume_root=vol.root, check_media=False)
        check_preset_served(job, manifest.profile, manifest.presets)
        media = load_job_media(job)
        if not dry_run:
            check_output_free(job, out_dir)
    except (JobError, OutputExists) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    try:
        resolved = resolve_device(device)  # before minutes of audit and loading
    except DeviceError as e:
        click.echo(f"error: --device {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    # How the next command names the manifest, as this one did.
    where = f"--manifest {manifest_path}" if manifest_path else f"--profile {manifest.profile}"
    if dry_run and job.teacache is None:
        _print_dry_run(job, media, vol, manifest, resolved, as_json, where)  # no model needed: no audit
    # The volume must hold every file, verified (the hash cache makes this cheap), before any load.
    report = run_audit(manifest, vol)
    if not report.complete:
        bad = [f for f in report.files if f.status != "ok"]
        click.echo(f"error: volume {vol.root} is not complete for profile {manifest.profile}:", err=True)
        for f in bad:
            click.echo(f"  {f.status:14} {f.file.target}", err=True)
        err.print(audit_summary(report), highlight=False)
        sys.exit(EXIT_PROBLEM)
    if dry_run:
        with (
            err.status("loading the DiT for its time embedding")
            if err.is_terminal
            else contextlib.nullcontext()
        ):
            _print_dry_run(job, media, vol, manifest, resolved, as_json, where)

    with err.status("loading the models from the volume") if err.is_terminal else contextlib.nullcontext():
        # The DiT is read in the background while the encoders load and condition the job.
        renderer = MultiTalkRenderer.from_volume(
            vol,
            manifest,
            device=device,
            t5_cpu=t5_cpu,
            offload=offload,
            persistent_params="env" if persistent_params is None else persistent_params,
            background=["transformer"],
        )
    try:
        with StepProgress(err) as progress:
            result = render_job(job, renderer, manifest, out_dir, media=media, progress=progress)
    except (JobError, OutputExists) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except RenderError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_PROBLEM)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        print_render(result, Console(highlight=False))
    sys.exit(EXIT_OK)


def _print_dry_run(
    job: Any, media: Any, vol: LocalVolume, manifest: Manifest, device: Any, as_json: bool, where: str
) -> None:
    """`render --dry-run`: the job's evaluation plan (render/cost.py), then exit 0 (2 when its audio is too short)."""
    from mt_assets.render.cost import PlanError, dry_run
    from mt_assets.render.pipeline import render_dtype

    try:
        plan = dry_run(job, media, vol, manifest, dtype=render_dtype(device))
    except PlanError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    doc = {"id": job.id, **plan.to_json()}
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        teacache = doc["teacache"]
        skipped = f", TeaCache {teacache['threshold']:g} skips {plan.skipped}" if teacache else ""
        click.echo(
            f"{job.id}: {plan.clips} clip(s) of {plan.frames_per_clip} frames, {plan.steps} steps x "
            f"{plan.evaluations_per_step} DiT evaluations per step{skipped}: {plan.planned} DiT evaluations"
        )
        click.echo(f"next: mt-assets render {job.source} {where} --volume {vol.root}")
    sys.exit(EXIT_OK)


@main.group()
def jobs() -> None:
    """The render job queue on the volume: jobs/inbox -> queued -> rendering -> done | failed (or rejected)."""


@jobs.command("submit")
@click.argument("job_file", metavar="JOB", type=click.Path(dir_okay=False))
@_volume_option
@_bad_input_exits
def jobs_submit(job_file: str, volume: str | None) -> None:
    """Check a job file (media decoded) and drop it, with its local media, into <volume>/jobs/inbox/<id>/."""
    from mt_assets.jobs.queue import JobQueue
    from mt_assets.jobs.schema import JobError

    vol = resolve_mounted_volume(volume, "jobs submit")
    try:
        target = JobQueue(vol.root).submit(Path(job_file))
    except JobError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"submitted {target.name}: {target}")
    click.echo(f"next: the inbox sensor queues it; mt-assets jobs list --volume {vol.root}")


@jobs.command("list")
@_volume_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout, nothing else.")
@_bad_input_exits
def jobs_list(volume: str | None, as_json: bool) -> None:
    """Every render job on the volume and its state: inbox, queued, rendering, done, failed, rejected."""
    import time

    from rich.table import Table

    from mt_assets.jobs.queue import STATES, JobQueue

    vol = resolve_mounted_volume(volume, "jobs list")
    found = JobQueue(vol.root).status()
    if as_json:
        click.echo(json.dumps({"jobs": [s.to_json() for s in found]}, indent=2))
        return
    table = Table(title=f"render jobs on {vol.root}")
    for column in ("id", "state", "updated", "output or error"):
        table.add_column(column, overflow="fold")
    for s in found:
        detail = str(s.output) if s.output is not None else (s.error or "")
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.updated))
        table.add_row(s.id, s.state, updated, detail)
    console = Console(highlight=False)
    console.print(table)
    counts = [f"{n} {state}" for state in STATES if (n := sum(s.state == state for s in found))]
    summary = ", ".join(counts) or "no jobs"
    console.print(f"{summary}; drop job files or folders into {vol.root / 'jobs' / 'inbox'}")


@main.group()
def volume() -> None:
    """An `s3://` volume: a network volume seen through an S3-compatible API (RunPod's, per datacenter)."""


@volume.command("check")
@click.argument("uri", metavar="s3://BUCKET[/PREFIX]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout, nothing else.")
@_bad_input_exits
def volume_check(uri: str, as_json: bool) -> None:
    """Try what the s3:// backend relies on (conditional writes, metadata, Range, listing, multipart) on
    the volume itself, under <prefix>/.mt/probe-<random>/, and remove what was written.

    The endpoint, region and keys: MT_VOLUME_S3_ENDPOINT, MT_VOLUME_S3_REGION, MT_VOLUME_S3_ACCESS_KEY_ID and
    MT_VOLUME_S3_SECRET_ACCESS_KEY, else the AWS_* variables. Exit 0 when the volume is usable, 1 when a
    required capability failed, 2 when it cannot be reached (no such bucket, keys refused).
    """
    from mt_assets import config
    from mt_assets.sources.s3 import parse_s3_uri, scrub
    from mt_assets.terminal import print_capabilities
    from mt_assets.volume.s3_probe import probe

    bucket, prefix = parse_s3_uri(uri, role="volume")
    s3 = config.volume_s3_client(max_attempts=3)
    try:
        caps = probe(
            s3.client,
            bucket,
            prefix,
            endpoint=scrub(s3.client.meta.endpoint_url, s3.session),
            scrub=lambda text: scrub(text, s3.session),
        )
    finally:
        s3.client.close()
    if as_json:
        click.echo(json.dumps(caps.to_json(), indent=2))
    else:
        print_capabilities(caps, Console(highlight=False))
    sys.exit(EXIT_OK if caps.usable else EXIT_PROBLEM)


@main.group()
def tiny() -> None:
    """The tiny profile: the real layout at toy scale, built locally."""


@tiny.command("build")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--scale",
    type=click.Choice(["tiny", "medium"]),
    default="tiny",
    show_default=True,
    help="tiny: the shipped tiny profiles; medium: the same files at benchmark size (~2.8 GB, not shipped).",
)
@click.option(
    "--update-profile",
    is_flag=True,
    help="Rewrite the shipped tiny profiles (profiles/tiny.yaml and its add-on twins) from this build.",
)
@_bad_input_exits
def tiny_build(directory: str, seed: int, scale: str, update_profile: bool) -> None:
    """Write a mirror of every tiny profile's files into DIRECTORY (new or empty), plus their pinned manifests.

    One mirror serves `tiny` and its add-on twins (`tiny-fusionx`, `tiny-lightx2v`: the same files
    plus a tiny LoRA each; `tiny-int8`, `tiny-int8-fusionx`, `tiny-fp8-fusionx`: quantized DiT and T5
    files instead of the float ones); each manifest is written beside the model folders as <profile>.yaml.
    """
    from mt_assets.manifest import profile_path
    from mt_assets.tiny.profile import (
        TINY_PROFILE,
        build_tiny_mirror,
        tiny_addon_yaml,
        tiny_profile_yaml,
        tiny_twins,
    )

    if update_profile and scale != "tiny":
        click.echo(
            f"error: --update-profile rewrites the shipped tiny profiles; --scale {scale} is not shipped",
            err=True,
        )
        sys.exit(EXIT_BAD_INPUT)
    try:
        manifest = build_tiny_mirror(directory, seed=seed, scale=scale)
    except FileExistsError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    text = tiny_profile_yaml(manifest)
    # Beside the model folders (sources read only those): tiny.yaml, or medium.yaml for --scale medium.
    written = Path(directory) / f"{manifest.profile}.yaml"
    written.write_text(text)
    total = sum(f.size or 0 for f in manifest.files)
    click.echo(f"built {len(manifest.files)} files ({total:,} bytes) in {directory}; manifest: {written}")
    if scale != "tiny":
        click.echo(f"next: mt-assets provision --manifest {written} --source {directory}")
        return
    texts = {TINY_PROFILE: text}
    for twin in tiny_twins():
        texts[twin] = tiny_addon_yaml(directory, twin)
        (Path(directory) / f"{twin}.yaml").write_text(texts[twin])
        click.echo(f"add-on {twin}: manifest {Path(directory) / f'{twin}.yaml'}")
    differ = []
    for name, built in texts.items():
        shipped = profile_path(name)
        if update_profile:
            if shipped.read_text() != built:
                shipped.write_text(built)
                click.echo(f"updated {shipped}")
        elif shipped.read_text() != built:
            differ.append(str(shipped))
    if differ:
        click.echo(
            f"error: this build differs from the shipped {', '.join(differ)}: pass --update-profile if the "
            "builder changed on purpose",
            err=True,
        )
        sys.exit(EXIT_PROBLEM)
    click.echo(f"next: mt-assets provision --profile {TINY_PROFILE} --source {directory}")


if __name__ == "__main__":
    main()
