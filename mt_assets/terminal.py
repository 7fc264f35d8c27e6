"""What the command line shows: rich progress while bytes move, tables and a closing line.

Progress goes to stderr (and only on a terminal), so `--json` keeps stdout to one document. The
display redraws itself 10 times a second from its own thread, never once per file; the files
table lists at most FILE_ROWS files (those not ok first): `--json` has every one.
"""

from __future__ import annotations

import itertools
import threading
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from mt_assets.audit import SPACE_MARGIN, AuditReport
from mt_assets.progress import FILES
from mt_assets.provision import Plan, ProvisionReport
from mt_assets.units import human_bytes
from mt_assets.volume.s3_probe import (
    MB,
    REQUIRED,
    RUNPOD_NOTES,
    RUNPOD_UNSUPPORTED,
    S3_MAX_PARTS,
    Capabilities,
)

FILE_ROWS = 200  # files listed in the audit's table at most

STATUS_STYLE = {
    "ok": "green",
    "missing": "red",
    "size_mismatch": "red",
    "hash_mismatch": "bold red",
    "unpinned": "yellow",
}


class _Progress(Progress):
    """rich's Progress without the redraw that `add_task` forces: an audit starts a task per file it
    reads, and a redraw each (~1 ms, and the whole display written out) cost more than the file.
    The display's own thread redraws 10 times a second; `redraw` does it now."""

    def refresh(self) -> None:
        pass

    def redraw(self) -> None:
        super().refresh()


class TaskProgress:
    """A rich display with one bar per task in flight (`mt_assets.progress.Progress`), on stderr."""

    def __init__(self, console: Console, *columns: ProgressColumn) -> None:
        self._progress = _Progress(*columns, console=console, transient=True, disable=not console.is_terminal)
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, key: str, label: str, total: int | None) -> None:
        with self._lock:
            self._tasks[key] = self._progress.add_task(label, total=total)

    def advance(self, key: str, n: int) -> None:
        task = self._tasks.get(key)
        if task is not None:
            self._progress.advance(task, n)

    def finish(self, key: str) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
        if task is not None:
            self._progress.remove_task(task)


class _AmountColumn(DownloadColumn):
    """Bytes done of the total; for the task counted in files (FILES), files done of the total."""

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") != FILES:
            return super().render(task)
        total = f"/{int(task.total):,}" if task.total is not None else ""
        return Text(f"{int(task.completed):,}{total} files", style="progress.download")


class _RateColumn(TransferSpeedColumn):
    """Bytes per second; files per second for the task counted in files."""

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") != FILES:
            return super().render(task)
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} files/s" if speed else "?", style="progress.data.speed")


class RichProgress(TaskProgress):
    """Bytes moving: one overall bar, one bar per file in flight, and the files checked (FILES).

    The overall bar shows once bytes move, or from the start when their total is known.
    """

    def __init__(self, console: Console, overall_label: str, overall_total: int | None) -> None:
        super().__init__(
            console,
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            _AmountColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
        )
        self._overall_shown = overall_total is not None
        self._overall = self._progress.add_task(
            overall_label, total=overall_total, visible=self._overall_shown
        )

    def start(self, key: str, label: str, total: int | None) -> None:
        if key == FILES:  # drawn at once, and when done: a quick audit shows its count too
            with self._lock:
                self._tasks[key] = self._progress.add_task(label, total=total, unit=FILES)
            self._progress.redraw()
        else:
            super().start(key, f"  {label}", total)

    def finish(self, key: str) -> None:
        if key == FILES:
            self._progress.redraw()
        super().finish(key)

    def advance(self, key: str, n: int) -> None:
        super().advance(key, n)
        if key != FILES:
            if not self._overall_shown:
                self._overall_shown = True
                self._progress.update(self._overall, visible=True)
            self._progress.advance(self._overall, n)


def print_audit(report: AuditReport, console: Console, *, show_ok: bool = True) -> None:
    totals = report.totals
    components = Table(title=f"profile {report.profile} on volume {report.volume}", title_justify="left")
    for col, justify in (
        ("component", "left"),
        ("files ok", "right"),
        ("needed", "right"),
        ("present", "right"),
        ("to fetch", "right"),
    ):
        components.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, t in report.component_totals().items():
        to_fetch = human_bytes(t.to_fetch_bytes) + (
            f" +{t.unknown_size_files} of unknown size" if t.unknown_size_files else ""
        )
        components.add_row(
            name, f"{t.ok}/{t.files}", human_bytes(t.needed_bytes), human_bytes(t.present_bytes), to_fetch
        )
    components.add_section()
    components.add_row(
        "total",
        f"{totals.ok}/{totals.files}",
        human_bytes(totals.needed_bytes),
        human_bytes(totals.present_bytes),
        human_bytes(totals.to_fetch_bytes),
        style="bold",
    )
    console.print(components)

    # Every file while there are few; beyond FILE_ROWS, those not ok, up to FILE_ROWS of them.
    few = len(report.files) <= FILE_ROWS
    wanted = (fa for fa in report.files if (show_ok and few) or fa.status != "ok")
    listed = list(itertools.islice(wanted, FILE_ROWS))
    unlisted = 0 if few else len(report.files) - len(listed)
    if listed or few:
        files = Table(
            title="files",
            title_justify="left",
            caption=f"{unlisted:,} more not listed here (--json lists every file)" if unlisted else None,
            caption_justify="left",
        )
        for col in ("status", "component", "path", "size", "expected", "detail"):
            files.add_column(col, overflow="fold")
        for fa in listed:
            files.add_row(
                f"[{STATUS_STYLE[fa.status]}]{fa.status}[/]",
                fa.file.component,
                fa.file.path,
                human_bytes(fa.size) if fa.size is not None else "-",
                human_bytes(fa.file.size)
                if fa.file.size is not None
                else f"~{human_bytes(fa.file.estimated_size)}",
                fa.detail or "",
            )
        console.print(files)
    else:
        console.print(f"files: all {unlisted:,} ok, not listed here (--json lists every file)")
    console.print(audit_summary(report))


