"""`make demo`: the main job on the embedded defaults, through Dagster, then a summary.

Builds the tiny mirror under ./var/ if it is absent, materializes every model file asset, the
file checks, the bundles and the offline proof against the persistent instance in DAGSTER_HOME
(so the runs are there in the UI afterwards), then renders two jobs the way users queue them: a
face image and speech-like audio made here are submitted to `<volume>/jobs/inbox/`, the
`render_inbox` sensor is ticked (as the daemon would), and each accepted job is rendered as a
partition of `renders`. It prints what happened, the mp4 paths, and how to look at it.
"""

import dataclasses
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import dagster as dg
import yaml
from rich.console import Console
from rich.table import Table

from mt_assets import config
from mt_assets.config import Settings
from mt_assets.defs.definitions import build_definitions, manifest_from_env, model_assets
from mt_assets.defs.renders import RENDERS_KEY
from mt_assets.defs.resources import VolumeResource
from mt_assets.jobs.queue import SETTLE_SECONDS, JobQueue
from mt_assets.manifest import Manifest, load_profile
from mt_assets.tiny.profile import build_tiny_mirror, stale_tiny_files, tiny_profile_names
from mt_assets.tiny.samples import write_face_image, write_speech
from mt_assets.units import human_bytes

# The demo's profile when MT_PROFILE is unset: the tiny profile with the FusionX LoRA twin, so one of
# its jobs renders with the fusionx preset (8 steps at text guidance 1.0) as MultiTalk's users run it.
DEMO_PROFILE = "tiny-fusionx"


