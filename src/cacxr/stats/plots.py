"""Figures of a run: ROC, confusion matrix, losses, error by Agatston band, calibration, scatter.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through
``pyplot``, so importing or calling this module changes no global matplotlib state (backend,
open figures) and works without a display. Each function writes one PNG atomically and returns
its path.

Why one module of ~410 lines: every figure cacxr draws, in one matplotlib style; each function stands alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from cacxr.core import AGATSTON_BANDS, CacxrError, agatston_band, atomic_path, cac_to_target

__all__ = [
    "roc_plot",
    "confusion_plot",
    "loss_plot",
    "error_by_band_plot",
    "calibration_plot",
    "calibration_plots",
    "scatter_plot",
    "outcome_plots",
]

DPI = 110
_POOLED_COLOUR = "black"


def roc_plot(
    curves: Sequence[tuple[str, ArrayLike, ArrayLike]],
    path: str | os.PathLike[str],
    title: str = "ROC",
    pooled: tuple | None = None,
    ci: tuple[float | None, float | None] | None = None,
) -> Path:
    """ROC curves: one thin line per fold, the pooled curve thick, AUCs in the legend.

    Args:
        curves: ``(label, y_true, score)`` per fold; a curve whose labels have one class is listed
            in the legend as "AUC n/a" and not drawn.
        path: the PNG to write.
        title: figure title.
        pooled: ``(label, y_true, score)`` or ``(y_true, score)`` of all out-of-fold predictions.
        ci: ``(lo, hi)`` of the pooled AUC (of the single curve when there is no pooled one).

    Returns:
        ``path`` as a Path.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _figure(5.6, 5.2)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUC 0.5)")
    entries: list[tuple[str, Any, Any, bool]] = [(label, y, s, False) for label, y, s in curves]
    if pooled is not None:
        label, y, s = pooled if len(pooled) == 3 else ("pooled", *pooled)
        entries.append((label, y, s, True))
    ci_owner = len(entries) - 1 if (pooled is not None or len(entries) == 1) else None
    for i, (label, y_true, score, thick) in enumerate(entries):
        y, s = np.asarray(y_true).astype(int).ravel(), np.asarray(score, dtype=float).ravel()
        if len(np.unique(y)) < 2:
            ax.plot([], [], linewidth=1, label=f"{label}: AUC n/a (one class)")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        text = f"{label}: AUC {roc_auc_score(y, s):.3f}"
        if i == ci_owner and ci is not None and None not in ci:
            text += f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"
        ax.plot(
            fpr,
            tpr,
            linewidth=3 if thick else 1.2,
            alpha=1.0 if thick else 0.75,
            color=_POOLED_COLOUR if thick else None,
            label=text,
            zorder=3 if thick else 2,
        )
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def confusion_plot(
    cm: ArrayLike, labels: Sequence[str], path: str | os.PathLike[str], title: str = "Confusion matrix"
) -> Path:
    """Confusion matrix with counts and row percentages (share of each true class) in the cells.

    Args:
        cm: square matrix, rows true class, columns predicted class.
        labels: class names, one per row.
        path: the PNG to write.
        title: figure title.

    Returns:
        ``path`` as a Path.

    Raises:
        CacxrError: ``cm`` not square or not matching ``labels``.
    """
    counts = np.asarray(cm, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(labels):
        raise CacxrError(
            f"confusion_plot: a {len(labels)}x{len(labels)} matrix is needed, got {counts.shape}"
        )
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    size = 2.2 + 0.9 * len(labels)
    fig, ax = _figure(size + 1.0, size)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(counts):
        ax.text(
            col,
            row,
            f"{int(count)}\n({100 * shares[row, col]:.0f}%)",
            ha="center",
            va="center",
            fontsize=9,
            color="white" if shares[row, col] > 0.6 else "black",
        )
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels=list(labels))
    ax.set_yticks(ticks, labels=list(labels))
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the true class")
    return _save(fig, path)


