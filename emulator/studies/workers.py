"""Bounded, supervised worker processes for the studies (``gaussian``, ``train``).

* never more workers than tasks, than the caller's ``jobs`` or than :func:`worker_cap`;
* SIGINT and SIGTERM in the parent stop the study: the parent terminates and reaps every worker,
  then raises :class:`Interrupted` (the CLI exits 130 / 143);
* a worker dies with its parent, even one killed by SIGKILL: ``PR_SET_PDEATHSIG`` on Linux and a
  watchdog thread that exits once the parent is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import InvalidStateError, ProcessPoolExecutor
from multiprocessing.context import BaseContext
from types import FrameType


class Interrupted(Exception):
    """The study was stopped by a signal; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def worker_cap() -> int:
    """The most worker processes a study starts: one per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pool_size(jobs: int, tasks: int) -> int:
    return max(1, min(jobs, tasks, worker_cap()))


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.2)


def child_init(parent: int) -> None:
    """Runs first in every worker: leave signals to the parent, and die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread for the block's duration."""
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        for s in old:
            signal.signal(s, _raise_interrupted)
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _stop(ex: ProcessPoolExecutor) -> None:
    """Kill the pool's workers and join its manager and queue-feeder threads (the feeder's last flush
    may still write to the dead workers' pipe): nothing of the pool runs afterwards.

    CPython 3.11's manager then fails every pending future of the broken pool, also those that
    ``Executor.map`` already cancelled, which raises InvalidStateError in that thread: a stray
    traceback on stderr, silenced while the pool is stopped."""
    hook = threading.excepthook

    def quiet(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.exc_value, InvalidStateError):
            hook(args)

    threading.excepthook = quiet
    try:
        procs = list((getattr(ex, "_processes", None) or {}).values())
        for p in procs:
            with contextlib.suppress(Exception):
                p.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
        with contextlib.suppress(Exception):
            ex.shutdown(wait=True)
    finally:
        threading.excepthook = hook


@contextlib.contextmanager
def supervised_pool(workers: int, mp_context: BaseContext | None = None) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers never outlive the ``with`` block, nor the parent.

    SIGPIPE must keep Python's default (ignored) in the parent: the pool's queue feeder may write
    to the pipe of a worker that was just terminated, and EPIPE there is an error the pool handles.
    """
    with interruptible():
        ex = ProcessPoolExecutor(workers, mp_context=mp_context, initializer=child_init, initargs=(os.getpid(),))
        try:
            yield ex
        except BaseException:
            _stop(ex)
            raise
        ex.shutdown(wait=True)
