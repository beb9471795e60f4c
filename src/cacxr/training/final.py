"""The final model of a run: after cross-validation, one model trained on every patient of the run.

Cross-validation estimates how well the recipe works; the model a site then uses is trained once more on
all the patients, with the settings the folds chose:

- epochs: the median of the folds' best epochs (each chosen on its fold's validation patients), rounded
  half up, at least 1; the learning-rate schedule, optimiser and every other setting are the run's own;
- decision threshold: the run's operating point (metrics.json ``operating_point``, chosen by
  ``--operating-point`` on all folds' calibrated out-of-fold test predictions), the same cut as the fold
  ensemble's;
  runs without one use the mean of the folds' decision thresholds (regression: threshold + 0.5);
- calibration: a stratified share of the patients (``val_fraction``, 20 % by default; seeded by the run's
  seed) is held out as the final model's calibration patients; the model trains on the others, through
  the folds' own training loop (``cacxr.training.loop.train_fold``: the same accelerator path, feature
  cache and metadata), and its calibration map (``--calibration``) is fitted on the held-out patients'
  scores after the last epoch. final.json records the map and both patient lists;
- regression target: standardised with the mean/std of the training patients' log CAC;
- clinical covariates (``--clinical``): their encoder is fitted on the training patients, stored in final.json.

It has no held-out estimate of its own: the run's cross-validated figures (metrics.json) are the estimate
of its performance, and report.html says so. Files::

    RUN/final/model.safetensors   the weights (with their metadata)
    RUN/final/final.json          how it was made (like fold.json; written last: it marks the model done)
    RUN/config.json               gains "final": {epochs, how chosen, threshold, n_patients, date}

(file names and readers: :mod:`cacxr.runs.folder`, where the final model is fold ``FINAL_FOLD``).

``cacxr.use.loaded_run.load_run(RUN)`` then uses the final model; ``load_run(RUN, fold="ensemble")`` the folds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cacxr.config import TrainConfig, resolve_device
from cacxr.core import CacxrError
from cacxr.runs import FINAL_DIR, FINAL_FOLD, FINAL_RECORD, MODEL_FILE, has_final
from cacxr.runs import folder as runfolder
from cacxr.training.fold_setup import build_fold_model, model_metadata
from cacxr.training.loop import FoldResult, train_fold
from cacxr.training.reproducibility import torch_settings

if TYPE_CHECKING:
    import torch

    from cacxr.ingest import ManifestRow
    from cacxr.pixels import ImageStore

__all__ = [
    "fit_final", "has_final", "choose_epochs", "calibration_split", "FINAL_DIR", "FINAL_RECORD", "MODEL_FILE",
]

logger = logging.getLogger(__name__)
NO_ESTIMATE = (
    "no held-out estimate of its own: the run's cross-validated figures (metrics.json) are the estimate "
    "of this model's performance"
)


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
        num_threads: torch CPU threads during training (``None``: the count the run recorded, else
            torch's default).
        progress: show progress bars.

    Returns:
        The final.json content.

    Raises:
        CacxrError: not a finished run, a final model already there (without ``overwrite``), data that
            changed since the run was trained, or images that cannot be preprocessed.
    """
    from cacxr.model import save_model
    from cacxr.runs import write_report

    root = Path(run_dir)
    record, cfg = _read_run_config(root)
    final_dir = root / FINAL_DIR
    if has_final(root) and not overwrite:
        existing = runfolder.read_model_record(root, FINAL_FOLD)
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
    # The run's operating point (chosen on every fold's calibrated out-of-fold test predictions) when it has
    # one: the final model's map puts its scores on the same probability scale, so the cut carries over
    # (benchmarks/sim_operating_point.py measures how near the target it lands on new patients).
    operating = runfolder.decision_threshold_override(root)
    decision_threshold = operating if operating is not None else float(statistics.fmean(cuts.values()))
    threshold_rule = (
        f"the run's operating point ({cfg.operating_point}) on all folds' calibrated out-of-fold test predictions"
        if operating is not None else "mean of the folds' validation-chosen decision thresholds"
    )
    ids, cac = _run_patients(root)
    fit_ids, calibration_ids = calibration_split(ids, [int(cac[i] > cfg.threshold) for i in ids], cfg)
    rows = _manifest_rows(root, record, ids) if cfg.clinical else None
    store = _store(root, record, cfg, ids, rows, workers, progress)
    covariates = {row.patient_id: (float(row.age), row.sex) for row in rows} if rows else None
    target = resolve_device(device)
    # Retraining: the old record goes first, so that an interruption never pairs it with new weights.
    runfolder.record_path(root, FINAL_FOLD).unlink(missing_ok=True)

    started = time.perf_counter()
    logger.info(
        "final model: %d patients (%d held out for calibration), %d epochs (median of the folds' best epochs)",
        len(ids), len(calibration_ids), epochs,
    )  # fmt: skip
    with torch_settings(num_threads or record.get("num_threads"), target):  # the folds' threads and kernels
        result, cached = _train(cfg, root, record, fit_ids, calibration_ids, cac, store, covariates, epochs, target, progress)
    trained = result.record
    final = {
        **{k: v for k, v in trained.items() if k not in ("fold", "test_metrics", "validation", "n", "n_positive")},
        "model": "final",
        "epochs": epochs,
        "epochs_chosen_by": "median of the folds' validation-selected best epochs, rounded half up, at least 1",
        "fold_best_epochs": {str(k): v for k, v in best_epochs.items()},
        "decision_threshold": decision_threshold,
        "threshold_chosen_by": threshold_rule,
        "fold_decision_thresholds": {str(k): v for k, v in cuts.items()},
        "n_patients": len(ids),
        "n_positive": int(sum(c > cfg.threshold for c in cac.values())),
        "n_train": len(fit_ids),
        "n_calibration": len(calibration_ids),
        "calibration_split": f"stratified {cfg.val_fraction:g} of the patients (seed {cfg.seed}), held out of training",
        "calibration_patients": [
            {"patient_id": v["patient_id"], "label": v["label"], "score": v["score"]} for v in trained["validation"]
        ],
        "feature_cache": cached,
        "device": str(target),
        "seconds": round(time.perf_counter() - started, 2),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "estimate": NO_ESTIMATE,
    }
    save_model(result.model, runfolder.model_path(root, FINAL_FOLD), model_metadata(cfg, {**final, "fold": "final"}))
    (runfolder.model_dir(root, FINAL_FOLD) / runfolder.CHECKPOINT).unlink(missing_ok=True)
    runfolder.write_model_record(root, FINAL_FOLD, final)  # last file: the final model is complete
    _record_in_config(root, record, final)
    write_report(root)
    return final


