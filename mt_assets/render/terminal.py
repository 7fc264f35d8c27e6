"""What `mt-assets render` shows: a bar per clip and per sampling step on stderr, then one table."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mt_assets.render.run import RenderResult
from mt_assets.terminal import TaskProgress


class StepProgress(TaskProgress):
    """Renders count clips and sampling steps, not bytes."""

    def __init__(self, console: Console) -> None:
        super().__init__(
            console, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(),
        )  # fmt: skip


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
