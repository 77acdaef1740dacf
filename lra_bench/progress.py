"""Training progress on stderr: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class ProgressReporter:
    def __init__(self, total: int, label: str, log_every: int, interactive: bool | None = None):
        self.total, self.label, self.log_every = total, label, log_every
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar = None
        if self.interactive:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
            )
            self._task = self._bar.add_task(label, total=total, info="compiling")
            self._bar.start()

    def step(self, step: int, info: dict[str, float]) -> None:
        text = "  ".join(f"{k} {v:.4g}" for k, v in info.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=text)
        elif step % self.log_every == 0 or step == self.total:
            console.print(f"{self.label} step {step}/{self.total}  {text}", highlight=False)

    def log(self, message: str) -> None:
        console.print(message, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
