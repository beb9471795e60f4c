"""Worker processes that are safe beside torch: forkserver (or spawn), never a plain fork.

A fork copies a parent's threads' locks in whatever state they are; once torch (OpenMP) has run a parallel
region in the parent, a forked child that runs torch again (the view gate in ingest's workers, a decoder)
can wait forever on a lock no thread will release.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

__all__ = ["worker_context"]


def worker_context() -> BaseContext:
    """The multiprocessing context for worker pools: forkserver where the platform has it, else spawn."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)