def audit_summary(report: AuditReport) -> str:
    """One line that answers the question, then what to do next."""
    t = report.totals
    counts = report.counts()
    need = human_bytes(report.required_bytes)
    fit = "it fits" if report.fits else f"it does NOT fit (needs {need} with a {SPACE_MARGIN:.0%} margin)"
    if report.complete:
        return (
            f"[green]complete[/]: all {t.files} files of profile {report.profile} are on {report.volume} "
            f"and verified ({human_bytes(t.present_bytes)}"
            + ("; full audit: every byte re-read)." if report.full else ").")
        )
    if counts["missing"] == t.files:
        head = f"[red]nothing there yet[/]: {t.files} files, ~{human_bytes(t.needed_bytes)} needed"
    else:
        wrong = ", ".join(f"{n} {s}" for s, n in counts.items() if n and s != "ok")
        head = f"[red]incomplete[/]: {counts['ok']} of {t.files} files ok ({wrong}); {human_bytes(t.to_fetch_bytes)} to fetch"
    unknown = f" (+{t.unknown_size_files} files of unknown size)" if t.unknown_size_files else ""
    if counts["unpinned"] and not any(fa.to_fetch for fa in report.files):
        next_step = "next: pin the unpinned files (mt-assets lock), then audit again"
    else:
        next_step = "next: fetch what is missing (mt-assets provision --source hub|s3://bucket/prefix|MIRROR)"
    space = (
        f"{human_bytes(report.free_bytes)} free on the volume: {fit}"
        if report.free_bytes is not None
        else f"free space unknown on this volume (needs {need} with the margin)"
    )
    return f"{head}{unknown}; {space}.\n{next_step}"


OUTCOME_STYLE = {"placed": "green", "skipped": "cyan", "failed": "bold red"}


def print_plan(the_plan: Plan, console: Console) -> None:
    t = Table(
        title=f"plan: {len(the_plan.to_fetch)} files to fetch onto {the_plan.audit.volume}",
        title_justify="left",
    )
    for col in ("component", "path", "status now", "size"):
        t.add_column(col, overflow="fold")
    for fa in the_plan.to_fetch:
        t.add_row(fa.file.component, fa.file.path, fa.status, human_bytes(fa.file.planned_size))
    console.print(t)
    unknown = f" (+{the_plan.unknown_size_files} of unknown size)" if the_plan.unknown_size_files else ""
    if the_plan.free_bytes is None:
        console.print(
            f"{human_bytes(the_plan.to_fetch_bytes)} to fetch{unknown}, free space unknown on this volume."
        )
        return
    console.print(
        f"{human_bytes(the_plan.to_fetch_bytes)} to fetch{unknown}, {human_bytes(the_plan.free_bytes)} free: "
        + ("it fits." if the_plan.fits else "[red]it does NOT fit.[/]")
    )


def print_provision(report: ProvisionReport, console: Console) -> None:
    t = Table(title="provision", title_justify="left")
    for col in ("outcome", "status", "component", "path", "bytes", "MB/s", "tries", "detail"):
        t.add_column(col, overflow="fold")
    for r in report.results:
        t.add_row(
            f"[{OUTCOME_STYLE[r.outcome]}]{r.outcome}[/]",
            f"[{STATUS_STYLE.get(r.status, 'white')}]{r.status}[/]",
            r.file.component,
            r.file.path,
            human_bytes(r.bytes) + (f" (resumed at {human_bytes(r.resumed_from)})" if r.resumed_from else ""),
            f"{r.mb_per_s:.1f}" if r.bytes else "",
            str(r.attempts),
            r.detail or "",
        )
    if report.results:
        console.print(t)
    assert report.audit is not None
    console.print(audit_summary(report.audit))


def print_capabilities(caps: Capabilities, console: Console) -> None:
    """`mt-assets volume check`: one line per capability (yes/no, what it means), then the limits."""
    where = f" at {caps.endpoint}" if caps.endpoint else ""
    console.print(f"volume {caps.uri}{where}: what the s3:// backend will rely on", soft_wrap=True)
    width = max(len(p.name) for p in caps.probes)
    for p in caps.probes:
        answer = "[green]yes[/]" if p.ok else ("[bold red]no [/]" if p.name in REQUIRED else "[yellow]no [/]")
        console.print(f"  {p.name:<{width}}  {answer}  {p.meaning}", soft_wrap=True)
        if not p.ok:
            console.print(f"  {'':<{width}}       why: {p.detail}", markup=False, soft_wrap=True)
    console.print(
        f"RunPod's limits: PutObject < {caps.max_put_bytes // MB} MB; multipart parts <= "
        f"{caps.max_part_bytes // MB} MB (each but the last >= {caps.min_part_bytes // 2**20} MiB, at most "
        f"{S3_MAX_PARTS:,}); not supported: {', '.join(RUNPOD_UNSUPPORTED)}",
        markup=False,
        soft_wrap=True,
    )
    for note in RUNPOD_NOTES:
        console.print(f"  - {note}", markup=False, soft_wrap=True)
    for warning in caps.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
    if caps.usable:
        console.print(f"next: mt-assets audit --volume {caps.uri}", markup=False, soft_wrap=True)
    else:
        missing = ", ".join(name for name in REQUIRED if not getattr(caps, name))
        console.print(f"[red]this endpoint cannot hold an s3:// volume:[/] {missing} failed")
