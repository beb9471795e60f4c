"""Module-level task functions for test_sandbox.py and benchmarks/bench_sandbox.py (spawned workers import them)."""
from __future__ import annotations

import os
import time


def square(x: int) -> int:
    return x * x


def array(n: int):
    import numpy as np

    return np.arange(n, dtype=np.float32)


def allocate(gib: float) -> int:
    block = bytearray(int(gib * 2**30))  # over the cap: MemoryError
    return len(block)


def abort() -> None:
    os.abort()


def kill_self() -> None:
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def spin() -> None:
    while True:
        pass


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class Panic(BaseException):
    """Stands in for pyo3_runtime.PanicException (a BaseException subclass)."""


def panic() -> None:
    raise Panic("called `Result::unwrap()` on an `Err` value")


def raise_value_error() -> None:
    raise ValueError("bad bytes")


def exit_worker() -> None:
    os._exit(3)


def read_image(path: str):
    """A real decode (cacxr's reader), returning the float32 image or the refusal."""
    from cacxr.imaging import read_image as read

    result = read(path)
    return result.image if result.ok else (result.reason, result.detail)


def fail_to_start() -> None:
    """An initializer that kills the worker before it reports ready (a broken install, a bad import)."""
    os._exit(5)
