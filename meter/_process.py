"""Process-wide hooks: the registry of live Meters, closing them at interpreter exit, and fork.

Installed once, on the first Meter, never at import. A forked child (a DataLoader worker, a
multiprocessing pool) keeps its parent's Meters as inert objects: it measures nothing and
writes nothing, so the parent's run log is never written twice.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref

log = logging.getLogger("meter")

#: At interpreter exit each Meter gets this long to stop its thread and write its last records.
EXIT_TIMEOUT_S = 2.0

_meters: "weakref.WeakSet" = weakref.WeakSet()
_installed = False
_lock = threading.Lock()


def register(meter) -> None:
    """Track a Meter for the exit and fork hooks (installed with the first one)."""
    global _installed
    with _lock:
        _meters.add(meter)
        if not _installed:
            _installed = True
            atexit.register(_close_all)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_child)


def _close_all() -> None:
    for m in list(_meters):
        try:
            m.close(timeout_s=EXIT_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - at exit, one Meter's trouble must not stop the others
            log.exception("meter: closing a Meter at exit failed")


def _after_fork_child() -> None:
    for m in list(_meters):
        try:
            m._after_fork_child()
        except Exception:  # noqa: BLE001 - a child must start even if a Meter cannot be disarmed
            log.debug("meter: disarming a Meter in a forked child failed", exc_info=True)