def calibration_split(ids: list[str], labels: list[int], cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """The final model's training and calibration patients: a stratified ``cfg.val_fraction`` held out.

    Args:
        ids: every patient of the run.
        labels: their 0/1 labels (CAC > threshold).
        cfg: the run's settings (``val_fraction``, ``seed``).

    Returns:
        ``(training ids, calibration ids)``, each sorted.

    Raises:
        CacxrError: too few patients to hold any out.
    """
    from sklearn.model_selection import train_test_split

    n_held = max(1, round(len(ids) * cfg.val_fraction))
    if len(ids) - n_held < 2:
        raise CacxrError(f"{len(ids)} patients: too few to hold out calibration patients for the final model")
    # Stratified when each class has at least two patients (else sklearn cannot split it).
    stratify = labels if min(labels.count(0), labels.count(1)) >= 2 else None
    train, held = train_test_split(ids, test_size=n_held, stratify=stratify, random_state=cfg.seed)
    return sorted(train), sorted(held)


# ---- the run's settings, folds and patients ------------------------------------------------------------


def _read_run_config(root: Path) -> tuple[dict[str, Any], TrainConfig]:
    record = runfolder.read_config(root)
    if runfolder.read_metrics(root, required=False) is None:
        raise CacxrError(
            f"{root}: cross-validation has not finished (no {runfolder.METRICS_FILE}); finish the run first "
            f"(cacxr train ... --out {root} --resume, or --merge for fold jobs)"
        )
    try:
        cfg = TrainConfig.from_dict(record).resolved()
    except (TypeError, ValueError) as exc:
        raise CacxrError(f"{root / runfolder.CONFIG_FILE}: not a run configuration ({exc})") from None
    return record, cfg


def _fold_records(root: Path, cfg: TrainConfig) -> dict[int, dict[str, Any]]:
    records = {k: runfolder.read_fold_record(root, k) for k in range(cfg.kfold)}
    for k, r in records.items():
        if not isinstance(r.get("best_epoch"), int) or r.get("decision_threshold") is None:
            raise CacxrError(f"{runfolder.record_path(root, k)}: no best_epoch or decision_threshold")
    return records


def _run_patients(root: Path) -> tuple[list[str], dict[str, float]]:
    """The cross-validated patients (RUN/predictions.csv) and their CAC scores."""
    cac = {row["patient_id"]: row["cac_score"] for row in runfolder.read_run_predictions(root)}
    return sorted(cac), cac


def _manifest_rows(root: Path, record: dict[str, Any], ids: list[str]) -> list[ManifestRow]:
    """The run's manifest rows of ``ids`` (checked against the manifest's sha256 in config.json)."""
    from cacxr.ingest import manifest_hash, read_manifest

    manifest = runfolder.find_run_manifest(root, record.get("manifest"))
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
    from cacxr.pixels import ImageStore, build_store
    from cacxr.training.crossval import default_store_dir

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
    root: Path,
    record: dict[str, Any],
    fit_ids: list[str],
    calibration_ids: list[str],
    cac: dict[str, float],
    store: ImageStore,
    covariates: dict[str, tuple[float, str]] | None,
    epochs: int,
    device: torch.device,
    progress: bool,
) -> tuple[FoldResult, bool]:
    """``epochs`` epochs on ``fit_ids`` through the folds' training loop, calibrated on ``calibration_ids``.

    The model is fold number ``kfold`` of the loop (the index after the last fold): its initialisation,
    training order and augmentation come from (seed, kfold, epoch).

    Returns:
        The loop's result (record, model in eval mode) and whether cached trunk features were used.
    """
    import torch

    from cacxr.training.features import FeatureCache
    from cacxr.training.splits import Fold

    run_cfg = dataclasses.replace(cfg, epochs=epochs, patience=None)
    features = None
    if cfg.feature_cache and not cfg.augment:
        template = build_fold_model(run_cfg)
        if template.trunk_is_frozen():
            feature_dir = record.get("feature_cache_dir") or store.root / "features"
            every = [*fit_ids, *calibration_ids]
            features = FeatureCache.build(template, store, every, feature_dir, device=device, progress=progress)
        del template
    fold = Fold(index=cfg.kfold, train=tuple(fit_ids), val=tuple(calibration_ids), test=())
    directory = runfolder.model_dir(root, FINAL_FOLD)
    directory.mkdir(parents=True, exist_ok=True)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):  # the caller's global generator is left as it was
        result = train_fold(
            run_cfg, fold, cac, store, directory, device, features, progress, covariates=covariates, select=False
        )
    return result, features is not None


def _record_in_config(root: Path, record: dict[str, Any], final: dict[str, Any]) -> None:
    """config.json gains "final": how the final model's settings were chosen."""
    keys = (
        "epochs", "epochs_chosen_by", "decision_threshold", "threshold_chosen_by", "n_patients", "n_train",
        "n_calibration", "calibration_split", "date",
    )  # fmt: skip
    record["final"] = {
        **{k: final.get(k) for k in keys},
        "model": f"{FINAL_DIR}/{MODEL_FILE}",
    }
    runfolder.write_config(root, record)
