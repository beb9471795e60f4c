"""Worker processes that are safe beside torch: forkserver (or spawn), never a plain fork.

A fork copies a parent's threads' locks in whatever state they are; once torch (OpenMP) has run a parallel
region in the parent, a forked child that runs torch again (the view gate in ingest's workers, a decoder)
can wait forever on a lock no thread will release.
"""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.context import BaseContext

__all__ = ["one_thread_per_worker", "worker_context"]


def worker_context() -> BaseContext:
    """The multiprocessing context for worker pools: forkserver where the platform has it, else spawn."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def one_thread_per_worker() -> None:
    """A worker pool's initializer: one OpenCV and one torch thread in each worker (the pool already keeps
    every core busy; more threads only compete, and each one would take its share of a capped address space)."""
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
