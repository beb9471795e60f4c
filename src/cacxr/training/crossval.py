"""k-fold cross-validated training of a CAC classifier or regressor into a run folder.

``train_run(config)`` goes from a DICOM data folder (ingested into ``RUN/ingest/`` first) or a manifest.csv
to a finished run folder (its layout: :mod:`cacxr.runs.folder`).

The image store is cached outside the run, by default in ``RUN/../cacxr-cache/<data>-<hash>/``, so that
runs in the same folder share it; trunk features of a frozen trunk are cached in ``<store>/features``.

Jobs: ``config.fold = K`` trains one fold (several jobs may share one run folder); once every fold has
finished, the last job (or ``merge_folds``) writes the run-level files. ``config.resume`` continues an
interrupted run: finished folds are kept and an interrupted fold continues from its last epoch.

Several processes: started by ``torchrun``, every process runs ``train_run`` and the folds train with
DistributedDataParallel (:mod:`cacxr.training.distributed`); rank 0 alone writes the run folder.

Why one module of ~420 lines: a run's life (new, resumed, one fold per job, merged) is one sequence of
checks on one run folder; train_run and merge_folds share them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cacxr import __version__
from cacxr.config import TrainConfig, resolve_device
from cacxr.core import CacxrError
from cacxr.ingest import ManifestRow, labelled_rows, manifest_hash
from cacxr.pixels import ImageStore
from cacxr.runs import folder as runfolder
from cacxr.runs import writers as runfiles
from cacxr.training.distributed import DistContext, session
from cacxr.training.fold_setup import build_fold_model, model_metadata
from cacxr.training.loop import train_fold
from cacxr.training.reproducibility import current_environment, environment_differences, torch_settings
from cacxr.training.splits import make_folds

__all__ = ["train_run", "merge_folds", "default_store_dir"]

logger = logging.getLogger(__name__)



def train_run(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume) a cross-validated run and write its run folder.

    Args:
        config: the settings (``config.data`` and ``config.out`` are required).

    Returns:
        The metrics.json content once every fold has finished. A ``--fold K`` job that leaves folds to
        other jobs returns ``{"task", "complete": False, "folds_done", "folds_missing", "folds"}`` with
        the test metrics of each finished fold.

    Raises:
        CacxrError: invalid settings, a non-empty run folder without ``resume``, a run folder holding other
            settings or data, unreadable data, or folds that lack a class (cacxr.training.splits).
    """
    cfg = config.resolved()
    _check_choices(cfg)
    if not cfg.out:
        raise CacxrError("the run folder (--out RUN) is required")
    if not cfg.data:
        raise CacxrError("the data (a DICOM folder or a manifest.csv) is required")
    run_dir = Path(cfg.out)
    with session(resolve_device(cfg.device)) as dist:  # torchrun: join the other processes
        if not dist.is_main:
            cfg = dataclasses.replace(cfg, progress=False)  # one set of progress bars, rank 0's
        previous = _check_run_folder(run_dir, cfg)
        dist.barrier()  # every process has checked the folder before rank 0 writes into it
        return _train(cfg, run_dir, previous, dist)