def main() -> int:
    console = Console(highlight=False)
    settings = Settings.from_env()
    if not config.PROFILE.read_or(None) and not config.MANIFEST.read():
        settings = dataclasses.replace(settings, profile=DEMO_PROFILE)
    if settings.profile in tiny_profile_names() and not config.MANIFEST.read():
        mirror = Path(settings.source)
        stale = stale_tiny_files(mirror) if settings.source != "hub" and mirror.exists() else []
        if stale:  # built by an older version (e.g. other tokenizer bytes): the profile would refuse it
            console.print(
                f"the tiny mirror in {mirror} is out of date ({len(stale)} files differ); rebuilding"
            )
            shutil.rmtree(mirror)
        if settings.source != "hub" and not mirror.exists():
            console.print(f"building the tiny mirror in {mirror} ...")
            build_tiny_mirror(mirror)
    Path(settings.volume).mkdir(parents=True, exist_ok=True)
    manifest = manifest_from_env(settings)
    defs = build_definitions(manifest, settings)
    instance = dg.DagsterInstance.get()
    console.print(
        f"materializing {len(manifest.files)} model files and {len(manifest.bundles)} bundles "
        f"of profile {manifest.profile} from {settings.source} onto {Path(settings.volume).resolve()} ..."
    )
    # Dagster's event stream goes to the run's event log in the instance (the UI shows it), not
    # to the terminal before the summary: the console logger only speaks up for errors.
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    # The renders come below, through the inbox; the benchmark report (cold loads) is on demand.
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, raise_on_error=False, run_config=quiet, asset_selection=model_assets(defs)
    )

    materialized = result.get_asset_materialization_events()
    checks = result.get_asset_check_evaluations()
    outcomes: dict[str, int] = {}
    for event in materialized:
        kind = event.asset_key.path[0]
        if kind == "models":
            key = f"model files {event.materialization.metadata['outcome'].value}"
        elif kind == "bundles":
            key = "bundles loaded offline"
        elif kind == "repacks":
            key = "bf16 repacks written"
        else:
            key = f"{kind} (offline proof)"
        outcomes[key] = outcomes.get(key, 0) + 1
    table = Table(title=f"demo run {result.run_id[:8]}", title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    for what, n in sorted(outcomes.items()):
        table.add_row(what, str(n))
    table.add_row("checks passed", f"{sum(c.passed for c in checks)}/{len(checks)}")
    console.print(table)
    console.print(f"volume: {Path(settings.volume).resolve()}   instance: {instance.root_directory}")
    if result.success and all(c.passed for c in checks):
        console.print(
            "[green]every model file is on the volume and verified; the bundles and the worker's whole load "
            "path loaded from it with the network cut.[/]"
        )
        videos = demo_renders(defs, manifest, instance, Path(settings.volume).resolve(), quiet, console)
        if videos is None:
            return 1
        console.print("mp4 files:")
        for video in videos:
            console.print(f"  {video}", soft_wrap=True)
        console.print(
            "next: `make ui`, then open http://127.0.0.1:3000/assets to see them (and each run's log); "
            "`mt-assets jobs list` shows the render jobs"
        )
        real = load_profile("multitalk-480p")
        needed = sum(f.planned_size or 0 for f in real.files)
        console.print(
            f"the real profile, multitalk-480p: {len(real.files)} files, ~{human_bytes(needed)}; on a RunPod volume: "
            "`mt-assets audit --profile multitalk-480p --volume /runpod-volume`"
        )
        return 0
    console.print(f"[red]the run failed[/]: see `make ui` → Runs → {result.run_id}")
    return 1


# Small enough for 2 CPU cores in seconds; the tiny profile's weights are random, so the video is noise.
DEMO_JOB = {"size": "128x96", "frames": 17, "rerender": True}


def demo_renders(
    defs: dg.Definitions,
    manifest: Manifest,
    instance: dg.DagsterInstance,
    volume: Path,
    quiet: dict,
    console: Console,
) -> list[Path] | None:
    """Two jobs through the inbox, the sensor and the renders asset; the mp4 paths, or None on failure."""
    queue = JobQueue(volume)
    with tempfile.TemporaryDirectory(prefix="mt-demo-") as tmp:
        work = Path(tmp)
        write_face_image(work / "one" / "face.png", 320, 240)
        write_speech(work / "one" / "speech.wav", 1.2, pitch=140, seed=1)
        write_face_image(work / "two" / "faces.png", 400, 240, faces=2, seed=2)
        write_speech(work / "two" / "left.wav", 1.2, pitch=120, seed=2)
        write_speech(work / "two" / "right.wav", 1.2, pitch=220, seed=3)
        jobs = {
            # The fusionx preset where the profile serves it (8 steps x 2 DiT evaluations).
            "demo-one-speaker": (
                "one",
                {"cond_image": "face.png", "cond_audio": {"person1": "speech.wav"},
                 **({"preset": "fusionx"} if "fusionx" in manifest.presets else {"steps": 4})},
            ),
            "demo-two-speakers": (
                "two",
                {"cond_image": "faces.png", "audio_type": "para", "steps": 4,
                 "cond_audio": {"person1": "left.wav", "person2": "right.wav"}},
            ),
        }  # fmt: skip
        for job_id, (folder, fields) in jobs.items():
            # An interrupted demo leaves its own job behind, which would refuse the new one.
            for leftover in queue.withdraw(job_id):
                console.print(f"removed {leftover}, left by an interrupted demo", soft_wrap=True)
            doc = {"id": job_id, "prompt": "A person talks to the camera.", **DEMO_JOB, **fields}
            (work / folder / "job.yaml").write_text(yaml.safe_dump(doc))
            queue.submit(work / folder / "job.yaml")
    console.print(
        f"submitted {len(jobs)} render jobs to {queue.folder('inbox')}; ticking the render_inbox sensor ..."
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # resources are passed to the context below
        sensor = defs.get_sensor_def("render_inbox")
    # The inbox takes a young entry once two scans, SETTLE_SECONDS apart, saw it unchanged (a copy still
    # under way would have grown): the first tick notes the jobs, the next one queues them.
    requests: list[dg.RunRequest] = []
    for _ in range(3):
        time.sleep(SETTLE_SECONDS + 0.5)
        context = dg.build_sensor_context(
            instance=instance, resources={"volume": VolumeResource(path=str(volume))}
        )
        # The tick's own log lines are for the daemon's log: the context's logger is a Logger of its own
        # (also named "dagster"), so it is quieted itself.
        context.log.setLevel(logging.WARNING)
        tick = sensor(context)
        assert isinstance(tick, dg.SensorResult)
        for request in tick.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        requests += [r for r in tick.run_requests or [] if r.partition_key in jobs]
        if {r.partition_key for r in requests} >= set(jobs):
            break
    job = defs.resolve_implicit_global_asset_job_def()
    videos: list[Path] = []
    # Only the demo's own jobs: others queued on this volume are left to the daemon.
    for request in requests:
        run = job.execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            asset_selection=[RENDERS_KEY],
            run_config=quiet,
            tags=request.tags,
            raise_on_error=False,
        )
        if not run.success:
            console.print(
                f"[red]render {request.partition_key} failed[/]: see `make ui` → Runs → {run.run_id}"
            )
            return None
        [event] = run.get_asset_materialization_events()
        md = event.materialization.metadata
        videos.append(Path(str(md["video"].value)))
        console.print(
            f"rendered {request.partition_key}: {md['frames'].value} frames, {md['width'].value}x{md['height'].value}, "
            f"{md['dit_evaluations_run'].value} DiT evaluations, {md['seconds'].value:.1f} s → {md['video'].value}"
        )
    if len(videos) != len(jobs):
        console.print(
            f"[red]expected {len(jobs)} renders, the sensor queued {len(videos)}[/]: `mt-assets jobs list`"
        )
        return None
    return videos


if __name__ == "__main__":
    sys.exit(main())
