"""Progress on stderr, one mechanism for every command: a run's steps, a sweep's points, a grid's
jobs, a download, an extraction, generated data.

Where stderr is a terminal, a live rich display (bar, done/total, the task's own status, elapsed,
time remaining; a grid adds a table below it); where it is not (CI, SLURM logs, a pipe), plain
lines at the task's own pace, each with the time remaining (`eta`), which grep and tail read; with
`--quiet`, nothing. Errors and results never come through here, so `--quiet` cannot hide them.
"""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.padding import Padding
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.text import Text

console = Console(stderr=True, soft_wrap=True)  # a plain line stays one line in a log
_quiet = False


def set_quiet(quiet: bool) -> None:
    """`--quiet`: no progress from here on, in this process."""
    global _quiet
    _quiet = bool(quiet)


def quiet() -> bool:
    return _quiet


def mode(interactive: bool | None = None) -> str:
    """'quiet', 'live' (a terminal, or `interactive` True) or 'plain'."""
    if _quiet:
        return "quiet"
    return "live" if (console.is_terminal if interactive is None else interactive) else "plain"


def clock(seconds: float) -> str:
    """H:MM:SS, as rich's columns write time."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Display:
    """One long task's progress: `update(done, ...)` as it goes, `close()` at the end.

    `every`: in plain mode, a line each time `done` passes a multiple of it (default: every
    tenth of `total`; none without a total), and at the end. `unit`: the word before done/total in those lines
    ("step"); `in_bytes`: done and total are bytes (sizes and speed instead of counts).
    The time remaining is measured from the first update, so time spent before the first unit
    (compiling a step, starting a process) does not count as work.
    """

    def __init__(self, label: str, total: int | None, *, done: int = 0, every: int | None = None,
                 unit: str = "", in_bytes: bool = False, status: str = "",
                 interactive: bool | None = None):
        self.label, self.total, self.unit, self.in_bytes = label, total, unit, in_bytes
        self.mode = mode(interactive)
        # (with no total and no `every`, plain mode prints only the lines it is given)
        self.every = every or (max(1, total // 10) if total else None)
        self._next = (done // self.every + 1) * self.every if self.every else None
        self._first: tuple[float, int] | None = None  # (time, done) at the first update
        self._done, self._live, self._said_end = done, None, False
        if self.mode == "live":
            count = ([DownloadColumn(), TransferSpeedColumn()] if in_bytes
                     else [MofNCompleteColumn()])
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), *count,
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                 console=console)
            self._task = self._bar.add_task(label, total=total, completed=done)
            # the task's status on a line of its own under the bar, so a narrow terminal
            # squeezes neither
            self._status, self._extra = Text(status, overflow="fold"), None
            self._live = Live(self._screen(), console=console, refresh_per_second=4)
            self._live.start()

    def _screen(self) -> Group:
        parts = [self._bar, Padding(self._status, (0, 0, 0, 2))]
        return Group(*parts, *([self._extra] if self._extra is not None else []))

    def remaining(self) -> float | None:
        """Seconds left at the pace since the first update; None before there is a pace."""
        if self._first is None or not self.total:
            return None
        t0, d0 = self._first
        rate = (self._done - d0) / max(time.monotonic() - t0, 1e-9)
        return (self.total - self._done) / rate if rate > 0 else None

    def eta(self) -> str:
        left = self.remaining()
        if self.total and self._done >= self.total:
            return ""
        return f"  eta {clock(left)}" if left is not None else ""

    def update(self, done: int, status: str | None = None, *, line: str | None = None,
               extra=None) -> None:
        """`status`: the task's latest state, shown after the bar (plain: in the next line);
        `line`: a line that stays (above the live display; plain: printed now, with the eta);
        `extra`: a rich renderable shown below the bar (a grid's table of jobs)."""
        if self._first is None:
            self._first = (time.monotonic(), done)
        self._done = done
        if self.mode == "live":
            self._bar.update(self._task, completed=done)
            if status is not None or extra is not None:
                self._status = Text(status, overflow="fold") if status is not None else self._status
                self._extra = extra if extra is not None else self._extra
                self._live.update(self._screen())
            if line is not None:
                console.print(line, highlight=False, markup=False)
        elif self.mode == "plain":
            end = bool(self.total) and done >= self.total
            due = self.every is not None and done >= self._next
            if line is not None or due or (end and not self._said_end):
                if self.every is not None:
                    self._next = (done // self.every + 1) * self.every
                self._said_end = end
                self.say((line if line is not None else self._plain(done, status)) + self.eta())

    @property
    def done(self) -> int:
        return self._done

    def advance(self, n: int) -> None:
        self.update(self._done + n)

    def _plain(self, done: int, status: str | None) -> str:
        if self.in_bytes:
            pct = f"{100 * done // self.total}% " if self.total else ""
            of = f" of {self.total / 2**20:.1f}" if self.total else ""
            text = f"{self.label}: {pct}({done / 2**20:.1f}{of} MiB)"
        else:
            unit = f" {self.unit}" if self.unit else ""
            text = f"{self.label}{unit} {done}/{self.total if self.total else '?'}"
        return f"{text}  {status}" if status else text

    def say(self, text: str) -> None:
        """A line of this task that is not a count (what it is doing now); not when quiet."""
        if self.mode != "quiet":
            console.print(text, highlight=False, markup=False)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> "Display":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TrainingProgress:
    """A run's steps: the latest training loss and accuracy (means since the previous record),
    steps/s, the latest validation accuracy and the best so far. Plain lines every `log_every`
    steps, as the trainer records them."""

    def __init__(self, total: int, label: str, log_every: int, interactive: bool | None = None,
                 done: int = 0):
        self.display = Display(label, total, done=done, every=log_every, unit="step",
                               status="compiling", interactive=interactive)

    def step(self, step: int, info: dict[str, float]) -> None:
        """`info`: name -> number; `val_acc`, `best` and `best_step` when there are any."""
        info = dict(info)
        best, best_step = info.pop("best", None), info.pop("best_step", None)
        text = "  ".join(f"{k} {v:.4g}" for k, v in info.items() if v is not None)
        if best is not None and best >= 0:
            text += f"  best {best:.4g} @ {best_step}"
        self.display.update(step, text)

    def close(self) -> None:
        self.display.close()
