"""Training of one cross-validation fold: epochs, validation, best-epoch choice, resumable checkpoints.

A fold trains on its ``train`` patients, scores its ``val`` patients after every epoch, keeps the epoch
with the best validation score (classification: AUC, ties and undefined AUCs decided by the validation
loss; regression: MAE of log CAC), chooses the decision threshold on the validation patients with those
weights, and only then scores its ``test`` patients, once.

Reproducibility: the model is initialised from ``seed`` alone (every fold starts from the same weights,
so a frozen trunk is the same function in all folds and its feature cache is shared); the training order
of each epoch comes from a generator seeded by (seed, fold, epoch); the global torch generator (dropout,
stochastic depth) is seeded per fold and saved in each checkpoint. A fold resumed from
``fold_<k>/checkpoint.pt`` therefore continues exactly where it stopped.

Speed and scale: :mod:`cacxr.training.accel` chooses mixed precision, channels-last and ``torch.compile`` on CUDA
(nothing changes on the CPU); with several processes (:mod:`cacxr.training.distributed`) the trained module runs in
DistributedDataParallel, each step's batch is split between the processes, validation and test outputs are
gathered, and rank 0 writes the checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from cacxr.config import TrainConfig
from cacxr.core import target_to_cac
from cacxr.model import CACNet, ModelScore, apply_calibration, fit_calibration
from cacxr.pixels import ImageStore
from cacxr.runs import CHECKPOINT
from cacxr.stats import choose_threshold, classification_metrics, regression_metrics
from cacxr.training.accel import AccelPlan, choose_accel
from cacxr.training.checkpoint import FoldState, load_checkpoint, save_checkpoint
from cacxr.training.dataset import Augment, FoldInputs
from cacxr.training.distributed import DistContext, ShardedBatchSampler, TailModule
from cacxr.training.features import FeatureCache
from cacxr.training.fold_setup import FoldTask, build_fold_model, calibration_offset, fit_encoder, fold_seed
from cacxr.training.splits import Fold

__all__ = ["FoldResult", "train_fold"]

logger = logging.getLogger(__name__)

_EVAL_BATCH = 32


@dataclass
class FoldResult:
    """A finished fold: its record (fold.json), its test predictions and the selected model."""

    record: dict[str, Any]
    test_ids: list[str]
    test_scores: np.ndarray
    model: CACNet  # the selected epoch's weights, in eval mode
    # regression: "log_cac" (predicted, unclipped) and "probability" (calibrated P(CAC > T)) per test patient
    test_extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def train_fold(
    cfg: TrainConfig,
    fold: Fold,
    cac: dict[str, float],
    store: ImageStore,
    fold_dir: Path,
    device: torch.device,
    features: FeatureCache | None = None,
    progress: bool = True,
    dist: DistContext | None = None,
    covariates: dict[str, tuple[float, str]] | None = None,
    select: bool = True,
) -> FoldResult:
    """Train one fold, resuming from ``fold_dir/checkpoint.pt`` when it exists.

    The final model of a run (cacxr.training.final) trains here too: its ``fold`` has the index ``kfold``, its
    calibration patients as ``val``, no ``test`` patients, and ``select=False`` (it keeps the last of the
    ``cfg.epochs`` epochs chosen by the folds; the calibration patients only fit its calibration map).

    Args:
        cfg: the resolved run config.
        fold: the fold's patients by role.
        cac: true CAC score of every patient.
        store: the image store.
        fold_dir: the fold's folder (the checkpoint is written there after every epoch).
        device: where to train.
        features: the frozen trunk's cached maps (then only the tail trains), or None.
        progress: show a progress bar over the epochs.
        dist: this process's place in a multi-process run (None: one process).
        covariates: patient id -> (age, sex), needed with ``cfg.clinical``; encoded with statistics of
            the fold's training patients (stored in fold.json as ``clinical_encoder``).
        select: keep the epoch with the best validation score (False: the last epoch).

    Returns:
        The fold's record, its test scores and the model with the selected epoch's weights (on ``device``).

    Raises:
        CacxrError: a checkpoint that belongs to other settings.
    """
    started = time.perf_counter()
    if (dist or DistContext()).is_main:
        # A killed run leaves the checkpoint's temporary file behind (atomic_path cannot clean up after
        # SIGKILL); nothing else writes there, so it goes before this run writes its own.
        for leftover in Path(fold_dir).glob(f".{CHECKPOINT}.*.tmp"):
            logger.info("%s: removing a temporary checkpoint left by an interrupted run", leftover)
            leftover.unlink(missing_ok=True)
    ids = {"train": list(fold.train), "val": list(fold.val), "test": list(fold.test)}
    task = FoldTask(cfg, cac, ids["train"])
    augment = Augment(seed=fold_seed(cfg.seed, fold.index, 1)) if cfg.augment else None
    encoder = fit_encoder(cfg, ids["train"], covariates)
    clinical = None
    if encoder is not None and covariates is not None:
        every = [pid for members in ids.values() for pid in members]
        values = [covariates.get(pid, (math.nan, "")) for pid in every]
        encoded = encoder.transform([a for a, _ in values], [s for _, s in values])
        clinical = dict(zip(every, encoded, strict=True))
    inputs = FoldInputs(store, features, augment, clinical)
    model = build_fold_model(cfg).to(device)
    run = _Run.create(cfg, model, device, dist or DistContext(), whole_model_trains=features is None)
    torch.manual_seed(fold_seed(cfg.seed, fold.index))
    state = _fit(cfg, fold.index, model, inputs, task, ids, fold_dir / CHECKPOINT, device, progress, run, select)

    model.load_state_dict(state.best_model)
    model.eval()
    forward = inputs.forward(model)
    # Calibration on the validation patients at the selected epoch, before the threshold is chosen.
    val_out, _ = _predict(model, forward, inputs.dataset(ids["val"], task.targets(ids["val"]), False), task, device, run)
    val_labels = task.labels(ids["val"])
    calibration = fit_calibration(task.raw(val_out), val_labels, cfg.calibration, calibration_offset(cfg))
    val_probability = apply_calibration(calibration, task.raw(val_out))
    if cfg.task == "classification":
        decision_threshold = choose_threshold(val_labels, val_probability)
    else:
        # Predicted CAC rounded to an integer Agatston score above the user's threshold (metrics convention).
        decision_threshold = float(cfg.threshold) + 0.5
    # The test patients are scored once, with the selected weights, calibration and threshold.
    test_metrics, test_scores, extra = None, np.zeros(0), {}
    if ids["test"]:
        test_out, _ = _predict(model, forward, inputs.dataset(ids["test"], task.targets(ids["test"]), False), task, device, run)
        # The scoring path's own object, as load_run builds it from fold.json (cacxr.model.scoring).
        member = {
            "target_mean": task.mean, "target_std": task.std, "calibration": calibration,
            "clinical_encoder": encoder.to_dict() if encoder is not None else None,
        }  # fmt: skip
        scorer = ModelScore(model, cfg.task, member, cfg.threshold)
        with torch.no_grad():
            raw, probability = scorer.from_output(test_out)
        test_raw, test_probability = raw.double().numpy(), probability.double().numpy()
        test_scores = test_probability if cfg.task == "classification" else target_to_cac(test_raw)
        extra = {} if cfg.task == "classification" else {"log_cac": test_raw, "probability": test_probability}
        if cfg.task == "classification":
            test_metrics = classification_metrics(task.labels(ids["test"]), test_scores, decision_threshold)
        else:
            test_cac = np.array([cac[i] for i in ids["test"]])
            test_metrics = regression_metrics(test_cac, test_scores, cfg.threshold, decision_threshold)
    record = {
        "fold": fold.index,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.epoch < cfg.epochs,
        "selection": _SELECTION[cfg.task] if select else "the last epoch (chosen in advance)",
        "decision_threshold": float(decision_threshold),
        "target_mean": task.mean if cfg.task == "regression" else None,
        "target_std": task.std if cfg.task == "regression" else None,
        "n": {role: len(members) for role, members in ids.items()},
        "n_positive": {role: int(task.labels(members).sum()) for role, members in ids.items()},
        "feature_cache": features is not None,
        "device": str(device),
        "accel": run.plan.describe(),
        "distributed": run.dist.describe(),
        "seconds": round(time.perf_counter() - started, 2),
        "test_metrics": test_metrics,
        "history": state.history,
        "clinical_encoder": encoder.to_dict() if encoder is not None else None,
        "calibration": calibration,
        "validation": [
            {"patient_id": pid, "label": int(label), "score": float(score)}
            for pid, label, score in zip(ids["val"], val_labels, val_probability, strict=True)
        ],
        "val_auc": classification_metrics(val_labels, val_probability)["auc"],
    }
    return FoldResult(record, ids["test"], test_scores, model, extra)


_SELECTION = {
    "classification": "validation AUC, then validation loss",
    "regression": "validation MAE of log CAC",
}


def _optimiser(
    cfg: TrainConfig, model: CACNet
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The seed's recipe: AdamW (classification) or SGD with momentum (regression), MultiStepLR."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.task == "classification":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.wd)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)


def _fit(
    cfg: TrainConfig,
    fold: int,
    model: CACNet,
    inputs: FoldInputs,
    task: FoldTask,
    ids: dict[str, list[str]],
    checkpoint: Path,
    device: torch.device,
    progress: bool,
    run: _Run,
    select: bool = True,
) -> FoldState:
    """The epochs of a fold (from its checkpoint when there is one), keeping the best by validation."""
    optimizer, scheduler = _optimiser(cfg, model)
    forward = inputs.forward(model)
    train_set = inputs.dataset(ids["train"], task.targets(ids["train"]), train=True)
    val_set = inputs.dataset(ids["val"], task.targets(ids["val"]), train=False)
    state = FoldState(history=[], best_epoch=0, best_key=(-math.inf, -math.inf), best_model=None, epoch=0)
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, device, run.scaler) or state
    # The trained module (the tail on cached maps, else the model), after the checkpoint: DDP broadcasts it.
    module = TailModule(model) if inputs.features is not None else model
    trained = run.plan.compile_module(run.dist.wrap(module, device))
    bar = tqdm(total=cfg.epochs, initial=state.epoch, desc=f"fold {fold}", unit="epoch", disable=not progress)
    with bar:
        while state.epoch < cfg.epochs and not _patience_over(cfg, state):
            epoch = state.epoch + 1
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)  # the epoch's augmentations
            train_loss = _train_epoch(model, trained, train_set, task, optimizer, cfg, fold, epoch, device, run)
            scheduler.step()
            run.dist.sync_buffers(model)  # rank 0's BatchNorm statistics everywhere: one model is evaluated
            val_out, val_loss = _predict(model, forward, val_set, task, device, run)
            metric = task.val_metric(ids["val"], val_out)
            lr = optimizer.param_groups[0]["lr"]
            state.history.append(
                {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_metric": metric, "lr": lr}
            )
            key = task.selection_key(val_loss, metric)
            if state.best_model is None or key > state.best_key or not select:
                state.best_key, state.best_epoch = key, epoch
                state.best_model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            state.epoch = epoch
            if run.dist.is_main:
                save_checkpoint(checkpoint, state, model, optimizer, scheduler, run.scaler)
            bar.update()
            bar.set_postfix(loss=f"{train_loss:.3f}", val=_fmt(metric), best=state.best_epoch)
    return state


def _patience_over(cfg: TrainConfig, state: FoldState) -> bool:
    return cfg.patience is not None and state.epoch - state.best_epoch >= cfg.patience


@dataclass
class _Run:
    """How a fold's passes run: its processes, the device options and the loss scaler."""

    dist: DistContext
    plan: AccelPlan
    scaler: torch.amp.GradScaler

    @classmethod
    def create(
        cls, cfg: TrainConfig, model: CACNet, device: torch.device, dist: DistContext, whole_model_trains: bool
    ) -> _Run:
        """Choose the device options (cacxr.training.accel) and put the model in their memory format."""
        plan = choose_accel(
            device, cfg.amp, cfg.channels_last, cfg.compile, whole_model_trains=whole_model_trains,
            local_world_size=dist.local_world_size,
        )  # fmt: skip
        plan.prepare_model(model)
        return cls(dist, plan, plan.grad_scaler_for())

    @classmethod
    def plain(cls, device: torch.device) -> _Run:
        """One process, float32, no fast-path option (for callers that do not choose)."""
        plan = AccelPlan(device_type=device.type)
        return cls(DistContext(), plan, plan.grad_scaler_for())


