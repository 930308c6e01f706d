"""Dask worker preload for the local clusters a run starts: workers leave Ctrl-C to the client.

A terminal's Ctrl-C reaches every process of the foreground group; the run's client handles it (one line,
what was kept) and closes its cluster, so the workers ignore SIGINT instead of printing a traceback each.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Called by Dask in each worker process at start (``preload``)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
