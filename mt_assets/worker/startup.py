"""Start-up, once per worker process: settings, the volume check, the models loaded from the volume.

`startup()` returns a `Worker` (what every job uses) or raises `StartupError` with a message that
lists what is wrong, which `python -m mt_assets.worker` prints before exiting non-zero. In order:

1. settings from the environment (environment.py)
2. the volume and the manifest (MT_VOLUME; MT_PROFILE or MT_MANIFEST)
3. `check_volume`: every file of the profile there, at its pinned size, and not contradicted by the
   hash cache; no hashing (volume_check.py)
4. `MultiTalkRenderer.from_volume` once, on MT_RENDER_DEVICE (default: CUDA when visible), exactly
   as the CLI and Dagster build theirs: bf16 with TF32 off on CUDA, fp32 on the CPU, the bf16
   repacks when they are current and the hash cache vouches for their files (else the originals:
   verifying a repack would hash it), the load strategy of MT_LOAD_STRATEGY, low VRAM's budget of
   MT_PERSISTENT_PARAMS; seconds per load unit are logged as each comes in

Dagster is never imported here or below (DESIGN.md: the worker imports core only).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mt_assets.manifest import Manifest, ManifestError, load_manifest, load_profile
from mt_assets.volume import LocalVolume, VolumeError, open_mounted_volume
from mt_assets.worker.environment import ConfigError, WorkerSettings
from mt_assets.worker.volume_check import VolumeCheck, check_volume

if TYPE_CHECKING:
    from mt_assets.models.pipeline import LoadReport
    from mt_assets.render.pipeline import MultiTalkRenderer

log = logging.getLogger("mt_assets.worker")


class StartupError(RuntimeError):
    """The worker cannot serve jobs; the message says why (every file at fault, for the volume)."""

    def __init__(self, message: str, *, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class Worker:
    """What every job of this process uses."""

    settings: WorkerSettings
    volume: LocalVolume
    manifest: Manifest
    renderer: MultiTalkRenderer
    check: VolumeCheck
    load_seconds: float

    @property
    def outputs(self) -> Path:
        from mt_assets.jobs.outputs import output_dir

        return output_dir(self.volume.root)


def open_settings(settings: WorkerSettings) -> tuple[LocalVolume, Manifest]:
    """The volume and the manifest the settings name; StartupError (status 2) when they cannot be used."""
    try:
        volume = open_mounted_volume(settings.volume, "the worker")
        manifest = (
            load_manifest(settings.manifest) if settings.manifest else load_profile(settings.profile or "")
        )
    except (VolumeError, ManifestError) as e:
        raise StartupError(str(e), exit_status=2) from None
    return volume, manifest


def startup(settings: WorkerSettings | None = None) -> Worker:
    """Check the volume and load every model once; see the module docstring."""
    started = time.perf_counter()
    try:
        settings = settings or WorkerSettings.from_env()
    except ConfigError as e:
        raise StartupError(str(e), exit_status=2) from None
    volume, manifest = open_settings(settings)

    check = check_volume(manifest, volume)
    if not check.ok:
        lines = [
            f"volume {volume.root} is not complete for profile {manifest.profile} "
            f"({len(check.problems)} of {len(check.files)} files):",
            *(f"  {f.describe()}" for f in check.problems),
            f"next: mt-assets provision --profile {manifest.profile} --volume {volume.root}",
        ]
        raise StartupError("\n".join(lines))
    counts = check.counts()
    log.info(
        "volume %s, profile %s: %d files present at their pinned sizes, %d verified by the hash cache "
        "(%s), %d unverified (run `mt-assets audit` to verify them)",
        volume.root,
        manifest.profile,
        len(check.files),
        counts["ok"],
        check.cache,
        counts["unverified"],
    )

    from mt_assets.models.reading import strategy_from_env
    from mt_assets.render.pipeline import DeviceError, MultiTalkRenderer, render_dtype, resolve_device

    try:
        device = resolve_device(settings.device)
        strategy = strategy_from_env()
    except DeviceError as e:
        raise StartupError(f"MT_RENDER_DEVICE={e}", exit_status=2) from None
    except ValueError as e:
        raise StartupError(str(e), exit_status=2) from None

    def loaded(report: LoadReport) -> None:
        n = len(report.files)
        source = f"repack {report.repack}" if report.repack else f"{n} file{'s' if n != 1 else ''}"
        log.info(
            "loaded %-14s %7.2f s  %14s bytes  (%s)", report.unit, report.seconds, f"{report.bytes:,}", source
        )

    log.info(
        "loading the models from %s onto %s (%s, load strategy %s)",
        volume.root,
        device,
        render_dtype(device),
        strategy,
    )
    load_started = time.perf_counter()
    try:
        renderer = MultiTalkRenderer.from_volume(
            volume,
            manifest,
            device=str(device),
            persistent_params=settings.persistent_params,
            strategy=strategy,
            on_loaded=loaded,
        )
    except (ManifestError, OSError, ValueError) as e:
        # A file that passed the size check but does not load (a bad header, keys that do not match).
        raise StartupError(f"loading the models from {volume.root}: {type(e).__name__}: {e}") from e
    load_seconds = time.perf_counter() - load_started
    components = renderer.c
    log.info(
        "ready in %.2f s (models %.2f s, %s bytes); serving jobs",
        time.perf_counter() - started,
        load_seconds,
        f"{components.bytes:,}",
    )
    return Worker(
        settings=settings,
        volume=volume,
        manifest=manifest,
        renderer=renderer,
        check=check,
        load_seconds=load_seconds,
    )
