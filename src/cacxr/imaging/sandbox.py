"""A persistent pool of bounded worker processes for decoding untrusted files.

Every task runs in a long-lived worker process whose address space is capped (``RLIMIT_AS`` = the
worker's own baseline after its imports + ``memory_limit``) and under a per-task time budget (wall clock,
watched by the parent; optionally CPU, enforced by ``RLIMIT_CPU`` in the worker). Whatever a task does,
the caller gets one :class:`TaskResult` back:

=================================================  =========================================================
what happened in the worker                        result
=================================================  =========================================================
the function returned                              ``ok=True``, ``value`` = its return value
it raised an ``Exception``                         ``unreadable: <Type>: <message>``
``MemoryError`` (the address-space cap)            ``too_large: out of memory (over the N MiB limit)``
any other ``BaseException`` (pyo3 PanicException)  ``unreadable: decoder crashed: PanicException: ...``
the worker died (SIGABRT, SIGSEGV, SIGKILL, exit)  ``unreadable: decoder crashed (SIGABRT)``
over the wall-clock budget                         ``too_complex: over N s`` (the worker is killed)
over the CPU budget (SIGXCPU)                      ``too_complex: over N s of CPU``
=================================================  =========================================================

A worker that died, was killed, or raised a ``MemoryError``/``BaseException`` is replaced by a fresh one
(a native decoder that panicked or ran out of memory may leave its process in an unknown state); the
other tasks are not affected: one task per worker at a time, so a crash costs exactly one file.

Results come back over a pipe with pickle protocol 5 out-of-band buffers: a numpy array is sent as its raw
bytes and received into a writable ``bytearray`` (one copy, no pickling of the data itself).

Usage::

    from cacxr.imaging import DecodePool, run_isolated

    with DecodePool(workers=2, memory_limit=1.5 * 2**30, time_limit=20) as pool:
        for result in pool.map(read_one, paths):        # in order
            if result.ok: use(result.value)
            else: print(result.reason, result.detail)

    result = run_isolated(read_one, path)               # a shared default pool (created on first use)

``fn`` must be picklable (a module-level function): workers are started with the ``spawn`` context
(``forkserver`` is accepted too), never ``fork``, so a worker never inherits the parent's threads,
locks or model.

Why one module of ~470 lines: the worker loop, the parent's dispatcher and the wire format are one protocol;
split, each half would only make sense beside the other.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import multiprocessing
import os
import pickle
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = [
    "READER_MODULES", "DecodePool", "TaskResult", "bounded_pool", "default_pool", "run_isolated",
    "shutdown_default_pool",
]

GiB = 2**30
DEFAULT_MEMORY_LIMIT = int(1.5 * GiB)
DEFAULT_TIME_LIMIT = 30.0
_MAX_START_FAILURES = 3
# what a worker that only reads files imports before its address space is capped
READER_MODULES = ("numpy", "pydicom", "PIL.Image", "cacxr.imaging.reader")


@dataclass(frozen=True)
class TaskResult:
    """The outcome of one task.

    Attributes:
        ok: True when the function returned normally.
        value: its return value (None when not ok).
        reason: "" when ok, else ``unreadable``, ``too_large`` or ``too_complex``.
        detail: one line saying why (no traceback).
        seconds: wall time of the task in the worker (as seen by the parent).
    """

    ok: bool
    value: Any = None
    reason: str = ""
    detail: str = ""
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------ worker


def _vm_size() -> int:
    """This process's current virtual memory size in bytes (Linux /proc)."""
    with open("/proc/self/status") as fp:
        for line in fp:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _send(conn: Connection, message: tuple) -> None:
    """Send a message: a pickle header with out-of-band buffer sizes, then the raw buffers."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    conn.send((header, [r.nbytes for r in raws]))
    for raw in raws:
        conn.send_bytes(raw)


def _recv(conn: Connection) -> tuple:
    header, sizes = conn.recv()
    buffers = []
    for size in sizes:
        buf = bytearray(size)  # writable: numpy arrays rebuilt on it are writable
        if size:
            conn.recv_bytes_into(buf)
        else:
            conn.recv_bytes()
        buffers.append(buf)
    return pickle.loads(header, buffers=buffers)


def _worker_main(conn: Connection, memory_limit: int, preload: tuple[str, ...], cpu_limit: float | None,
                 initializer: Callable[[], None] | None) -> None:
    """Worker loop: import, cap the address space, answer tasks until told to stop or killed."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    for name in preload:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    if initializer is not None:
        initializer()
    baseline = _vm_size()
    limit = baseline + memory_limit if memory_limit else resource.RLIM_INFINITY
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and limit != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    _send(conn, ("ready", os.getpid(), baseline))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        task_id, fn, args, kwargs = task
        if cpu_limit:
            used = resource.getrusage(resource.RUSAGE_SELF)
            spent = used.ru_utime + used.ru_stime
            _s, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
            soft = int(spent + cpu_limit) + 1
            if cpu_hard != resource.RLIM_INFINITY:
                soft = min(soft, cpu_hard)
            resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        retire = False
        try:
            message: tuple = (task_id, "ok", fn(*args, **kwargs))
        except MemoryError:
            message = (task_id, "too_large", f"out of memory (over the {memory_limit // 2**20} MiB limit)")
            retire = True
        except Exception as exc:  # noqa: BLE001 - a property of the input
            message = (task_id, "unreadable", _describe(exc))
        except BaseException as exc:  # noqa: BLE001 - pyo3 PanicException, SystemExit, ...
            message = (task_id, "unreadable", f"decoder crashed: {_describe(exc)}")
            retire = True
        try:
            _send(conn, (*message, retire))
        except MemoryError:
            message, retire = (task_id, "too_large", "out of memory sending the result"), True
            _send(conn, (*message, retire))
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable return value
            _send(conn, (task_id, "unreadable", f"result cannot be returned: {_describe(exc)}", retire))
        if retire:  # the parent replaces this worker on reading the flag
            return


