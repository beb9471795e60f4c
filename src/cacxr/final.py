"""The final model of a run: after cross-validation, one model trained on every patient of the run.

Cross-validation estimates how well the recipe works; the model a site then uses is trained once more on
all the patients, with the settings the folds chose:

- epochs: the median of the folds' best epochs (each chosen on its fold's validation patients), rounded
  half up, at least 1; the learning-rate schedule, optimiser and every other setting are the run's own;
- decision threshold: the mean of the folds' decision thresholds (each chosen on its fold's validation
  patients). The final model has no validation patients of its own, and this is also the rule of the
  fold ensemble (``LoadedRun.decision_threshold``). Regression folds all use threshold + 0.5, so the mean
  is that value;
- regression target: standardised with the mean/std of every patient's log CAC;
- clinical covariates (``--clinical``): their encoder is fitted on every patient and stored in final.json.

It has no held-out estimate of its own: the run's cross-validated figures (metrics.json) are the estimate
of its performance, and report.html says so. Files::

    RUN/final/model.safetensors   the weights (with their metadata)
    RUN/final/final.json          how it was made (like fold.json; written last: it marks the model done)
    RUN/config.json               gains "final": {epochs, how chosen, threshold, n_patients, date}

``cacxr.run.load_run(RUN)`` then uses the final model; ``load_run(RUN, fold="ensemble")`` the folds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from cacxr.atomic import read_json_object, write_json
from cacxr.config import TrainConfig, resolve_device
from cacxr.errors import CacxrError

if TYPE_CHECKING:
    import torch

    from cacxr.clinical import ClinicalEncoder
    from cacxr.manifest import ManifestRow
    from cacxr.models import CACNet
    from cacxr.store import ImageStore

__all__ = ["fit_final", "has_final", "choose_epochs", "FINAL_DIR", "FINAL_RECORD", "MODEL_FILE"]

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
FINAL_RECORD = "final.json"
MODEL_FILE = "model.safetensors"
NO_ESTIMATE = (
    "no held-out estimate of its own: the run's cross-validated figures (metrics.json) are the estimate "
    "of this model's performance"
)


def has_final(run_dir: str | os.PathLike[str]) -> bool:
    """True when the run has a finished final model (``RUN/final/final.json`` and its weights)."""
    folder = Path(run_dir) / FINAL_DIR
    return (folder / FINAL_RECORD).is_file() and (folder / MODEL_FILE).is_file()


def choose_epochs(best_epochs: list[int]) -> int:
    """The final model's epochs: the median of the folds' best epochs, rounded half up, at least 1.

    Args:
        best_epochs: each fold's validation-selected epoch.

    Returns:
        The number of epochs.

    Raises:
        CacxrError: no epochs given.
    """
    if not best_epochs:
        raise CacxrError("no fold best epochs to choose the final model's epochs from")
    return max(1, math.floor(statistics.median(best_epochs) + 0.5))


def fit_final(
    run_dir: str | os.PathLike[str],
    device: str = "auto",
    overwrite: bool = False,
    workers: int | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the final model of a cross-validated run on all its patients and write ``RUN/final/``.

    Args:
        run_dir: a finished run folder (``cacxr train --out``).
        device: ``auto``, ``cpu`` or ``cuda``.
        overwrite: train again when the run already has a final model.
        workers: processes for rebuilding the image store if its cache was deleted.
        num_threads: torch CPU threads during training (``None``: torch's default).
        progress: show progress bars.

    Returns:
        The final.json content.

    Raises:
        CacxrError: not a finished run, a final model already there (without ``overwrite``), data that
            changed since the run was trained, or images that cannot be preprocessed.
    """
    from cacxr.report import write_report
    from cacxr.weights import save_model

    root = Path(run_dir)
    record, cfg = _read_run_config(root)
    final_dir = root / FINAL_DIR
    if has_final(root) and not overwrite:
        existing = read_json_object(final_dir / FINAL_RECORD)
        if isinstance(record.get("final"), dict):
            raise CacxrError(
                f"{final_dir}: the run already has a final model ({existing.get('epochs')} epochs, "
                f"{existing.get('date')}); add --overwrite to train it again"
            )
        # An earlier fit-final stopped after writing the model: finish its bookkeeping only.
        _record_in_config(root, record, existing)
        write_report(root)
        return existing

    folds = _fold_records(root, cfg)
    best_epochs = {k: int(r["best_epoch"]) for k, r in folds.items()}
    epochs = choose_epochs(list(best_epochs.values()))
    cuts = {k: float(r["decision_threshold"]) for k, r in folds.items()}
    decision_threshold = float(statistics.fmean(cuts.values()))
    ids, cac = _run_patients(root)
    rows = _manifest_rows(root, record, ids) if cfg.clinical else None
    store = _store(root, record, cfg, ids, rows, workers, progress)
    covariates = {row.patient_id: (float(row.age), row.sex) for row in rows} if rows else None
    target = resolve_device(device)
    # Retraining: the old record goes first, so that an interruption never pairs it with new weights.
    (final_dir / FINAL_RECORD).unlink(missing_ok=True)

    started = time.perf_counter()
    logger.info("final model: %d patients, %d epochs (median of the folds' best epochs)", len(ids), epochs)
    with _torch_threads(num_threads):
        trained = _train(cfg, record, ids, cac, store, covariates, epochs, target, progress)
    model, task, history, cached, encoder = trained
    final = {
        "model": "final",
        "epochs": epochs,
        "epochs_chosen_by": "median of the folds' validation-selected best epochs, rounded half up, at least 1",
        "fold_best_epochs": {str(k): v for k, v in best_epochs.items()},
        "decision_threshold": decision_threshold,
        "threshold_chosen_by": "mean of the folds' validation-chosen decision thresholds",
        "fold_decision_thresholds": {str(k): v for k, v in cuts.items()},
        "target_mean": task.mean if cfg.task == "regression" else None,
        "target_std": task.std if cfg.task == "regression" else None,
        "n_patients": len(ids),
        "n_positive": int(sum(c > cfg.threshold for c in cac.values())),
        "feature_cache": cached,
        "clinical_encoder": encoder.to_dict() if encoder is not None else None,
        "device": str(target),
        "seconds": round(time.perf_counter() - started, 2),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "estimate": NO_ESTIMATE,
        "history": history,
    }
    save_model(model, final_dir / MODEL_FILE, _metadata(cfg, final))
    write_json(final_dir / FINAL_RECORD, final)  # last file: the final model is complete
    _record_in_config(root, record, final)
    write_report(root)
    return final


