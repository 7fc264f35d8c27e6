"""`make demo`: the main job on the embedded defaults, through Dagster, then a summary.

Builds the tiny mirror under ./var/ if it is absent, materializes every model file asset, the
file checks and the bundles against the persistent instance in DAGSTER_HOME (so the runs are
there in the UI afterwards), and prints what happened and how to look at it.
"""

import os
import sys
from pathlib import Path

import dagster as dg
from rich.console import Console
from rich.table import Table

from mt_assets.config import Settings
from mt_assets.defs.definitions import build_definitions, manifest_from_env
from mt_assets.manifest import load_profile
from mt_assets.models.tiny import TINY_PROFILE, build_tiny_mirror
from mt_assets.units import human_bytes


def main() -> int:
    console = Console(highlight=False)
    settings = Settings.from_env()
    if settings.profile == TINY_PROFILE and not os.environ.get("MT_MANIFEST"):
        mirror = Path(settings.source)
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
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
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
        console.print("next: `make ui`, then open http://127.0.0.1:3000/assets to see them (and each run's log)")
        real = load_profile("multitalk-480p")
        needed = sum(f.planned_size or 0 for f in real.files)
        console.print(
            f"the real profile, multitalk-480p: {len(real.files)} files, ~{human_bytes(needed)}; on a RunPod volume: "
            "`mt-assets audit --profile multitalk-480p --volume /runpod-volume`"
        )
        return 0
    console.print(f"[red]the run failed[/]: see `make ui` → Runs → {result.run_id}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
