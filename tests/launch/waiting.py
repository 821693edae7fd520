"""Bounded waits for the tests that drive real processes."""

from __future__ import annotations

import time


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.3) -> None:
    """Return once ``predicate()`` holds; a TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(poll_s)
