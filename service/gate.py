"""Online requests before background jobs: a count of online requests in flight that jobs wait on."""
from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Iterator


class OnlineGate:
    """Counts online requests in flight, so that background jobs can give way to them.

    Online handlers hold `online()` while they wait for their images; a job calls `wait_idle` before each
    of its (small) forward passes and so starts none while an online request is in flight, nor within
    `quiet_s` seconds after the last one ended (a client sending one request after another leaves gaps of a
    few ms; a job batch started in every gap would add its whole duration to every request). It waits at
    most `timeout` seconds, so that a saturated server still makes some job progress.
    """

    def __init__(self, quiet_s: float = 0.0) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._last_end = -math.inf
        self.quiet_s = quiet_s

    @property
    def active(self) -> int:
        return self._active

    @contextlib.contextmanager
    def online(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._last_end = time.monotonic()
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no online request has been in flight for `quiet_s` seconds (True) or `timeout` seconds
        pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                quiet_left = self.quiet_s - (now - self._last_end)
                if not self._active and quiet_left <= 0:
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(deadline - now if self._active else min(deadline - now, quiet_left))
