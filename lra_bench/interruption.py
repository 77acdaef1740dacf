"""SIGINT and SIGTERM, in every command.

`install` is the CLI's set-up for every command: both signals raise `Stopped` (a
KeyboardInterrupt that knows its signal), whatever the process inherited. A shell starts a
background job (`cmd &`, nohup) with SIGINT ignored, and Python leaves an inherited "ignore" as
it is: without this, `kill -INT` would not stop such a job. A command that keeps work across a
stop (a run's checkpoint, a sweep's finished points, a grid) catches `Stopped` and prints how to
continue; any other ends with one line and exit 128 + the signal's number (130, 143).

`StopOnSignal`, during a run: finish the current step, checkpoint, and stop cleanly. Its handler
only records the request; the training loop polls it between steps, so a stop never tears a step
or a checkpoint in half. A second signal stops at once (KeyboardInterrupt), for a run stuck
somewhere the loop does not reach, such as a long compilation.
"""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM as an exception; `signum` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_code(exc: BaseException) -> int:
    """128 + the signal's number: 130 for SIGINT (or a plain KeyboardInterrupt), 143 for
    SIGTERM."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def signal_name(exc: BaseException) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)


def install() -> None:
    """SIGINT and SIGTERM raise `Stopped` in this process (the main thread), whatever handling
    was inherited (ignored, for a background job)."""
    for s in SIGNALS:
        signal.signal(s, _raise_stopped)


class StopOnSignal:
    def __init__(self, announce: str = "stopping after this step with a checkpoint"):
        self.signum: int | None = None
        self._previous: dict = {}
        self._announce = announce

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise Stopped(signum)
        self.signum = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name}: {self._announce} (send it again to "
                         "stop at once)\n")

    def __enter__(self) -> "StopOnSignal":
        # Python delivers signals to the main thread only; elsewhere keep the defaults.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
