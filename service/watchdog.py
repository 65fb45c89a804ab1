"""Workers die with their server: BentoML starts each worker in its own session, so a `kill -9` of the server's
process group does not reach it, and it kept serving and holding the port (issue 16.19)."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

logger = logging.getLogger("ganforge.service")

GRACE_S = 10.0  # after SIGTERM to itself, how long the worker may take to shut down before it is ended


def _parent_death_signal() -> None:
    """Linux: ask the kernel to send SIGTERM when the parent exits (immediate; the poll below is the fallback)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def exit_with_parent(poll_s: float = 1.0) -> threading.Thread:
    """Watch the parent process; when it is gone, stop this process (SIGTERM to itself, then exit after
    GRACE_S). Returns the daemon thread."""
    parent = os.getppid()
    _parent_death_signal()
    if os.getppid() != parent:  # it died before the signal was armed
        parent = -1

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        logger.error("the server process %d is gone; this worker (pid %d) stops", parent, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(GRACE_S)
        os._exit(1)

    thread = threading.Thread(target=watch, name="ganforge-parent-watch", daemon=True)
    thread.start()
    return thread


def stop_server(reason: str) -> None:
    """A worker that cannot serve stops the whole server instead of being restarted forever: it logs the reason
    and sends SIGTERM to its parent (`bentoml serve`)."""
    logger.critical("%s; stopping the server (a restart would fail the same way)", reason)
    os.kill(os.getppid(), signal.SIGTERM)
