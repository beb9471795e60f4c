"""Data-parallel training (cacxr.training.distributed), the fast GPU path's choices (cacxr.training.accel), the GPU benchmark.

The two-process test launches ``cacxr train`` under torchrun with gloo on 127.0.0.1 and compares it with a
one-process run of the same tiny synthetic cohort.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from _torch_threads import torch_threads
from cacxr.core import CacxrError
from cacxr.training.accel import AccelPlan, choose_accel
from cacxr.training.distributed import DistContext, ShardedBatchSampler, launch_env, split_evenly

ROOT = Path(__file__).resolve().parents[2]


# ---- sharding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "parts", "expected"),
    [
        (5, 2, [[0, 1, 2], [3, 4]]),
        (4, 2, [[0, 1], [2, 3]]),
        (7, 3, [[0, 1, 2], [3, 4], [5, 6]]),
        (2, 4, [[0], [1], [], []]),
        (0, 2, [[], []]),
        (3, 1, [[0, 1, 2]]),
    ],
)
def test_split_evenly(n: int, parts: int, expected: list[list[int]]) -> None:
    assert split_evenly(list(range(n)), parts) == expected


def _one_process_batches(n: int, batch: int, seed: int, drop_last: bool) -> list[list[int]]:
    """The batches of the one-process loader this sampler must reproduce (indices as the dataset)."""
    loader = DataLoader(
        list(range(n)), batch_size=batch, shuffle=True, drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )
    return [b.tolist() for b in loader]


def _sharded_batches(n: int, batch: int, seed: int, drop_last: bool, rank: int, world: int):
    generator = torch.Generator().manual_seed(seed)
    sampler = ShardedBatchSampler(n, batch, rank, world, generator, drop_last)
    loader = DataLoader(list(range(n)), batch_sampler=sampler, generator=generator)
    return sampler, [b.tolist() for b in loader]


@pytest.mark.parametrize(
    ("n", "batch", "world", "drop_last"),
    [
        (30, 4, 1, False),
        (30, 4, 2, False),  # last global batch of 2: one image per process
        (29, 4, 2, True),
        (31, 4, 3, False),  # last global batch of 3
        (10, 4, 8, False),  # more processes than images per step: some shares are empty
        (7, 8, 2, False),  # a single, incomplete step
    ],
)
def test_sharded_batches_cover_each_image_once_per_epoch(n: int, batch: int, world: int, drop_last: bool) -> None:
    reference = _one_process_batches(n, batch, seed=5, drop_last=drop_last)
    per_rank = [_sharded_batches(n, batch, 5, drop_last, rank, world) for rank in range(world)]
    # Every process runs every step (no process leaves an all-reduce early).
    assert {len(batches) for _, batches in per_rank} == {len(reference)}
    for step, global_batch in enumerate(reference):
        real = [batches[step] for sampler, batches in per_rank if sampler.local_counts[step]]
        # The shares of a step, in rank order, are exactly the one-process batch: nothing repeated or lost.
        assert [i for share in real for i in share] == global_batch
        # Averaged over processes, the weighted losses give the mean over the global batch.
        scales = [sampler.loss_scale(step) for sampler, _ in per_rank]
        assert sum(scales) / world == pytest.approx(1.0)
        for sampler, batches in per_rank:
            if sampler.local_counts[step] == 0:  # an empty share runs on the batch with weight 0
                assert sampler.loss_scale(step) == 0 and batches[step] == global_batch
            else:
                assert sampler.loss_scale(step) == pytest.approx(len(batches[step]) * world / len(global_batch))


def test_sharded_batches_one_process_is_the_plain_loader() -> None:
    sampler, batches = _sharded_batches(30, 4, 9, False, 0, 1)
    assert batches == _one_process_batches(30, 4, 9, False)
    assert all(sampler.loss_scale(step) == 1.0 for step in range(len(sampler)))


def test_sharded_batches_same_seed_same_order_other_seed_other_order() -> None:
    _, first = _sharded_batches(30, 4, 3, False, 1, 2)
    _, again = _sharded_batches(30, 4, 3, False, 1, 2)
    _, other = _sharded_batches(30, 4, 4, False, 1, 2)
    assert first == again and first != other


def test_sampler_rejects_bad_sharding() -> None:
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        ShardedBatchSampler(10, 4, rank=2, world_size=2)


# ---- launch environment -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WORLD_SIZE": "1", "RANK": "0"}, (0, 1, 0, 1)),
        (
            {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
             "MASTER_ADDR": "node1", "MASTER_PORT": "29500"},
            (3, 4, 1, 2),
        ),
    ],
)
def test_launch_env_reads_torchrun_variables(env: dict[str, str], expected: tuple | None) -> None:
    found = launch_env(env)
    if expected is None:
        assert found is None
    else:
        assert (found.rank, found.world_size, found.local_rank, found.local_world_size) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "two"}, "not integers"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "RANK=2, WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR/MASTER_PORT are not"),
    ],
)
def test_launch_env_refuses_inconsistent_variables(env: dict[str, str], message: str) -> None:
    with pytest.raises(CacxrError, match=message):
        launch_env(env)


def test_one_process_context_is_a_no_op() -> None:
    ctx = DistContext()
    model = torch.nn.Linear(2, 1)
    assert not ctx.active and ctx.is_main
    assert ctx.wrap(model, torch.device("cpu")) is model
    assert ctx.broadcast({"a": 1}) == {"a": 1} and ctx.all_gather(3) == [3]
    assert ctx.sum(1.5, 2.0) == (1.5, 2.0) and ctx.shard(3) == [0, 1, 2]
    assert ctx.local_device(torch.device("cuda")) == torch.device("cuda")


# ---- the fast GPU path's choices ----------------------------------------------------------------------------

ACCEL_CASES = [
    # (device, capability, switches (amp, channels_last, compile), whole model, triton)
    #   -> (amp dtype, grad scaler, channels-last, compile, pinned)
    ("cuda", (9, 0), (None, None, None), True, True, ("bfloat16", False, True, True, True)),  # H100
    ("cuda", (8, 0), (None, None, None), False, True, ("bfloat16", False, True, False, True)),  # tail only
    ("cuda", (7, 5), (None, None, None), True, True, ("float16", True, True, True, True)),  # T4: fp16 + scaler
    ("cuda", (7, 0), (None, None, None), True, False, ("float16", True, True, False, True)),  # no Triton
    ("cuda", (6, 1), (None, None, None), True, True, (None, False, False, False, True)),  # no tensor cores
    ("cuda", (6, 1), (True, True, None), True, True, ("float16", True, True, False, True)),  # asked anyway
    ("cuda", (9, 0), (False, False, False), True, True, (None, False, False, False, True)),  # all switched off
    ("cuda", (8, 6), (True, None, True), False, True, ("bfloat16", False, True, True, True)),  # compile asked
    ("cpu", None, (None, None, None), True, True, (None, False, False, False, False)),
    ("cpu", None, (True, True, True), True, True, (None, False, False, False, False)),  # CPU: stays fp32
]


@pytest.mark.parametrize(("device", "capability", "switches", "whole", "triton", "expected"), ACCEL_CASES)
def test_choose_accel(device, capability, switches, whole, triton, expected) -> None:
    amp, channels_last, compile_ = switches
    plan = choose_accel(
        device, amp, channels_last, compile_, whole_model_trains=whole, capability=capability,
        triton_available=triton, cpu_count=16,
    )
    assert (plan.amp_dtype, plan.grad_scaler, plan.channels_last, plan.compile, plan.pin_memory) == expected
    assert plan.loader_workers == (4 if device == "cuda" else 0)


@pytest.mark.parametrize(("cpus", "processes", "workers"), [(16, 1, 4), (16, 8, 1), (4, 1, 3), (2, 2, 0)])
def test_loader_workers_share_the_machine(cpus: int, processes: int, workers: int) -> None:
    plan = choose_accel("cuda", capability=(8, 0), triton_available=True, cpu_count=cpus, local_world_size=processes)
    assert plan.loader_workers == workers


def test_cpu_switches_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    plan = choose_accel("cpu", amp=True, compile=True)
    assert plan == AccelPlan(device_type="cpu", reasons=plan.reasons)
    assert "--amp, --compile: no effect on the cpu" in caplog.text


def test_cpu_plan_leaves_model_and_batches_unchanged() -> None:
    plan = choose_accel("cpu")
    model = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(2, 1, 8, 8)
    assert plan.prepare_model(model) is model and model.weight.is_contiguous()
    moved = plan.to_device(x, torch.device("cpu"))
    assert moved.is_contiguous() and moved.dtype == torch.float32
    with plan.autocast():
        assert model(x).dtype == torch.float32
    assert plan.compile_module(model) is model
    assert not plan.grad_scaler_for().is_enabled()
    assert plan.loader_kwargs() == {"num_workers": 0, "pin_memory": False}


def test_channels_last_plan_converts_model_and_images() -> None:
    plan = AccelPlan(device_type="cpu", channels_last=True)
    model = plan.prepare_model(torch.nn.Conv2d(1, 4, 3))
    x = plan.to_device(torch.randn(2, 3, 8, 8), torch.device("cpu"))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert plan.to_device(torch.randn(2, 3), torch.device("cpu")).is_contiguous()  # 2-D left as is


# ---- benchmark ---------------------------------------------------------------------------------------------


def test_gpu_benchmark_runs_on_the_cpu(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "bench.json"
    with torch_threads():  # --threads 1 sets them
        code = bench_gpu.main(
            ["--device", "cpu", "--sizes", "64", "--archs", "resnet18", "--batch", "2", "--warmup", "1",
             "--steps", "1", "--matmul-size", "256", "--peak-seconds", "0.2", "--threads", "1", "--json", str(out)]
        )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["peak_tflops"]) == {"fp32", "bf16"} and all(v > 0 for v in result["peak_tflops"].values())
    rows = {row["dtype"]: row for row in result["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    for row in rows.values():
        assert row["arch"] == "resnet18" and row["size"] == 64
        assert row["train_ips"] > 0 and row["infer_ips"] > 0
        # Training counts forward + backward: about three forwards (the stem's input needs no gradient).
        assert 2.5 < row["train_gflop"] / row["infer_gflop"] <= 3.0
        assert row["train_peak_fraction"] == pytest.approx(
            row["train_gflop"] * 1e9 * row["train_ips"] / 1e12 / result["peak_tflops"][row["dtype"]]
        )


# ---- two processes ------------------------------------------------------------------------------------------


# Small enough for two CPU processes in seconds; batch 5 splits 3 + 2, and the last batch of each epoch
# unevenly again. Only the head trains (its input, the frozen trunk's maps, comes from the feature cache),
# so no BatchNorm layer trains and the two-process run must equal the one-process run up to rounding.
TINY = {
    "task": "classification", "arch": "resnet18", "epochs": 2, "kfold": 2, "image_size": 64, "batchsize": 5,
    "seed": 3, "finetune": "head", "viz": False, "workers": 1, "progress": False,
}


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cacxr.ingest import ingest
    from cacxr.synth import make_cohort

    root = tmp_path_factory.mktemp("ddp")
    make_cohort(root / "cohort", 30, seed=0, size=64, faults=False, progress=False)
    ingest(root / "cohort", root / "prep", workers=1, progress=False)
    return root / "prep" / "manifest.csv"


def _cli_flags(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            flags += [flag, str(value)]
    return flags


# Each rank runs `cacxr` commands one after the other through the command line's entry point, each command
# joining (and leaving) the process group on its own port, as separate torchrun launches would.
_RANK_DRIVER = """
import json, os, sys
from cacxr.cli import main
for port, args in zip(sys.argv[1].split(","), json.loads(sys.argv[2])):
    os.environ["MASTER_PORT"] = port
    code = main(args)
    if code:
        sys.exit(code)
