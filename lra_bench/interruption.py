"""SIGINT / SIGTERM during a run: finish the current step, checkpoint, and stop cleanly.

The handler only records the request; the training loop polls it between steps, so a stop never
tears a step or a checkpoint in half. A second signal stops at once (KeyboardInterrupt), for a run
stuck somewhere the loop does not reach, such as a long compilation.
"""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
            raise KeyboardInterrupt
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
