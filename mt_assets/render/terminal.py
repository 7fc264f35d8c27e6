"""What `mt-assets render` shows: a bar per clip and per sampling step on stderr, then one table."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import TimeRemainingColumn as Remaining
from rich.table import Table

from mt_assets.render.run import RenderResult


class StepProgress:
    """`mt_assets.progress.Progress` for renders: counts clips and steps, not bytes."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            Remaining(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> StepProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, key: str, label: str, total: int | None) -> None:
        with self._lock:
            self._tasks[key] = self._progress.add_task(label, total=total)

    def advance(self, key: str, n: int) -> None:
        if key in self._tasks:
            self._progress.advance(self._tasks[key], n)

    def finish(self, key: str) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
        if task is not None:
            self._progress.remove_task(task)


def print_render(result: RenderResult, console: Console) -> None:
    table = Table(title=f"render {result.job.id}", show_header=True, header_style="bold")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in result.timings["stages"].items():
        table.add_row(stage, f"{seconds:.2f}")
    table.add_row("[bold]total[/bold]", f"[bold]{result.timings['seconds']:.2f}[/bold]")
    console.print(table)
    console.print(
        f"{result.frames} frames ({result.duration:.2f} s at 25 fps), {result.width}x{result.height}, "
        f"{result.clips} clip(s), {result.seconds_per_step:.3f} s per step"
    )
    console.print(f"video: {result.output.video}")
    console.print(f"sha256: {result.output.sha256}")