# ---- the run's settings, folds and patients ------------------------------------------------------------


def _read_run_config(root: Path) -> tuple[dict[str, Any], TrainConfig]:
    if not (root / "config.json").is_file():
        raise CacxrError(f"{root}: not a cacxr run folder (no config.json)")
    if not (root / "metrics.json").is_file():
        raise CacxrError(
            f"{root}: cross-validation has not finished (no metrics.json); finish the run first "
            f"(cacxr train ... --out {root} --resume, or --merge for fold jobs)"
        )
    record = read_json_object(root / "config.json")
    try:
        cfg = TrainConfig.from_dict(record).resolved()
    except (TypeError, ValueError) as exc:
        raise CacxrError(f"{root / 'config.json'}: not a run configuration ({exc})") from None
    return record, cfg


def _fold_records(root: Path, cfg: TrainConfig) -> dict[int, dict[str, Any]]:
    from cacxr.training.runfiles import read_fold_record

    records = {k: read_fold_record(root, k) for k in range(cfg.kfold)}
    for k, r in records.items():
        if not isinstance(r.get("best_epoch"), int) or r.get("decision_threshold") is None:
            raise CacxrError(f"{root}/fold_{k}/fold.json: no best_epoch or decision_threshold")
    return records


def _run_patients(root: Path) -> tuple[list[str], dict[str, float]]:
    """The cross-validated patients (RUN/predictions.csv) and their CAC scores."""
    import csv

    path = root / "predictions.csv"
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            cac = {row["patient_id"]: float(row["cac_score"]) for row in csv.DictReader(fh)}
    except FileNotFoundError:
        raise CacxrError(f"{path}: missing (the run's out-of-fold predictions list its patients)") from None
    except (OSError, KeyError, ValueError) as exc:
        raise CacxrError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if not cac:
        raise CacxrError(f"{path}: no patients")
    return sorted(cac), cac


def _manifest_rows(root: Path, record: dict[str, Any], ids: list[str]) -> list[ManifestRow]:
    """The run's manifest rows of ``ids`` (checked against the manifest's sha256 in config.json)."""
    from cacxr.manifest import manifest_hash, read_manifest

    candidates = [Path(record["manifest"])] if record.get("manifest") else []
    candidates.append(root / "ingest" / "manifest.csv")
    manifest = next((p for p in candidates if p.is_file()), None)
    if manifest is None:
        raise CacxrError(f"{root}: the run's manifest ({candidates[0]}) is gone")
    if record.get("manifest_sha256") and manifest_hash(manifest) != record["manifest_sha256"]:
        raise CacxrError(f"{manifest}: changed since the run was trained (its sha256 differs from config.json)")
    wanted = set(ids)
    rows = [row for row in read_manifest(manifest) if row.patient_id in wanted]
    missing = sorted(wanted - {row.patient_id for row in rows})
    if missing:
        raise CacxrError(f"{manifest}: lacks run patients {', '.join(missing[:5])}")
    return rows


