"""The bounded decode pool (cacxr.imaging.sandbox, issue 21 item 21): a bomb costs one task, the pool survives."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import sandbox_tasks as t

from cacxr.imaging.sandbox import DecodePool, TaskResult, run_isolated, shutdown_default_pool


@pytest.fixture(scope="module")
def pool():
    with DecodePool(workers=2, memory_limit=512 * 2**20, time_limit=3.0) as p:
        yield p


def test_normal_tasks_in_order(pool) -> None:
    results = list(pool.map(t.square, range(20)))
    assert [r.value for r in results] == [i * i for i in range(20)]
    assert all(r.ok and r.reason == "" for r in results)


def test_large_array_comes_back_writable(pool) -> None:
    result = pool.run(t.array, 4_000_000)  # 16 MB
    assert result.ok and result.value.shape == (4_000_000,) and result.value[-1] == 3_999_999
    result.value[0] = 5  # writable
    assert result.value.flags.writeable


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("fn", "reason", "detail"),
    [
        (t.allocate, "too_large", "out of memory"),
        (t.abort, "unreadable", "decoder crashed (SIGABRT)"),
        (t.kill_self, "unreadable", "decoder crashed (SIGKILL)"),
        (t.spin, "too_complex", "over 3 s"),
        (t.panic, "unreadable", "decoder crashed: Panic"),
        (t.raise_value_error, "unreadable", "ValueError: bad bytes"),
        (t.exit_worker, "unreadable", "exited with code 3"),
    ],
    ids=["memory", "abort", "sigkill", "loop", "base-exception", "exception", "exit"],
)
def test_a_bomb_costs_one_task_and_the_pool_survives(pool, fn, reason, detail) -> None:
    args = (2.0,) if fn is t.allocate else ()
    futures = [pool.submit(t.square, 3), pool.submit(fn, *args), pool.submit(t.square, 4)]
    started = time.monotonic()
    results = [f.result(timeout=30) for f in futures]
    assert results[0] == TaskResult(True, 9, "", "", results[0].seconds)
    assert (results[1].ok, results[1].reason) == (False, reason), results[1]
    assert detail in results[1].detail, results[1].detail
    assert "Traceback" not in results[1].detail and "\n" not in results[1].detail
    assert results[2].ok and results[2].value == 16
    assert time.monotonic() - started < 15
    assert [r.value for r in pool.map(t.square, range(6))] == [0, 1, 4, 9, 16, 25]  # still flowing


@pytest.mark.timeout(60)
def test_crashes_among_many_tasks_cost_only_themselves(pool) -> None:
    items = [t.square] * 10 + [t.abort, t.panic] + [t.square] * 10
    futures = [pool.submit(fn, i) if fn is t.square else pool.submit(fn) for i, fn in enumerate(items)]
    results = [f.result(timeout=40) for f in futures]
    assert sum(not r.ok for r in results) == 2
    assert [r.value for r in results if r.ok] == [i * i for i, fn in enumerate(items) if fn is t.square]


def test_memory_cap_is_relative_to_the_worker_baseline(pool) -> None:
    assert pool.run(t.allocate, 0.25).ok  # 256 MB under a 512 MB cap
    assert pool.run(t.allocate, 0.75).reason == "too_large"


@pytest.mark.timeout(60)
def test_cpu_budget() -> None:
    with DecodePool(workers=1, memory_limit=0, time_limit=30, cpu_limit=1) as p:
        result = p.run(t.spin)
        assert (result.reason, result.detail) == ("too_complex", "over 1 s of CPU (SIGXCPU)"), result
        assert p.run(t.square, 5).value == 25  # the next task gets its own budget


def test_workers_are_persistent(pool) -> None:
    pids = set(pool.pids)
    list(pool.map(t.square, range(30)))
    assert set(pool.pids) == pids  # no process per task


def test_run_isolated_uses_a_shared_pool() -> None:
    try:
        assert run_isolated(t.square, 7).value == 49
        assert run_isolated(t.abort).reason == "unreadable"
        assert run_isolated(t.square, 8).value == 64
    finally:
        shutdown_default_pool()


def test_fork_is_refused() -> None:
    with pytest.raises(ValueError, match="never fork"):
        DecodePool(context="fork")


def test_real_decode(real_cxr_dir: Path) -> None:
    files = sorted(str(p) for p in real_cxr_dir.glob("*.dcm"))[:2]
    if not files:
        pytest.skip("no real radiographs")
    with DecodePool(workers=1, preload=("numpy", "pydicom")) as p:
        for path, result in zip(files, p.map(t.read_image, files), strict=True):
            inline = t.read_image(path)
            assert result.ok
            if isinstance(inline, np.ndarray):
                np.testing.assert_array_equal(result.value, inline)


@pytest.mark.timeout(60)
def test_workers_that_cannot_start_are_not_respawned_forever() -> None:
    with DecodePool(workers=1, initializer=t.fail_to_start) as p:
        result = p.submit(t.square, 2).result(timeout=40)
        assert (result.ok, result.reason) == (False, "unreadable") and "cannot start" in result.detail, result
        assert p.replaced <= 3
        assert p.run(t.square, 3).reason == "unreadable"  # answered at once, no new worker
        assert p.replaced <= 3