# ------------------------------------------------------------------------------------------ parent


@dataclass
class _Task:
    id: int
    fn: Callable
    args: tuple
    kwargs: dict
    future: Future


class _Worker:
    def __init__(self, ctx, memory_limit: int, preload: tuple[str, ...], cpu_limit: float | None,
                 initializer) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main, args=(child, memory_limit, preload, cpu_limit, initializer), daemon=True
        )
        self.process.start()
        child.close()
        self.ready = False
        self.task: _Task | None = None
        self.started = 0.0
        self.baseline = 0

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.process.join(5)
        with contextlib.suppress(Exception):
            self.conn.close()


class DecodePool:
    """N long-lived worker processes, each under an address-space cap, each task under a time budget.

    Args:
        workers: number of worker processes (at least 1).
        memory_limit: bytes each worker may allocate beyond its baseline after ``preload`` (0: no cap).
        time_limit: wall-clock seconds per task; over it the worker is killed: ``too_complex``.
        cpu_limit: CPU seconds per task (RLIMIT_CPU, SIGXCPU kills the worker): ``too_complex``; None: off.
        preload: modules every worker imports before it measures its baseline and reports ready.
        initializer: a picklable callable run once in each worker after ``preload``.
        context: ``spawn`` (default) or ``forkserver``.
    """

    def __init__(self, workers: int = 2, memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 time_limit: float = DEFAULT_TIME_LIMIT, cpu_limit: float | None = None,
                 preload: Iterable[str] = ("numpy",), initializer: Callable[[], None] | None = None,
                 context: str = "spawn") -> None:
        if context not in ("spawn", "forkserver"):
            raise ValueError("context must be 'spawn' or 'forkserver' (never fork)")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.memory_limit, self.time_limit, self.cpu_limit = int(memory_limit), float(time_limit), cpu_limit
        self.preload, self.initializer = tuple(preload), initializer
        self._ctx = multiprocessing.get_context(context)
        self._pending: collections.deque[_Task] = collections.deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._ids = itertools.count()
        self._closed = False
        self._start_failures = 0  # workers in a row that died before reporting ready
        self._broken = ""  # why workers cannot start: every task is then answered at once with it
        self.replaced = 0  # workers replaced after a crash, a kill or a retirement (for tests and logs)
        self._workers = [self._spawn() for _ in range(workers)]
        self._thread = threading.Thread(target=self._dispatch, name="DecodePool", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------------- public API

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)``; the Future's result is a :class:`TaskResult` (never raises)."""
        if self._closed:
            raise RuntimeError("the pool is closed")
        future: Future = Future()
        if self._broken:
            future.set_result(TaskResult(False, None, "unreadable", self._broken))
            return future
        with self._lock:
            self._pending.append(_Task(next(self._ids), fn, args, kwargs, future))
        self._wake()
        return future

    def map(self, fn: Callable, items: Iterable[Any], star: bool = False) -> Iterator[TaskResult]:
        """``fn(item)`` (or ``fn(*item)`` with ``star``) for every item, results in the items' order.

        Keeps at most 2 x workers tasks queued ahead, so a long iterable is not materialised.
        """
        window: collections.deque[Future] = collections.deque()
        ahead = 2 * len(self._workers)
        for item in items:
            window.append(self.submit(fn, *item) if star else self.submit(fn, item))
            while len(window) > ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def run(self, fn: Callable, *args: Any, **kwargs: Any) -> TaskResult:
        """Run one task and wait for its result."""
        return self.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """Stop the workers (queued tasks are answered ``unreadable: pool closed``)."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        self._thread.join(10)
        for worker in self._workers:
            with contextlib.suppress(Exception):
                worker.conn.send(None)
            worker.process.join(2)
            if worker.process.is_alive():
                worker.kill()
        with self._lock:
            while self._pending:
                task = self._pending.popleft()
                task.future.set_result(TaskResult(False, None, "unreadable", "pool closed"))

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    # -------------------------------------------------------------------------------- dispatcher

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.memory_limit, self.preload, self.cpu_limit, self.initializer)

    def _wake(self) -> None:
        with contextlib.suppress(Exception):
            self._wake_w.send_bytes(b"x")

    def _replace(self, index: int) -> None:
        old = self._workers[index]
        if old.task is not None and not old.task.future.done():  # never started: run it elsewhere
            with self._lock:
                self._pending.appendleft(old.task)
        old.kill()
        self._workers[index] = self._spawn()
        self.replaced += 1

    def _finish(self, worker: _Worker, result: TaskResult) -> None:
        task, worker.task = worker.task, None
        if task is not None and not task.future.done():
            task.future.set_result(result)

    def _dispatch(self) -> None:  # noqa: C901 - one loop owning every worker
        while not self._closed:
            # hand queued tasks to idle ready workers
            for worker in self._workers:
                if worker.ready and worker.task is None:
                    with self._lock:
                        task = self._pending.popleft() if self._pending else None
                    if task is None:
                        break
                    if not task.future.set_running_or_notify_cancel():
                        continue
                    worker.task, worker.started = task, time.monotonic()
                    try:
                        worker.conn.send((task.id, task.fn, task.args, task.kwargs))
                    except Exception as exc:  # noqa: BLE001 - an unpicklable task, or a dead worker
                        self._finish(worker, TaskResult(False, None, "unreadable", f"task cannot be sent: "
                                                        f"{_describe(exc)}"))
            now = time.monotonic()
            timeout = 1.0
            for worker in self._workers:
                if worker.task is not None:
                    timeout = min(timeout, max(0.0, worker.started + self.time_limit - now))
            watched = {self._wake_r: None}
            for index, worker in enumerate(self._workers):
                watched[worker.conn] = index
                watched[worker.process.sentinel] = index
            try:
                ready = wait(list(watched), timeout)
            except OSError:
                ready = []
            for obj in ready:
                if obj is self._wake_r:
                    with contextlib.suppress(Exception):
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                    continue
                index = watched[obj]
                worker = self._workers[index]
                if obj is worker.conn:
                    self._on_message(index)
                elif not worker.process.is_alive() or worker.process.exitcode is not None:
                    # drain a result that was sent just before the exit
                    while worker.conn.poll(0) and self._workers[index] is worker:
                        if not self._on_message(index):
                            break
                    if self._workers[index] is worker:
                        self._on_death(index)
            # wall-clock budgets
            now = time.monotonic()
            for index, worker in enumerate(self._workers):
                if worker.task is not None and now - worker.started > self.time_limit:
                    seconds = now - worker.started
                    self._finish(worker, TaskResult(False, None, "too_complex",
                                                    f"over {self.time_limit:g} s", seconds))
                    self._replace(index)

    def _on_message(self, index: int) -> bool:
        worker = self._workers[index]
        try:
            message = _recv(worker.conn)
        except (EOFError, OSError):
            worker.process.join(1)
            self._on_death(index)
            return False
        except MemoryError:
            self._finish(worker, TaskResult(False, None, "too_large", "result too large to receive"))
            self._replace(index)
            return False
        if message[0] == "ready":
            worker.ready, worker.baseline = True, message[2]
            return True
        _task_id, status, payload, retire = message
        seconds = time.monotonic() - worker.started
        if status == "ok":
            self._finish(worker, TaskResult(True, payload, "", "", seconds))
        else:
            self._finish(worker, TaskResult(False, None, status, payload, seconds))
        if retire:  # MemoryError or a BaseException: the process may be in an unknown state
            worker.process.join(2)
            self._replace(index)
            return False
        return True

    def _on_death(self, index: int) -> None:
        worker = self._workers[index]
        worker.process.join(1)
        code = worker.process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            if -code == signal.SIGXCPU:
                result = TaskResult(False, None, "too_complex", f"over {self.cpu_limit:g} s of CPU ({name})")
            else:
                result = TaskResult(False, None, "unreadable", f"decoder crashed ({name})")
        else:
            result = TaskResult(False, None, "unreadable", f"decoder crashed (worker exited with code {code})")
        if worker.task is not None:
            self._finish(worker, replace_seconds(result, time.monotonic() - worker.started))
        if worker.ready:
            self._start_failures = 0
        else:  # died while starting (an import or the initializer failed): never respawn in a loop
            self._start_failures += 1
            if self._start_failures >= _MAX_START_FAILURES:
                self._broken = f"the decode workers cannot start ({result.detail.removeprefix('decoder crashed ').strip('()')})"
                with self._lock:
                    while self._pending:
                        self._pending.popleft().future.set_result(TaskResult(False, None, "unreadable", self._broken))
                return
        self._replace(index)


def replace_seconds(result: TaskResult, seconds: float) -> TaskResult:
    return TaskResult(result.ok, result.value, result.reason, result.detail, seconds)


# ---------------------------------------------------------------------------------- default pool

_default: DecodePool | None = None
_default_lock = threading.Lock()


def bounded_pool(workers: int, preload: Iterable[str] = READER_MODULES,
                 initializer: Callable[[], None] | None = None) -> DecodePool:
    """A pool with the configured limits: ``CACXR_DECODE_MEMORY_MB`` (default 1536) beyond each worker's
    baseline and ``CACXR_DECODE_SECONDS`` (default 30) of wall clock per file."""
    return DecodePool(
        workers=workers,
        memory_limit=int(os.environ.get("CACXR_DECODE_MEMORY_MB", "1536")) * 2**20,
        time_limit=float(os.environ.get("CACXR_DECODE_SECONDS", "30")),
        preload=preload,
        initializer=initializer,
    )


def default_pool() -> DecodePool:
    """The shared pool (created on first use): :func:`bounded_pool` with ``CACXR_DECODE_WORKERS`` workers
    (default: 2) that import only the reader."""
    global _default
    with _default_lock:
        if _default is None:
            _default = bounded_pool(int(os.environ.get("CACXR_DECODE_WORKERS", "2")))
            atexit.register(shutdown_default_pool)
        return _default


def run_isolated(fn: Callable, *args: Any, **kwargs: Any) -> TaskResult:
    """Run ``fn(*args, **kwargs)`` in the shared default pool and wait: a :class:`TaskResult`."""
    return default_pool().run(fn, *args, **kwargs)


def shutdown_default_pool() -> None:
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
            _default = None