def merge_folds(run_dir: str | Path) -> dict[str, Any]:
    """Write the run-level files once every fold has finished: metrics, predictions, plots, report.

    Args:
        run_dir: the run folder.

    Returns:
        The metrics.json content.

    Raises:
        CacxrError: not a run folder, or folds not finished yet (all of them are listed).
    """
    from cacxr.runs import add_run_figures, run_clinical_baseline, write_report
    from cacxr.stats import build_metrics, plots

    run_dir = Path(run_dir)
    record = runfolder.read_config(run_dir, required=False)
    if record is None:
        raise CacxrError(f"{run_dir}: not a cacxr run folder (no {runfolder.CONFIG_FILE})")
    cfg = TrainConfig.from_dict(record)
    missing = [k for k in range(cfg.kfold) if not runfolder.fold_done(run_dir, k)]
    if missing:
        raise CacxrError(
            f"{run_dir}: cannot merge, fold(s) {', '.join(map(str, missing))} of {cfg.kfold} have not finished "
            f"(no fold_<k>/{runfolder.FOLD_RECORD}); train them with `cacxr train DATA --out {run_dir} --fold K` "
            "(or --resume), then merge"
        )
    folds = {k: runfolder.read_fold_record(run_dir, k) for k in range(cfg.kfold)}
    rows = [row for k in range(cfg.kfold) for row in runfolder.read_fold_predictions(run_dir, k)]
    twice = sorted(pid for pid, n in Counter(row["patient_id"] for row in rows).items() if n > 1)
    if twice:
        raise CacxrError(f"{run_dir}: patients in the test part of two folds: {', '.join(twice[:5])}")
    per_fold = []
    for k, fold in folds.items():
        mine = [row for row in rows if row["fold"] == k]
        per_fold.append(
            {
                "fold": k,
                "score": [row["score"] for row in mine],
                "y_true": [row["label"] for row in mine],
                "cac_true": [row["cac_score"] for row in mine],
                "decision_threshold": fold["decision_threshold"],
                "log_cac": [row["log_cac"] for row in mine] if all("log_cac" in row for row in mine) else None,
            }
        )
    metrics = build_metrics(cfg.task, cfg.threshold, per_fold)
    if record.get("environment_differences"):  # a rerun elsewhere: the figures may differ from the original's
        metrics["environment_differences"] = list(record["environment_differences"])
    # The age + sex baseline on the same folds (skipped with a note when age/sex are mostly unknown).
    baseline_scores: dict[str, float] = {}
    metrics["clinical_baseline"] = run_clinical_baseline(run_dir, record, rows, cfg.threshold, baseline_scores)
    add_run_figures(cfg.task, cfg.operating_point, folds, rows, metrics, baseline_scores)
    thresholds = {k: float(fold["decision_threshold"]) for k, fold in folds.items()}
    runfiles.write_run_predictions(run_dir / runfolder.PREDICTIONS, cfg.task, rows, thresholds)
    if cfg.viz:
        histories = {k: fold["history"] for k, fold in folds.items()}
        best = {k: int(fold["best_epoch"]) for k, fold in folds.items()}
        runfiles.write_run_plots(run_dir / runfolder.PLOTS_DIR, cfg.task, cfg.threshold, rows, metrics, histories, best)
        plots.calibration_plots(run_dir / runfolder.PLOTS_DIR, metrics.get("calibration") or {}, rows, cfg.task)
    runfolder.write_metrics(run_dir, metrics)
    record["best_epochs"] = {str(k): int(fold["best_epoch"]) for k, fold in folds.items()}
    runfolder.write_config(run_dir, record)
    write_report(run_dir)
    return metrics


def default_store_dir(cfg: TrainConfig, run_dir: Path) -> Path:
    """Where the image store of ``cfg.data`` is kept when ``--store`` is not given.

    ``RUN/../cacxr-cache/<data name>-<hash of the data's path>/store-<profile>-<size>``: outside the run,
    so that runs in one folder share it, and never inside the user's data.
    """
    source = Path(cfg.data).resolve()
    name = source.parent.name if source.is_file() else source.name
    digest = hashlib.sha1(str(source).encode()).hexdigest()[:8]
    cache = run_dir.resolve().parent / "cacxr-cache" / f"{name or 'data'}-{digest}"
    return cache / f"store-{cfg.profile}-{cfg.image_size}"


# ---- the run ---------------------------------------------------------------------------------------------


