"""Experiment tracking: a finished run folder logged to MLflow or TensorBoard (``cacxr train --track``).

What is logged comes from the run folder itself, once every fold has finished, so the tracker shows
exactly the figures of the run's files:

* **MLflow** (``--track mlflow``; ``pip install 'cacxr[track]'``): the settings of config.json as
  parameters; every fold's per-epoch curves (``fold_<k>/train_loss``, ``fold_<k>/val_loss``,
  ``fold_<k>/val_metric``, ``fold_<k>/lr``, one step per epoch); every number of metrics.json as a metric
  named by its path (``pooled.auc``, ``pooled.auc_ci.0``, ``folds.1.auc``, ...); report.html, metrics.json,
  config.json and plots/ as artifacts. The store is ``MLFLOW_TRACKING_URI``, else the local ``./mlruns``
  folder; the experiment ``MLFLOW_EXPERIMENT_NAME``, else ``cacxr``; the run is named after the run folder.
* **TensorBoard** (``--track tensorboard``; ``pip install 'cacxr[tensorboard]'``): the same curves and final
  metrics as scalars, in ``RUN/tensorboard/``.

A tracking failure (package missing, server unreachable, ...) is logged as a warning; the run is not
affected. The packages are imported only when asked for.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cacxr.runs import folder as runfolder

__all__ = ["TRACKERS", "track_run", "flatten_metrics", "fold_curves"]

logger = logging.getLogger(__name__)

TRACKERS = ("mlflow", "tensorboard")
_EXPERIMENT = "cacxr"
_PARAM_MAX = 6000  # MLflow's limit on a parameter value
_BATCH = 500


def track_run(run_dir: str | os.PathLike[str], tracker: str) -> str | None:
    """Log a finished run folder to ``tracker``; never raises.

    Args:
        run_dir: a run folder with config.json and metrics.json.
        tracker: ``mlflow`` or ``tensorboard``.

    Returns:
        Where it was logged (an MLflow run id and store, or the TensorBoard folder), or None when it failed
        (a warning says why).
    """
    run_dir = Path(run_dir)
    try:
        if tracker == "mlflow":
            return _to_mlflow(run_dir)
        if tracker == "tensorboard":
            return _to_tensorboard(run_dir)
        raise ValueError(f"unknown tracker {tracker!r} (use {' or '.join(TRACKERS)})")
    except ImportError as exc:
        extra = "track" if tracker == "mlflow" else "tensorboard"
        logger.warning("--track %s: not logged, %s (pip install 'cacxr[%s]'); the run is complete", tracker, exc, extra)
    except Exception as exc:  # a tracker's failure must never stop or fail the run
        detail = " ".join(str(exc).split())[:300]
        logger.warning("--track %s: not logged (%s: %s); the run is complete", tracker, type(exc).__name__, detail)
    return None


def flatten_metrics(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a metrics.json object, named by its path (``pooled.auc_ci.0``, ``folds.1.auc``).

    Lists of per-fold records are indexed by their ``fold``; other lists by position. Booleans, strings,
    None and non-finite numbers are left out.
    """
    out: dict[str, float] = {}
    if isinstance(metrics, dict):
        items = metrics.items()
    elif isinstance(metrics, list):
        by_fold = all(isinstance(v, dict) and isinstance(v.get("fold"), int) for v in metrics) and metrics
        items = ((str(v["fold"]) if by_fold else str(i), v) for i, v in enumerate(metrics))
    else:
        if isinstance(metrics, (int, float)) and not isinstance(metrics, bool) and math.isfinite(metrics):
            out[prefix.rstrip(".")] = float(metrics)
        return out
    for key, value in items:
        out.update(flatten_metrics(value, f"{prefix}{key}."))
    return out


def fold_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{"fold_<k>/<curve>": [(epoch, value), ...]}`` from each finished fold's fold.json history."""
    curves: dict[str, list[tuple[int, float]]] = {}
    kfold = int(runfolder.read_config(run_dir).get("kfold") or 0)
    for fold in (k for k in range(kfold) if runfolder.fold_done(run_dir, k)):
        for row in runfolder.read_fold_record(run_dir, fold).get("history", []):
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    curves.setdefault(f"fold_{fold}/{key}", []).append((int(row["epoch"]), float(value)))
    return curves


def _artifacts(run_dir: Path) -> list[tuple[Path, str | None]]:
    """(file, folder inside the tracker's artifacts) of the files worth keeping beside the figures."""
    names = (runfolder.REPORT_FILE, runfolder.METRICS_FILE, runfolder.CONFIG_FILE)
    files = [(run_dir / name, None) for name in names if (run_dir / name).is_file()]
    plots = run_dir / runfolder.PLOTS_DIR
    files += [(png, runfolder.PLOTS_DIR) for png in sorted(plots.glob("*.png"))]
    return files


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set: allow it for this call only."""
    local = "://" not in uri or uri.startswith("file:")
    previous = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    if local and previous is None:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if local and previous is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def _to_mlflow(run_dir: Path) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    config = runfolder.read_config(run_dir)
    metrics = runfolder.read_metrics(run_dir)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()
    with _file_store_allowed(uri):
        client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or _EXPERIMENT
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        tags = {"cacxr.task": str(config.get("task")), "cacxr.run_folder": str(run_dir.resolve())}
        run = client.create_run(experiment_id, run_name=run_dir.resolve().name, tags=tags)
        run_id = run.info.run_id
        try:
            params = [Param(k, _param(v)) for k, v in sorted(config.items())]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                client.log_batch(run_id, params=params[i : i + 100])
            now = run.info.start_time
            points = [Metric(k, v, now, step) for k, series in fold_curves(run_dir).items() for step, v in series]
            points += [Metric(k, v, now, 0) for k, v in flatten_metrics(metrics).items()]
            for i in range(0, len(points), _BATCH):
                client.log_batch(run_id, metrics=points[i : i + _BATCH])
            client.log_batch(run_id, tags=[RunTag("cacxr.version", str(config.get("cacxr_version")))])
            for path, folder in _artifacts(run_dir):
                client.log_artifact(run_id, str(path), folder)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    logger.info("--track mlflow: run %s logged to %s (experiment %s)", run_id, uri, name)
    return f"mlflow run {run_id} in {uri}"


def _param(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= _PARAM_MAX else text[: _PARAM_MAX - 3] + "..."


def _to_tensorboard(run_dir: Path) -> str:
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    metrics = runfolder.read_metrics(run_dir)
    folder = run_dir / "tensorboard"
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for key, series in fold_curves(run_dir).items():
            for step, value in series:
                writer.add_scalar(key, value, step)
        for key, value in flatten_metrics(metrics).items():
            writer.add_scalar(f"final/{key}", value, 0)
    finally:
        writer.close()
    logger.info("--track tensorboard: curves written to %s (tensorboard --logdir %s)", folder, folder)
    return str(folder)
