"""A clean stop on SIGINT (Ctrl-C) and SIGTERM (what a batch scheduler sends): finish the step, then stop.

Inside `StopOnSignal()`, the first signal only sets `signum`; the loop that steps a model checks it after every step
and stops, so that its caller can flush the record and write a checkpoint. A second signal during that shutdown ends
the process at once (status 128 + the signal's number) without a traceback; checkpoints are written to a temporary
file and renamed, so the last good one stays intact.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """A context in which SIGINT and SIGTERM ask for a stop (`signum`) instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def exit_status(self) -> int:
        """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + (self.signum or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            os.write(2, f"\n{signal.Signals(signum).name} again: stopped at once\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        # the progress bar may be mid-line; the caller prints how to resume once the checkpoint is written
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step\n".encode())

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
