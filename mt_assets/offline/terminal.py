"""What `mt-assets verify-offline` shows: per load path (dtype) one table of load units and its
violations; then the isolation used and one closing line."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mt_assets.offline.isolation import NETWORK_NAMESPACE
from mt_assets.offline.verify import OfflineProof, OfflineReport
from mt_assets.units import human_bytes

STATUS_STYLE = {"loaded": "green", "failed": "red", "not_run": "yellow"}
STACK_LINES = 6  # innermost frames shown per network attempt (all of them are in --json)


def print_offline(proof: OfflineProof, console: Console) -> None:
    for i, report in enumerate(proof.reports):
        if i:
            console.print()
        print_report(report, console)
    for dtype, why in proof.skipped.items():
        console.print(f"{dtype}: not proved: {escape(why)}", style="dim")
    if proof.isolation.mode == NETWORK_NAMESPACE:
        console.print(f"isolation: {proof.isolation.mode} — {proof.isolation.description}")
    else:
        console.print(
            f"[yellow]isolation: {proof.isolation.mode}[/] — {proof.isolation.description}; "
            f"{escape(proof.isolation.reason or '')}"
        )
    console.print(_next_step(proof))


def print_report(report: OfflineReport, console: Console) -> None:
    """One load path: its table, its violations, the files it touched."""
    table = Table(
        title=f"offline load ({report.dtype}) of profile {report.profile} from volume {report.volume}",
        title_justify="left",
    )
    for col, justify in (
        ("unit", "left"),
        ("status", "left"),
        ("repack", "left"),
        ("seconds", "right"),
        ("bytes", "right"),
        ("files", "right"),
    ):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for u in report.units:
        table.add_row(
            u.unit,
            f"[{STATUS_STYLE.get(u.status, 'red')}]{u.status}[/]",
            u.repack or "-",
            f"{u.seconds:.2f}" if u.seconds is not None else "-",
            human_bytes(u.bytes) if u.bytes is not None else "-",
            str(len(u.files)),
        )
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        f"{report.total_seconds:.2f}",
        human_bytes(sum(u.bytes or 0 for u in report.units)),
        "",
        style="bold",
    )
    console.print(table)

    for u in report.units:
        if u.error:
            console.print(f"[bold red]failed[/] {u.unit}: {escape(u.error)}")
    for a in report.network_attempts:
        times = f" ({a.count}x)" if a.count > 1 else ""
        console.print(
            f"[bold red]network attempt[/] {escape(a.where)} by {escape(a.event)}{times} in unit {a.unit or '-'}: "
            f"{escape(a.detail)}"
        )
        for frame in a.stack[-STACK_LINES:]:
            console.print(escape(frame.rstrip()), style="dim")
    for t in report.outside_volume:
        absent = "" if t.exists else " (tried; not there)"
        console.print(
            f"[bold red]outside the volume[/] {escape(t.path)}{absent}: {t.via} in unit {t.unit or '-'}"
        )
    for t in report.undeclared:
        console.print(
            f"[bold red]undeclared[/] {escape(t.path)}: on the volume but not in the manifest; unit {t.unit or '-'}"
        )
    for target in report.missing:
        console.print(f"[bold red]missing[/] {escape(target)}: declared, not on the volume")
    for error in report.errors:
        console.print(f"[bold red]error[/] {escape(error)}")

    counts = report.files_touched()
    console.print(
        f"files touched: {counts['volume']} on the volume, {counts['python']} Python, {counts['project']} project, "
        f"{counts['system']} system, {counts['sandbox']} sandbox; wall {report.wall_seconds:.1f}s"
    )


def _next_step(proof: OfflineProof) -> str:
    reports = proof.reports
    if proof.ok:
        paths = ", ".join(_path_summary(r) for r in reports)
        return (
            f"[green]offline: proven[/] — {paths} loaded from the volume only, network cut "
            f"({proof.isolation.mode}); next: deploy the worker with HF_HUB_OFFLINE=1 on this volume"
        )
    missing = sorted({t for r in reports for t in r.missing})
    if missing:
        return (
            f"[red]offline: not proven[/] — {len(missing)} declared files are missing; "
            f"next: mt-assets provision --profile {proof.profile}, then run verify-offline again"
        )
    if any(r.network_attempts or r.outside_volume or r.undeclared for r in reports):
        return (
            "[red]offline: not proven[/] — a loader reaches past the volume; next: load that unit from its "
            "volume folder (local_files_only=True) or declare the file in the manifest, then run verify-offline again"
        )
    return "[red]offline: not proven[/] — a unit did not load; next: fix the error above and run verify-offline again"


def _path_summary(report: OfflineReport) -> str:
    """'bfloat16 (7 units, 0.31s, repacks clip_vision_bf16 transformer_bf16)'."""
    loaded = sum(u.status == "loaded" for u in report.units)
    repacks = sorted({r for r in report.repacks.values() if r})
    used = f", repacks {' '.join(repacks)}" if repacks else ""
    return f"{report.dtype} ({loaded} units, {report.total_seconds:.2f}s{used})"