"""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _launch_two_processes(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run ``cacxr`` commands as ranks 0 and 1 of a gloo group on 127.0.0.1, with torchrun's environment."""
    ports = ",".join(map(str, _free_ports(len(commands))))
    procs = []
    for rank in range(2):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _RANK_DRIVER, ports, json.dumps(commands)], cwd=cwd, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        )
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


def _scores(run: Path) -> dict[str, float]:
    with (run / "predictions.csv").open(newline="") as fh:
        return {row["patient_id"]: float(row["score"]) for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def ddp_run(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run trained by two processes through `cacxr train` (store and feature cache built by rank 0
    first), then its fold 1 again as a `--fold 1` job of two processes into ``../again``."""
    root = tmp_path_factory.mktemp("ddp_run")
    common = [str(tiny_manifest), "--store", str(root / "store"), "--device", "cpu", *_cli_flags(TINY)]
    commands = [
        ["train", *common, "--out", str(root / "run")],
        ["train", *common, "--out", str(root / "again"), "--fold", "1"],
    ]
    ranks = _launch_two_processes(commands, root)
    for rank, result in enumerate(ranks):
        assert result.returncode == 0, f"rank {rank}:\n{result.stderr[-3000:]}"
    # Rank 0 alone reports: the run's pooled AUC, then the fold job's "still to train" line.
    assert ranks[0].stdout.count("pooled AUC") == 1 and "still to train: 0" in ranks[0].stdout
    assert ranks[1].stdout == ""
    return root / "run"


def test_two_processes_match_one_process(ddp_run: Path, tiny_manifest: Path, tmp_path: Path) -> None:
    from cacxr.config import TrainConfig
    from cacxr.training import train_run

    one_run = tmp_path / "run_one"
    with torch_threads():  # num_threads=1 sets them
        one = train_run(TrainConfig(data=str(tiny_manifest), out=str(one_run), store=str(ddp_run.parent / "store"),
                                    device="cpu", num_threads=1, **TINY))
    ddp = json.loads((ddp_run / "metrics.json").read_text())

    for k in range(2):
        record = json.loads((ddp_run / f"fold_{k}" / "fold.json").read_text())
        assert record["distributed"] == {"world_size": 2, "backend": "gloo"}
        assert record["feature_cache"] and record["accel"]["amp_dtype"] is None  # CPU: float32
        reference = json.loads((one_run / f"fold_{k}" / "fold.json").read_text())
        assert record["best_epoch"] == reference["best_epoch"]
        for mine, theirs in zip(record["history"], reference["history"], strict=True):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-5)
    ddp_scores, one_scores = _scores(ddp_run), _scores(one_run)
    assert ddp_scores.keys() == one_scores.keys() and len(ddp_scores) == 30  # every patient once
    for patient, score in one_scores.items():
        assert ddp_scores[patient] == pytest.approx(score, abs=1e-6)
    assert ddp["pooled"]["auc"] == pytest.approx(one["pooled"]["auc"], abs=1e-6)
    for mine, theirs in zip(ddp["folds"], one["folds"], strict=True):
        assert mine["auc"] == pytest.approx(theirs["auc"], abs=1e-6)
    assert not list(ddp_run.rglob(".*.tmp")) and not list(ddp_run.rglob("checkpoint.pt"))


def test_two_processes_same_seed_same_results(ddp_run: Path) -> None:
    """Fold 1 trained again by two processes with the same seed (as a fold job): bit-identical."""
    again = ddp_run.parent / "again"
    first = json.loads((ddp_run / "fold_1" / "fold.json").read_text())
    second = json.loads((again / "fold_1" / "fold.json").read_text())
    assert second["history"] == first["history"] and second["test_metrics"] == first["test_metrics"]
    assert (again / "fold_1" / "predictions.csv").read_text() == (ddp_run / "fold_1" / "predictions.csv").read_text()
    assert not (again / "fold_0").exists() and not (again / "metrics.json").exists()
