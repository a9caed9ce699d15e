"""meter's background threads, which never take the process's signals.

A signal sent to the process (Ctrl-C, ``kill``, a scheduler's SIGTERM, a child's SIGCHLD) goes to
any thread that does not block it. Were that one of meter's threads, a program that waits for it
in its main thread (``sigtimedwait``, as ``meter run`` does) would miss it, and one whose main
thread blocks a signal on purpose would have it taken anyway. So each thread meter starts blocks
them: they reach the user's threads as if meter were not there.
"""

from __future__ import annotations

import signal
import threading

#: Signals sent to a process from outside; synchronous ones (SIGSEGV, SIGPIPE...) are left alone.
ASYNC_SIGNALS = frozenset(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGCHLD", "SIGUSR1",
                                       "SIGUSR2", "SIGALRM", "SIGWINCH") if hasattr(signal, name)
)


def start_daemon(target, name: str, args: tuple = ()) -> threading.Thread:
    """Start ``target(*args)`` on a daemon thread named ``name`` that blocks :data:`ASYNC_SIGNALS`."""
    thread = threading.Thread(target=_blocking_signals, args=(target, args), name=name, daemon=True)
    thread.start()
    return thread


def _blocking_signals(target, args: tuple) -> None:
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)
    target(*args)