def _train_batches(
    dataset: Dataset, batch_size: int, generator: torch.Generator, run: _Run
) -> tuple[DataLoader, ShardedBatchSampler]:
    """This process's share of each training batch, in an order fixed by ``generator``."""
    # A last batch of one image would break BatchNorm in training mode; drop it (it is reshuffled next epoch).
    drop_last = len(dataset) % batch_size == 1 and len(dataset) > 1
    sampler = ShardedBatchSampler(len(dataset), batch_size, run.dist.rank, run.dist.world_size, generator, drop_last)
    # The same generator for the loader: it draws its base seed first, as a shuffling DataLoader does.
    loader = DataLoader(dataset, batch_sampler=sampler, generator=generator, **run.plan.loader_kwargs())
    return loader, sampler


def _loader(dataset: Dataset, batch_size: int, run: _Run) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, **run.plan.loader_kwargs())


def _train_epoch(
    model: CACNet,
    forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    task: FoldTask,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    fold: int,
    epoch: int,
    device: torch.device,
    run: _Run | None = None,
) -> float:
    """One pass over the training patients in an order fixed by (seed, fold, epoch); the mean loss.

    ``run`` None: one process, float32 (as cacxr.training.final calls it).
    """
    run = run or _Run.plain(device)
    model.train()
    order = torch.Generator().manual_seed(fold_seed(cfg.seed, fold, epoch))
    loader, sampler = _train_batches(dataset, cfg.batchsize, order, run)
    total, count = 0.0, 0
    for step, batch in enumerate(loader):
        x = run.plan.to_device(batch["image"], device)
        target = batch["target"].to(device, non_blocking=run.plan.pin_memory)
        optimizer.zero_grad(set_to_none=True)
        with run.plan.autocast():
            loss = task.loss(forward(x, *_covariates(batch, device)), target)
        # With several processes, weighted by this process's share: the averaged gradient is the batch's.
        weighted = loss * sampler.loss_scale(step) if run.dist.active else loss
        run.scaler.scale(weighted).backward()
        run.scaler.step(optimizer)
        run.scaler.update()
        total += float(loss.detach()) * sampler.local_counts[step]
        count += sampler.local_counts[step]
    total, count = run.dist.sum(total, count)
    return total / max(count, 1)


@torch.no_grad()
def _predict(
    model: CACNet,
    forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    task: FoldTask,
    device: torch.device,
    run: _Run,
) -> tuple[torch.Tensor, float]:
    """Outputs (on the CPU) and mean loss of the model in eval mode, restoring its mode afterwards.

    With several processes each scores a contiguous share of ``dataset`` and the outputs are gathered.
    """
    was_training = model.training
    model.eval()
    outs, losses = [], []
    part = Subset(dataset, run.dist.shard(len(dataset))) if run.dist.active else dataset
    for batch in _loader(part, _EVAL_BATCH, run):
        with run.plan.autocast():
            out = forward(run.plan.to_device(batch["image"], device), *_covariates(batch, device)).float()
        losses.append(float(task.loss(out, batch["target"].to(device))) * len(out))
        outs.append(out.cpu())
    model.train(was_training)
    (loss_sum,) = run.dist.sum(sum(losses))
    return torch.cat(run.dist.gather_rows(outs)), loss_sum / max(len(dataset), 1)


def _covariates(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The batch's clinical covariates as extra forward arguments (none without ``--clinical``)."""
    return (batch["clinical"].to(device),) if "clinical" in batch else ()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
