"""What `radio featurize` shows: a progress bar on a terminal, log lines otherwise, a summary table."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.table import Table

from .console import make_console


class Progress:
    """Per finished (tar, teacher): a rich bar with images/s and ETA, or a log line every 10 s."""

    def __init__(self, tty: bool, every: float = 10.0):
        self.tty, self.every = tty, every
        self.images, self.start, self.last = 0, time.perf_counter(), 0.0
        self.bar = None

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("featurize"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("featurize", total=None, rate="")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def update(self, result, done: int, total: int) -> None:
        self.images += result.valid * max(1, len(result.keys))
        elapsed = time.perf_counter() - self.start
        rate = f"{self.images / max(elapsed, 1e-9):.1f} images/s"
        if self.bar:
            self.bar.update(self.task, completed=done, total=total, rate=rate)
        elif elapsed - self.last >= self.every or done == total:
            self.last = elapsed
            print(
                f"featurize: {done}/{total} (tar, teacher) done, {rate}, {elapsed:.0f} s", file=sys.stderr, flush=True
            )
        if result.error:
            print(f"featurize: tar {result.tar_index} ({result.teacher}) failed: {result.error}", file=sys.stderr)


def print_summary(report) -> None:
    from radio.featurize.job import summarize
    from radio.shards.images import REASONS

    s = summarize(report)
    console = make_console()
    console.print(
        f"store {report.store}: {report.tars} tars, {report.items} (tar, teacher) tasks run, "
        f"{report.skipped} (tar, key) already complete, {report.seconds:.1f} s"
    )
    if report.results:
        reasons = s["reasons"]
        table = Table("samples", "count", title="samples")
        table.add_row("ok", str(reasons.get("valid", 0)))
        for r in REASONS:
            if reasons.get(r):
                table.add_row(f"bad: {r}", str(reasons[r]))
        console.print(table)
        table = Table("target key", "images", "images/s", "teacher images/s", "MB written (fp16)", title="target keys")
        for key, d in sorted(s["per_key"].items()):
            table.add_row(
                key,
                str(d["images"]),
                f"{d['images'] / max(d['seconds'], 1e-9):.1f}",
                f"{d['images'] / max(d['compute_seconds'], 1e-9):.1f}",
                f"{d['bytes'] / 1e6:.2f}",
            )
        console.print(table)
    for tar, why in report.unreadable.items():
        console.print(f"[red]unreadable tar[/red] {tar}: {why}")
    for r in report.truncated:
        console.print(f"[yellow]truncated tar[/yellow] {r.tar_index}: {r.truncated} (samples before the break kept)")
    for r in report.failed:
        console.print(f"[red]failed[/red] tar {r.tar_index} ({r.teacher}): {r.error}")
    if report.ray_log:
        console.print(f"Ray's own log lines: {report.ray_log} (--verbose shows them)")