def _store(
    root: Path,
    record: dict[str, Any],
    cfg: TrainConfig,
    ids: list[str],
    rows: list[ManifestRow] | None,
    workers: int | None,
    progress: bool,
) -> ImageStore:
    """The run's image store, rebuilt from its manifest when the cache was moved or deleted."""
    from cacxr.store import ImageStore, build_store
    from cacxr.train import default_store_dir

    store_dir = Path(record.get("store") or default_store_dir(cfg, root))
    try:
        store = ImageStore.open(store_dir)
        if all(pid in store for pid in ids):
            return store
    except CacxrError:
        pass
    rows = rows if rows is not None else _manifest_rows(root, record, ids)
    store = build_store(rows, store_dir, cfg.profile, cfg.image_size, workers, progress)
    failed = [pid for pid in ids if pid not in store]
    if failed:
        raise CacxrError(f"{store_dir}: no image for {', '.join(failed[:5])} (see the warnings above)")
    return store


# ---- training -------------------------------------------------------------------------------------------


def _train(
    cfg: TrainConfig,
    record: dict[str, Any],
    ids: list[str],
    cac: dict[str, float],
    store: ImageStore,
    covariates: dict[str, tuple[float, str]] | None,
    epochs: int,
    device: torch.device,
    progress: bool,
) -> tuple[CACNet, Any, list[dict[str, Any]], bool, ClinicalEncoder | None]:
    """``epochs`` epochs on every patient, with the folds' optimiser, schedule, loss and training order.

    The training order and augmentation come from (seed, kfold, epoch): the index after the last fold.

    Returns:
        The model (eval mode), the task (target statistics), the epochs' history, whether cached trunk
        features were used, and the clinical encoder (None without ``--clinical``).
    """
    import torch

    from cacxr.data import Augment
    from cacxr.features import FeatureCache

    # The fold loop's own pieces, so that the final model trains exactly as the folds did.
    from cacxr.training.loop import (
        _fit_encoder,
        _Inputs,
        _optimiser,
        _Task,
        _train_epoch,
        build_fold_model,
        fold_seed,
    )

    index = cfg.kfold
    run_cfg = dataclasses.replace(cfg, epochs=epochs)
    task = _Task(run_cfg, cac, ids)
    model = build_fold_model(run_cfg)
    features = None
    if cfg.feature_cache and not cfg.augment and model.trunk_is_frozen():
        feature_dir = record.get("feature_cache_dir") or store.root / "features"
        features = FeatureCache.build(model, store, ids, feature_dir, device=device, progress=progress)
    augment = Augment(seed=fold_seed(cfg.seed, index, 1)) if cfg.augment else None
    encoder = _fit_encoder(run_cfg, ids, covariates)
    clinical = None
    if encoder is not None and covariates is not None:
        values = [covariates.get(pid, (math.nan, "")) for pid in ids]
        clinical = dict(zip(ids, encoder.transform([a for a, _ in values], [s for _, s in values]), strict=True))
    inputs = _Inputs(store, features, augment, clinical)
    model.to(device)
    forward = inputs.forward(model)
    optimizer, scheduler = _optimiser(run_cfg, model)
    train_set = inputs.dataset(ids, task.targets(ids), train=True)
    history = []
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):  # the caller's global generator is left as it was
        torch.manual_seed(fold_seed(cfg.seed, index))
        for epoch in tqdm(range(1, epochs + 1), desc="final model", unit="epoch", disable=not progress):
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            loss = _train_epoch(model, forward, train_set, task, optimizer, run_cfg, index, epoch, device)
            scheduler.step()
            history.append({"epoch": epoch, "train_loss": loss, "lr": optimizer.param_groups[0]["lr"]})
    return model.eval(), task, history, features is not None, encoder


def _metadata(cfg: TrainConfig, final: dict[str, Any]) -> dict[str, str]:
    """String metadata stored beside the weights (as for the folds' models)."""
    values = {
        "task": cfg.task,
        "fold": "final",
        "threshold": cfg.threshold,
        "decision_threshold": final["decision_threshold"],
        "target_mean": final["target_mean"],
        "target_std": final["target_std"],
        "profile": cfg.profile,
        "image_size": cfg.image_size,
        "epochs": final["epochs"],
    }
    return {k: "" if v is None else str(v) for k, v in values.items()}


def _record_in_config(root: Path, record: dict[str, Any], final: dict[str, Any]) -> None:
    """config.json gains "final": how the final model's settings were chosen."""
    keys = ("epochs", "epochs_chosen_by", "decision_threshold", "threshold_chosen_by", "n_patients", "date")
    record["final"] = {
        **{k: final.get(k) for k in keys},
        "model": f"{FINAL_DIR}/{MODEL_FILE}",
    }
    write_json(root / "config.json", record)


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