def _train(cfg: TrainConfig, run_dir: Path, previous: dict[str, Any] | None, dist: DistContext) -> dict[str, Any]:
    from cacxr.model import save_model
    from cacxr.training.features import FeatureCache

    device = dist.local_device(resolve_device(cfg.device))
    # Weights before data: a name that cannot be fetched (offline, bad checksum) fails before the ingest and
    # preprocessing, which take hours on a real cohort. Rank 0 fetches; the others then read its cache.
    with dist.main_first():
        template = build_fold_model(cfg)  # every fold starts from these weights
    with dist.main_first():  # ingest and image store: rank 0 builds them, then the others reuse them
        data = _prepare_data(cfg, run_dir, previous)
    folds = make_folds(data.ids, data.labels, cfg.kfold, cfg.seed, cfg.val_fraction)
    use_cache = cfg.feature_cache and not cfg.augment and template.trunk_is_frozen()
    feature_dir = Path(cfg.feature_cache_dir) if cfg.feature_cache_dir else data.store.root / "features"
    cfg = _resolve_threads(cfg, run_dir, previous)
    with torch_settings(cfg.num_threads, device):
        reproducibility = _reproducibility(cfg, previous, current_environment(device, dist.world_size))
        if dist.is_main:
            record = _config_record(cfg, run_dir, data, feature_dir, use_cache)
            runfolder.write_config(run_dir, {**record, **reproducibility})
            runfolder.write_folds_csv(run_dir, folds)
        chosen = [cfg.fold] if cfg.fold is not None else list(range(cfg.kfold))
        pending = dist.broadcast([k for k in chosen if not runfolder.fold_done(run_dir, k)])
        for k in sorted(set(chosen) - set(pending)):
            logger.info("fold %d already finished; kept", k)
        features = None
        if pending and use_cache:
            needed = sorted({pid for k in pending for pid in (*folds[k].train, *folds[k].val, *folds[k].test)})
            with dist.main_first():  # rank 0 computes the maps, the others then find them all cached
                features = FeatureCache.build(
                    template, data.store, needed, feature_dir, device=device, progress=cfg.progress
                )
        del template
        for k in pending:
            directory = runfolder.fold_dir(run_dir, k)
            directory.mkdir(parents=True, exist_ok=True)
            result = train_fold(
                cfg, folds[k], data.cac, data.store, directory, device, features, cfg.progress, dist,
                covariates=data.covariates,
            )
            if dist.is_main:
                if cfg.save:
                    save_model(result.model, directory / runfolder.MODEL_FILE, model_metadata(cfg, result.record))
                runfiles.write_fold_files(
                    directory, cfg.task, result.record, result.test_ids, result.test_scores, data.cac,
                    cfg.threshold, cfg.viz, result.test_extra,
                )  # fmt: skip
                (directory / runfolder.CHECKPOINT).unlink(missing_ok=True)  # the fold is finished: fold.json says so
            dist.barrier()  # the fold's files are written before any process reads them
            logger.info(
                "fold %d: best epoch %d of %d, test %s", k, result.record["best_epoch"],
                result.record["epochs_run"], _summary(result.record["test_metrics"]),
            )  # fmt: skip

    done = [k for k in range(cfg.kfold) if runfolder.fold_done(run_dir, k)]
    if len(done) == cfg.kfold:
        return dist.broadcast(merge_folds(run_dir) if dist.is_main else None)
    return {
        "task": cfg.task,
        "complete": False,
        "folds_done": done,
        "folds_missing": [k for k in range(cfg.kfold) if k not in done],
        "folds": [{"fold": k, **runfolder.read_fold_record(run_dir, k)["test_metrics"]} for k in done],
    }


@dataclass
class _Data:
    """The patients a run trains on, with the manifest and the image store they come from."""

    manifest: Path
    sha256: str
    store: ImageStore
    cac: dict[str, float]  # patient id -> true CAC, for every usable patient
    n_not_stored: int
    threshold: float
    covariates: dict[str, tuple[float, str]] = dataclasses.field(default_factory=dict)  # id -> (age, sex)

    @property
    def ids(self) -> list[str]:
        return list(self.cac)

    @property
    def labels(self) -> list[int]:
        return [int(c > self.threshold) for c in self.cac.values()]


def _refuse_writes_under_data(cfg: TrainConfig, rows: list[ManifestRow], store_dir: Path) -> None:
    """Nothing is ever written under the data, whatever --store or --feature-cache-dir say."""
    from cacxr.core import data_roots, refuse_inside

    roots = data_roots((row.path, row.patient_id) for row in rows)
    if Path(cfg.data).is_dir():
        roots.add(Path(cfg.data).resolve())
    refuse_inside(store_dir, roots, "the image store (--store)")
    if cfg.feature_cache_dir:
        refuse_inside(cfg.feature_cache_dir, roots, "the feature cache (--feature-cache-dir)")


