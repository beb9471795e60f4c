"""A fold's resumable checkpoint (``fold_<k>/checkpoint.pt``): the state after an epoch, saved atomically and restored exactly."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cacxr.core import CacxrError, atomic_path
from cacxr.model import CACNet

__all__ = ["CHECKPOINT_FORMAT", "FoldState", "save_checkpoint", "load_checkpoint"]

logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1


@dataclass
class FoldState:
    """What a checkpoint restores besides the model, optimizer and scheduler."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_key: tuple[float, float]
    best_model: dict[str, torch.Tensor] | None
    epoch: int  # completed epochs


def save_checkpoint(
    path: Path,
    state: FoldState,
    model: CACNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    """Everything needed to continue the fold after ``state.epoch`` epochs (only tensors and plain values)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epoch": state.epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),  # empty unless float16 mixed precision
        "best_model": state.best_model,
        "best_epoch": state.best_epoch,
        "best_key": list(state.best_key),
        "history": state.history,
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(
    path: Path,
    model: CACNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    scaler: torch.amp.GradScaler,
) -> FoldState | None:
    """Restore a fold from its checkpoint; None (train the fold from the start) when the file is unreadable.

    Raises:
        CacxrError: a readable checkpoint that does not fit this fold's model or optimizer.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a cacxr fold checkpoint")
    except Exception as exc:  # truncated, foreign or pickled objects: nothing of it is used
        logger.warning("%s: cannot resume from it (%s); the fold starts again", path, exc)
        return None
    try:
        model.load_state_dict(payload["model"])
        model.to(device)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["rng_torch"])
        if payload["rng_cuda"] and torch.cuda.is_initialized():
            torch.cuda.set_rng_state_all(payload["rng_cuda"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CacxrError(
            f"{path}: does not fit this fold's model ({type(exc).__name__}: {str(exc)[:200]}); "
            "it belongs to other settings: move it away to train the fold again"
        ) from None
    logger.info("%s: resuming after epoch %d", path, payload["epoch"])
    return FoldState(
        history=copy.deepcopy(payload["history"]),
        best_epoch=int(payload["best_epoch"]),
        best_key=tuple(payload["best_key"]),
        best_model=payload["best_model"],
        epoch=int(payload["epoch"]),
    )
