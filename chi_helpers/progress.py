"""Progress lines with elapsed time, for every step that takes more than a moment."""

from __future__ import annotations

import sys
import time


class Clock:
    """Prints `[  12.3s] message` lines, timed from when the clock was made."""

    def __init__(self, stream=None):
        self.start = time.monotonic()
        self.stream = stream

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def say(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {message}", file=self.stream or sys.stdout, flush=True)