def _prepare_data(cfg: TrainConfig, run_dir: Path, previous: dict[str, Any] | None) -> _Data:
    """Ingest (for a data folder), check the data is the run's, build or open the store."""
    from cacxr.pixels import build_store

    manifest = _manifest(cfg, run_dir)
    sha = manifest_hash(manifest)
    if previous is not None and previous.get("manifest_sha256") != sha:
        raise CacxrError(
            f"{run_dir}: the data changed since this run started (the manifest's sha256 differs from the "
            f"one in {runfolder.CONFIG_FILE}); train into another --out"
        )
    if cfg.manifest_sha256 and cfg.manifest_sha256 != sha:
        raise CacxrError(
            f"{manifest}: not the data of the run this configuration comes from (manifest sha256 {sha[:12]}..., "
            f"the configuration's manifest_sha256 {cfg.manifest_sha256[:12]}...); to train these settings on "
            "other data, remove manifest_sha256 from the configuration"
        )
    rows = _labelled_rows(manifest, cfg.site)
    store_dir = Path(cfg.store) if cfg.store else default_store_dir(cfg, run_dir)
    _refuse_writes_under_data(cfg, rows, store_dir)
    store = build_store(rows, store_dir, cfg.profile, cfg.image_size, cfg.workers, cfg.progress)
    usable = [row for row in rows if row.patient_id in store]
    if len(usable) < len(rows):
        logger.warning("%d of %d patients have no stored image and are left out", len(rows) - len(usable), len(rows))
    if not usable:
        raise CacxrError(f"{manifest}: no image could be preprocessed (see the warnings above)")
    cac = {row.patient_id: float(row.cac_score) for row in usable}
    covariates = {row.patient_id: (float(row.age), row.sex) for row in usable}
    return _Data(manifest, sha, store, cac, len(rows) - len(usable), cfg.threshold, covariates)


def _config_record(cfg: TrainConfig, run_dir: Path, data: _Data, feature_dir: Path, use_cache: bool) -> dict:
    """config.json: the settings (paths made absolute), versions, the data's identity and size."""
    return {
        **cfg.to_dict(settings_only=True),
        "data": str(Path(cfg.data).resolve()),
        "out": str(run_dir.resolve()),
        "store": str(data.store.root.resolve()),
        "feature_cache_dir": str(feature_dir.resolve()),
        "cacxr_version": __version__,
        "torch_version": torch.__version__,
        "manifest": str(data.manifest.resolve()),
        "manifest_sha256": data.sha256,
        "store_profile": data.store.profile,
        "store_profile_version": data.store.profile_version,
        "store_image_size": data.store.image_size,
        "n_patients": len(data.cac),
        "n_positive": int(sum(data.labels)),
        "n_not_stored": data.n_not_stored,
        "feature_cache_used": use_cache,
    }


def _resolve_threads(cfg: TrainConfig, run_dir: Path, previous: dict[str, Any] | None) -> TrainConfig:
    """``cfg`` with the CPU thread count this job trains on: ``--num-threads``, else the count its run
    recorded (a resumed run, a sibling ``--fold K`` job), else torch's default."""
    recorded = (previous or {}).get("num_threads")
    threads = int(cfg.num_threads or recorded or torch.get_num_threads())
    if recorded and threads != recorded:
        logger.warning(
            "%s: this job trains on %d CPU threads, the run's %s records %d: the folds it trains may not "
            "rerun to the same figures from it", run_dir, threads, runfolder.CONFIG_FILE, recorded,
        )  # fmt: skip
    return dataclasses.replace(cfg, num_threads=threads)


