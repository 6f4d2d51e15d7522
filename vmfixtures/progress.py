"""Progress lines for long work (image builds, boots), with elapsed time."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``[  4.2s] what`` lines to stderr; silent when ``quiet``."""

    def __init__(self, title: str, quiet: bool = False):
        self.title = title
        self.quiet = quiet
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def step(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.elapsed():6.1f}s] {self.title}: {message}", file=sys.stderr, flush=True)