def loss_plot(
    histories: dict[int, list[dict]],
    path: str | os.PathLike[str],
    best_epochs: dict[int, int] | None = None,
) -> Path:
    """Training and validation loss per epoch, one panel per fold, the selected epoch marked.

    Args:
        histories: fold -> entries ``{"epoch", "train_loss", "val_loss", "val_metric" (optional)}``.
        path: the PNG to write.
        best_epochs: fold -> selected epoch; default: the epoch of the lowest ``val_loss``.

    Returns:
        ``path`` as a Path.

    Raises:
        CacxrError: no histories, or an entry without ``epoch``/``train_loss``/``val_loss``.
    """
    if not histories:
        raise CacxrError("loss_plot: no training history to plot")
    folds = sorted(histories)
    ncols = min(3, len(folds))
    nrows = -(-len(folds) // ncols)
    fig = _new_figure(4.2 * ncols, 3.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, fold in zip(axes.flat, folds, strict=False):
        history = histories[fold]
        try:
            epochs = [h["epoch"] for h in history]
            train = [h["train_loss"] for h in history]
            val = [h["val_loss"] for h in history]
        except KeyError as exc:
            raise CacxrError(f"loss_plot: a history entry of fold {fold} lacks {exc}") from exc
        ax.plot(epochs, train, marker=".", label="train loss")
        ax.plot(epochs, val, marker=".", label="validation loss")
        if any(h.get("val_metric") is not None for h in history):
            twin = ax.twinx()
            metric = [np.nan if h.get("val_metric") is None else h["val_metric"] for h in history]
            twin.plot(epochs, metric, color="tab:green", linestyle=":", label="validation metric")
            twin.set_ylabel("validation metric", color="tab:green")
        if best_epochs is not None and fold in best_epochs:
            best = best_epochs[fold]
        else:
            val_array = np.asarray(val, dtype=float)
            best = epochs[int(np.nanargmin(val_array))] if np.isfinite(val_array).any() else None
        if best is not None:
            ax.axvline(best, color="red", linestyle="--", linewidth=1, label=f"selected epoch {best}")
        ax.set_title(f"fold {fold}")
        ax.set(xlabel="epoch", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(folds) :]:
        ax.set_visible(False)
    fig.suptitle("Loss per epoch (epoch selected on the validation part)")
    return _save(fig, path)


def error_by_band_plot(
    cac_true: ArrayLike, score: ArrayLike, path: str | os.PathLike[str], task: str
) -> Path:
    """Distribution per true Agatston band: the score (classification) or the log-CAC error (regression).

    Args:
        cac_true: true Agatston scores.
        score: predicted probability (classification) or predicted CAC (regression).
        path: the PNG to write.
        task: ``classification`` or ``regression``.

    Returns:
        ``path`` as a Path.

    Raises:
        CacxrError: unknown task or lengths that differ.
    """
    true = np.asarray(cac_true, dtype=float).ravel()
    pred = np.asarray(score, dtype=float).ravel()
    if len(true) != len(pred):
        raise CacxrError(f"error_by_band_plot: {len(true)} true scores but {len(pred)} predictions")
    if task == "classification":
        values, ylabel, title = pred, "predicted score", "Predicted score by true Agatston band"
    elif task == "regression":
        values = np.abs(cac_to_target(pred) - cac_to_target(true))
        ylabel, title = "|error| of log CAC", "Absolute log-CAC error by true Agatston band"
    else:
        raise CacxrError(f"error_by_band_plot: unknown task {task!r}")
    bands = agatston_band(true)
    groups = [values[bands == b] for b in range(len(AGATSTON_BANDS))]
    fig, ax = _figure(6.4, 4.4)
    positions = np.arange(1, len(groups) + 1)
    ax.boxplot([g if len(g) else [np.nan] for g in groups], positions=positions, widths=0.5, showfliers=False)
    jitter = np.random.default_rng(0)  # fixed jitter: the same data give the same picture
    for pos, group in zip(positions, groups, strict=True):
        ax.scatter(pos + jitter.uniform(-0.15, 0.15, len(group)), group, s=9, alpha=0.5, zorder=3)
    ax.set_xticks(
        positions, labels=[f"{name}\n(n={len(g)})" for name, g in zip(AGATSTON_BANDS, groups, strict=True)]
    )
    ax.set(xlabel="true Agatston band", ylabel=ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def calibration_plot(
    y_true: ArrayLike, prob: ArrayLike, path: str | os.PathLike[str], n_bins: int = 10
) -> Path:
    """Reliability diagram above a histogram of the predicted probabilities; Brier score in the title.

    Args:
        y_true: 0/1 labels.
        prob: predicted probabilities in [0, 1].
        path: the PNG to write.
        n_bins: number of equal-width probability bins.

    Returns:
        ``path`` as a Path.

    Raises:
        CacxrError: probabilities outside [0, 1] or labels not 0/1.
    """
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    y = np.asarray(y_true).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if not np.isin(y, (0, 1)).all():
        raise CacxrError("calibration_plot: labels must be 0 or 1")
    if len(p) != len(y) or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise CacxrError("calibration_plot: needs one probability in [0, 1] per label")
    observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    fig = _new_figure(5.4, 6.2)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.plot(predicted, observed, marker="o", label="model")
    top.set(ylabel="observed share of positives", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"Calibration (Brier score {brier_score_loss(y, p):.3f}, n={len(y)})")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    bottom.hist(p, bins=n_bins, range=(0, 1), color="tab:blue", alpha=0.7)
    bottom.set(xlabel="predicted probability", ylabel="cases")
    return _save(fig, path)


def scatter_plot(cac_true: ArrayLike, cac_pred: ArrayLike, path: str | os.PathLike[str]) -> Path:
    """Predicted against true log CAC with the identity line; Spearman correlation in the title.

    Args:
        cac_true: true Agatston scores.
        cac_pred: predicted Agatston scores.
        path: the PNG to write.

    Returns:
        ``path`` as a Path.

    Raises:
        CacxrError: lengths that differ.
    """
    from scipy.stats import spearmanr

    true = np.asarray(cac_true, dtype=float).ravel()
    pred = np.asarray(cac_pred, dtype=float).ravel()
    if len(true) != len(pred):
        raise CacxrError(f"scatter_plot: {len(true)} true scores but {len(pred)} predictions")
    t_true, t_pred = cac_to_target(true), cac_to_target(pred)
    defined = len(true) > 1 and np.ptp(true) > 0 and np.ptp(pred) > 0
    rho = f"{spearmanr(true, pred)[0]:.3f}" if defined else "n/a"
    fig, ax = _figure(5.4, 5.2)
    low, high = float(min(t_true.min(), t_pred.min())), float(max(t_true.max(), t_pred.max()))
    ax.plot([low, high], [low, high], linestyle="--", color="grey", label="prediction = truth")
    ax.scatter(t_true, t_pred, s=12, alpha=0.6, label="patients")
    ax.set(xlabel="true log(CAC + 0.001)", ylabel="predicted log(CAC + 0.001)")
    ax.set_title(f"Predicted vs true CAC (Spearman {rho}, n={len(true)})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def _new_figure(width: float, height: float) -> Any:
    """A Figure bound to the Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure(width: float, height: float) -> tuple[Any, Any]:
    fig = _new_figure(width, height)
    return fig, fig.add_subplot()


def outcome_plots(
    folder: str | os.PathLike[str], task: str, y_true: ArrayLike, cac_true: ArrayLike, score: ArrayLike, pooled: dict
) -> list[Path]:
    """The plots of pooled predictions shared by training and evaluation.

    Score (or error) by Agatston band; classification: calibration; regression: predicted vs true log CAC and
    the Agatston-band confusion (``pooled["agatston_confusion"]``).

    Returns:
        The PNG files written into ``folder``.
    """
    from cacxr.core import AGATSTON_BANDS

    folder = Path(folder)
    written = [error_by_band_plot(cac_true, score, folder / "error_by_band.png", task)]
    if task == "classification":
        written.append(calibration_plot(y_true, score, folder / "calibration.png"))
    else:
        written.append(scatter_plot(cac_true, score, folder / "scatter.png"))
        written.append(
            confusion_plot(
                pooled["agatston_confusion"],
                list(AGATSTON_BANDS),
                folder / "agatston_confusion.png",
                title="Agatston bands: true (rows) vs predicted (columns)",
            )
        )
    return written


def calibration_plots(
    folder: str | os.PathLike[str], calibration: dict, rows: Sequence[dict], task: str
) -> list[Path]:
    """Calibration curve of each fold and the decision curve, from metrics.json's ``calibration``.

    Args:
        folder: the plots folder.
        calibration: metrics.json ``calibration`` (nothing is drawn without its ``pooled`` figures).
        rows: the out-of-fold predictions (``fold``, ``label``, ``score`` or ``probability``).
        task: ``classification`` (probability = ``score``) or ``regression`` (``probability``).

    Returns:
        The PNG files written (``calibration_folds.png``, ``decision_curve.png``).
    """
    from sklearn.calibration import calibration_curve

    if "pooled" not in calibration:
        return []
    folder = Path(folder)
    key = "score" if task == "classification" else "probability"
    fig, ax = _figure(5.6, 5.2)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for entry in calibration["folds"]:
        mine = [r for r in rows if r["fold"] == entry["fold"]]
        y = np.array([r["label"] for r in mine])
        observed, predicted = calibration_curve(y, [r[key] for r in mine], n_bins=5, strategy="quantile")
        slope = entry.get("calibration_slope")
        text = "n/a" if slope is None else f"{slope:.2f}"
        ax.plot(predicted, observed, marker="o", label=f"fold {entry['fold']} (slope {text}, Brier {entry['brier']:.3f})")
    ax.set(xlabel="predicted probability", ylabel="observed share of positives", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.set_title("Calibration per fold (quintiles of the predicted probability)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    written = [_save(fig, folder / "calibration_folds.png")]
    curve = calibration["decision_curve"]
    fig, ax = _figure(6.2, 4.6)
    t = curve["thresholds"]
    ax.plot(t, curve["model"], label="image model", color="tab:blue")
    if curve.get("baseline") is not None:
        ax.plot(t, curve["baseline"], label="age + sex baseline", color="tab:orange")
    ax.plot(t, curve["treat_all"], label="treat all", color="grey", linestyle="--")
    ax.plot(t, curve["treat_none"], label="treat none", color="black", linestyle=":")
    prevalence = max(curve["treat_all"][0], 0.0) + 0.05
    ax.set(xlabel="threshold probability", ylabel="net benefit", xlim=(0, 1), ylim=(-0.05, prevalence))
    ax.set_title("Decision curve (out-of-fold predictions)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    written.append(_save(fig, folder / "decision_curve.png"))
    return written


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)