def _reproducibility(cfg: TrainConfig, previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """config.json's ``num_threads``, ``environment`` and ``environment_differences`` (when any).

    The environment is compared with the one the run recorded (resumed, or a sibling job) or, for a rerun
    from a run's config.json, with the one that run recorded; each difference is warned about once.
    A resumed run keeps the thread count and environment its first job recorded.
    """
    previous = previous or {}
    expected = previous.get("environment") or cfg.environment
    differences = environment_differences(expected, current) if expected else []
    for line in differences:
        logger.warning("environment: %s", line)
    kept = [line for line in previous.get("environment_differences", []) if line not in differences]
    record: dict[str, Any] = {
        "num_threads": previous.get("num_threads") or cfg.num_threads,
        "environment": previous.get("environment") or current,
    }
    if kept or differences:
        record["environment_differences"] = kept + differences
    return record


def _check_choices(cfg: TrainConfig) -> None:
    """Options whose valid values live in other modules."""
    from cacxr.model import ARCHS
    from cacxr.pixels import PROFILES

    if cfg.arch not in ARCHS:
        raise CacxrError(f"--arch must be one of {', '.join(ARCHS)} (got {cfg.arch!r})")
    if cfg.profile not in PROFILES:
        raise CacxrError(f"--profile must be one of {', '.join(PROFILES)} (got {cfg.profile!r})")


def _written_by_a_starting_job(entry: Path) -> bool:
    """An atomic write in progress, the run's ingest folder or a fold folder: what a fold job writes first."""
    return entry.name.endswith(".tmp") or entry.name == runfolder.INGEST_DIR or entry.name.startswith("fold_")


def _check_run_folder(run_dir: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """Refuse a run folder that cannot take this job; return its recorded config when it has one.

    An empty or new folder always can. A folder holding a run can with ``resume`` and the same settings,
    or for a ``fold`` job whose fold has not started there (jobs of one run share its folder).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise CacxrError(f"{run_dir}: exists and is not a folder; choose a folder for --out")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    record = runfolder.read_config(run_dir, required=False)
    if record is None and cfg.fold is not None and all(map(_written_by_a_starting_job, run_dir.iterdir())):
        return None  # a sibling fold job started at the same moment and has not written config.json yet
    if record is None:
        raise CacxrError(f"{run_dir}: not empty and not a cacxr run (no {runfolder.CONFIG_FILE}); choose a new --out")
    sibling_job = cfg.fold is not None and not runfolder.fold_dir(run_dir, cfg.fold).exists()
    if not (cfg.resume or sibling_job):
        state = "a finished run" if (run_dir / runfolder.METRICS_FILE).is_file() else "an unfinished run"
        raise CacxrError(
            f"{run_dir}: not empty (it holds {state}); add --resume to continue it, or choose another --out"
        )
    recorded = TrainConfig.from_dict(record)
    changed = cfg.differences(recorded)
    if changed:
        details = ", ".join(f"{n}: {getattr(recorded, n)!r} there, {getattr(cfg, n)!r} now" for n in changed)
        raise CacxrError(f"{run_dir}: holds a run with other settings ({details}); choose another --out")
    return record


def _manifest(cfg: TrainConfig, run_dir: Path) -> Path:
    """The manifest to train on: ``cfg.data`` itself, or RUN/ingest/manifest.csv of a data folder."""
    from cacxr.ingest import ingest

    data = Path(cfg.data)
    if data.is_file():
        return data
    if not data.is_dir():
        raise CacxrError(f"{data}: no such data folder or manifest file")
    out = run_dir / runfolder.INGEST_DIR
    manifest = out / "manifest.csv"
    if not (manifest.is_file() and (out / "ingest.json").is_file()):  # a job of this run may have done it
        ingest(data, out, site=cfg.site, workers=cfg.workers, progress=cfg.progress, overwrite=True)
    return manifest


def _labelled_rows(manifest: Path, site: str) -> list[ManifestRow]:
    """The manifest's rows of ``site`` that have a CAC score (``manifest.labelled_rows``)."""
    rows, unlabelled = labelled_rows(manifest, site, "trained")
    if unlabelled:
        logger.warning("%s: %d patients without a CAC score are left out", manifest, unlabelled)
    return rows


def _summary(metrics: dict[str, Any]) -> str:
    keys = ("auc", "balanced_accuracy", "mae_log")
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), float))
