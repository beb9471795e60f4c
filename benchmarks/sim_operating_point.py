"""Simulation: which operating-point rule lands nearest ``sensitivity=0.90`` on new patients (issue 21, item 18).

    python benchmarks/sim_operating_point.py [--runs 400] [--out benchmarks/results/sim_operating_point]

No torch: the cross-validated training is modelled with a binormal score model, faithfully to what
``cacxr.training`` does with its folds:

* a cohort of N patients (prevalence p) is split into k stratified folds; each fold's training part
  gives a 1/5 inner validation part (``val_fraction`` 0.2: about 24 patients for N = 150, k = 5);
* a fold model at epoch e scores patient i with the raw log-odds ``d_e y_i + u_i + s eps_ie``: ``u_i`` is the
  patient's own difficulty (shared by every model, the binormal signal), ``d_e`` the epoch's separation
  (a little better or worse from epoch to epoch) and ``eps`` each model's idiosyncratic error, AR(1) across
  the K epochs (neighbouring epochs rank patients alike);
* the fold keeps the epoch of best validation AUC (model selection on 24 patients: optimistic), fits a
  Platt map (Platt's smoothed targets, as ``cacxr.model.fit_calibration``) on the same validation scores,
  and its calibrated scores are the fold's validation records and test predictions;
* the final model (``cacxr fit-final``) trains on all patients but a stratified 20 % held out for its Platt
  map, for a fixed number of epochs (no selection); the fold ensemble averages the fold models'
  calibrated probabilities.

Each rule chooses one probability threshold at the end of cross-validation, with the product's own
functions (:func:`cacxr.stats.choose_operating_threshold`), and is measured on new patients exactly
(binormal tails for single models; 20 000 simulated new patients for the ensemble). Reported per rule:
mean realised sensitivity on new patients, its SD and 5-95 % range, the share of runs below the target and
below target - 0.05, and the mean specificity (what a rule pays for its sensitivity). For the rule that
reads the out-of-fold test predictions it also checks the run's own honest estimate, the leave-one-fold-out
(nested) figure that metrics.json reports: its bias against the realised sensitivity and how often its
95 % Wilson interval covers it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm, rankdata

from cacxr.core import write_text
from cacxr.stats import choose_operating_threshold, nested_operating_figures

TARGET = 0.90
RULE = f"sensitivity={TARGET:.2f}"


@dataclass(frozen=True)
class Scenario:
    name: str
    n: int = 150
    prevalence: float = 0.5
    kfold: int = 5
    epochs: int = 20
    separation: float = 1.6  # d: the mean raw-score gap of positives over negatives
    noise: float = 0.6  # s: each model's idiosyncratic error (patient difficulty u has SD 1)
    epoch_spread: float = 0.15  # SD of d across epochs (a real but small gain from choosing epochs)
    ar: float = 0.8  # correlation of a model's errors between neighbouring epochs


SCENARIOS = [
    Scenario("unseen-cohort size: 150 patients, 5 folds (validation 24)"),
    Scenario("demo: 200 patients, 3 folds (validation 27)", n=200, kfold=3, epochs=8),
    Scenario("weaker model: 150 patients, 5 folds, more epoch noise", noise=1.0, separation=1.4),
    Scenario("larger cohort: 500 patients, 5 folds (validation 80)", n=500),
]


def platt(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) on Platt's smoothed targets by Newton's method (as cacxr.model.platt_fit)."""
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    theta = np.array([0.0, logit(t.mean())])
    design = np.column_stack([raw, np.ones_like(raw)])
    for _ in range(50):
        p = expit(design @ theta)
        grad = design.T @ (p - t)
        hess = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return max(float(theta[0]), 1e-3), float(theta[1])  # never reverse the ranking (as the product's floor)


def auc_columns(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of every column of ``scores`` (Mann-Whitney with mid-ranks)."""
    ranks = rankdata(scores, axis=0)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    return (ranks[y == 1].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def wilson_lower(hits: np.ndarray, n: int, z: float) -> np.ndarray:
    p = hits / n
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n)


def lcb_threshold(y: np.ndarray, score: np.ndarray, target: float, confidence: float = 0.95) -> float:
    """The highest cut whose one-sided Wilson lower bound of sensitivity (on these data) reaches the target."""
    pos = np.sort(score[y == 1])[::-1]
    z = norm.ppf(confidence)
    ok = np.flatnonzero(wilson_lower(np.arange(1, len(pos) + 1), len(pos), z) >= target)
    if not ok.size:  # unreachable with these few positives: everybody positive
        return float(np.nextafter(score.min(), -np.inf))
    j = int(ok[0])  # cut just below the (j+1)-th highest positive
    below = score[score < pos[j]]
    return float((pos[j] + below.max()) / 2) if below.size else float(pos[j])


def stratified_parts(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per patient, classes spread evenly (as StratifiedGroupKFold with one row per patient)."""
    part = np.empty(len(y), dtype=int)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        part[idx] = (np.arange(len(idx)) + rng.integers(k)) % k
    return part


def epoch_errors(n: int, epochs: int, ar: float, rng: np.random.Generator) -> np.ndarray:
    e = np.empty((n, epochs))
    e[:, 0] = rng.normal(size=n)
    for j in range(1, epochs):
        e[:, j] = ar * e[:, j - 1] + math.sqrt(1 - ar * ar) * rng.normal(size=n)
    return e


def one_run(sc: Scenario, rng: np.random.Generator, n_new: int) -> dict[str, dict[str, float]]:
    y = (np.arange(sc.n) < round(sc.n * sc.prevalence)).astype(int)
    u = rng.normal(size=sc.n)
    outer = stratified_parts(y, sc.kfold, rng)
    sd = math.sqrt(1 + sc.noise**2)  # SD of a single model's raw score within a class
    new_y = np.r_[np.ones(n_new // 2), np.zeros(n_new // 2)].astype(int)
    new_u = rng.normal(size=n_new)

    val_y, val_p, val_half_y, val_half_p, test_y, test_p, test_fold = [], [], [], [], [], [], []
    fold_maps, ens_sum = [], np.zeros(n_new)
    for k in range(sc.kfold):
        test = np.flatnonzero(outer == k)
        rest = np.flatnonzero(outer != k)
        inner = stratified_parts(y[rest], 5, rng)
        val = rest[inner == 0]
        d = sc.separation + sc.epoch_spread * rng.normal(size=sc.epochs)
        err = epoch_errors(sc.n, sc.epochs, sc.ar, rng)  # this model's errors on the cohort's patients
        raw = d[None, :] * y[:, None] + u[:, None] + sc.noise * err
        best = int(np.argmax(auc_columns(y[val], raw[val])))
        a, b = platt(raw[val, best], y[val])
        val_y.append(y[val])
        val_p.append(expit(a * raw[val, best] + b))
        test_y.append(y[test])
        test_p.append(expit(a * raw[test, best] + b))
        test_fold.append(np.full(len(test), k))
        fold_maps.append((a, b, d[best]))
        # split duties: epoch on one half of the validation part, map and threshold on the other half
        half = stratified_parts(y[val], 2, rng)
        sel, cal = val[half == 0], val[half == 1]
        best_h = int(np.argmax(auc_columns(y[sel], raw[sel])))
        ah, bh = platt(raw[cal, best_h], y[cal])
        val_half_y.append(y[cal])
        val_half_p.append(expit(ah * raw[cal, best_h] + bh))
        new_raw = d[best] * new_y + new_u + sc.noise * rng.normal(size=n_new)
        ens_sum += expit(a * new_raw + b)
        fold_maps[-1] += (ah, bh, d[best_h])

    # the final model: all patients, 20 % held out for its map, a fixed number of epochs (no selection)
    held = stratified_parts(y, 5, rng) == 0
    d_final = sc.separation + sc.epoch_spread * rng.normal()
    final_raw = d_final * y + u + sc.noise * rng.normal(size=sc.n)
    af, bf = platt(final_raw[held], y[held])
    final_cal_p = expit(af * final_raw[held] + bf)

    vy, vp = np.concatenate(val_y), np.concatenate(val_p)
    ty, tp, tf = np.concatenate(test_y), np.concatenate(test_p), np.concatenate(test_fold)
    hy, hp = np.concatenate(val_half_y), np.concatenate(val_half_p)
    thresholds = {
        "validation (current)": choose_operating_threshold(vy, vp, RULE),
        "validation, 95 % lower bound": lcb_threshold(vy, vp, TARGET),
        "out-of-fold test": choose_operating_threshold(ty, tp, RULE),
        "out-of-fold test, 95 % lower bound": lcb_threshold(ty, tp, TARGET),
        "split validation duties": choose_operating_threshold(hy, hp, RULE),
        "final model's own calibration patients": choose_operating_threshold(y[held], final_cal_p, RULE),
    }

    def single(a: float, b: float, d: float, t: float) -> tuple[float, float]:
        """Exact sensitivity and specificity of a model with separation d and map (a, b) at cut t."""
        cut = (logit(np.clip(t, 1e-12, 1 - 1e-12)) - b) / a
        return float(norm.sf((cut - d) / sd)), float(norm.cdf(cut / sd))

    ens = ens_sum / sc.kfold
    out: dict[str, dict[str, float]] = {}
    for name, t in thresholds.items():
        split = name.startswith("split")
        folds = [single(m[3], m[4], m[5], t) if split else single(m[0], m[1], m[2], t) for m in fold_maps]
        fin = single(af, bf, d_final, t)
        out[name] = {
            "final_sens": fin[0], "final_spec": fin[1],
            "ensemble_sens": float(np.mean(ens[new_y == 1] >= t)) if not split else math.nan,
            "ensemble_spec": float(np.mean(ens[new_y == 0] < t)) if not split else math.nan,
            "fold_sens": float(np.mean([f[0] for f in folds])), "fold_spec": float(np.mean([f[1] for f in folds])),
            "reported_test_sens": float(np.mean(tp[ty == 1] >= t)),
        }
    # the run's own estimate for the out-of-fold rule: each fold at the cut chosen on the other folds' test data
    nested = nested_operating_figures(RULE, ty, tp, tf)
    out["out-of-fold test"].update(
        nested_sens=nested["sensitivity"], nested_lo=nested["sensitivity_ci"][0], nested_hi=nested["sensitivity_ci"][1]
    )
    return out


def summarise(runs: list[dict[str, dict[str, float]]]) -> list[dict[str, object]]:
    rows = []
    for name in runs[0]:
        row: dict[str, object] = {"rule": name}
        for model in ("final", "ensemble", "fold"):
            sens = np.array([r[name][f"{model}_sens"] for r in runs])
            spec = np.array([r[name][f"{model}_spec"] for r in runs])
            if np.isnan(sens).all():
                continue
            row[model] = {
                "sensitivity_mean": float(sens.mean()), "sensitivity_sd": float(sens.std()),
                "sensitivity_p5": float(np.quantile(sens, 0.05)), "sensitivity_p95": float(np.quantile(sens, 0.95)),
                "below_target": float(np.mean(sens < TARGET)), "below_target_minus_005": float(np.mean(sens < TARGET - 0.05)),
                "specificity_mean": float(spec.mean()), "mean_abs_error": float(np.mean(np.abs(sens - TARGET))),
            }  # fmt: skip
        row["reported_test_sensitivity_mean"] = float(np.mean([r[name]["reported_test_sens"] for r in runs]))
        if "nested_sens" in runs[0][name]:
            est = np.array([r[name]["nested_sens"] for r in runs])
            lo = np.array([r[name]["nested_lo"] for r in runs])
            hi = np.array([r[name]["nested_hi"] for r in runs])
            real = np.array([r[name]["final_sens"] for r in runs])
            fold = np.array([r[name]["fold_sens"] for r in runs])
            row["nested_estimate"] = {
                "mean": float(est.mean()), "bias_vs_final": float(np.mean(est - real)),
                "ci_covers_final": float(np.mean((lo <= real) & (real <= hi))),
                "bias_vs_fold_models": float(np.mean(est - fold)),
                "ci_covers_fold_models": float(np.mean((lo <= fold) & (fold <= hi))),
            }
        rows.append(row)
    return rows


def markdown(results: dict[str, list[dict[str, object]]], runs: int) -> str:
    lines = [
        f"# Operating point `{RULE}` on new patients: {runs} simulated runs per scenario",
        "",
        "Realised sensitivity on new patients of the final model (`load_run`'s default): mean, SD, 5-95 % of runs,",
        "mean distance from 0.90, share of runs below 0.90 and below 0.85, mean specificity; then the mean sensitivity of the fold",
        "ensemble and of the single fold models on new patients, and 'reported': what metrics.json shows for",
        "the run's own test folds at that threshold (in-sample for the out-of-fold rules).",
        "",
    ]
    for scenario, rows in results.items():
        lines += [f"## {scenario}", "", "| rule | new patients: sensitivity mean (SD) [5-95 %] | mean distance | < 0.90 | < 0.85 | "
                  "specificity | ensemble | fold models | reported |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in rows:
            f, e = row["final"], row.get("ensemble")
            ens = f"{e['sensitivity_mean']:.3f}" if e else "-"
            lines.append(
                f"| {row['rule']} | {f['sensitivity_mean']:.3f} ({f['sensitivity_sd']:.3f}) "
                f"[{f['sensitivity_p5']:.2f}-{f['sensitivity_p95']:.2f}] | {f['mean_abs_error']:.3f} | {f['below_target']:.0%} | "
                f"{f['below_target_minus_005']:.0%} | {f['specificity_mean']:.3f} | {ens} | "
                f"{row['fold']['sensitivity_mean']:.3f} | {row['reported_test_sensitivity_mean']:.3f} |"
            )
        nested = next(r["nested_estimate"] for r in rows if "nested_estimate" in r)
        lines += ["", f"Out-of-fold rule, the run's own leave-one-fold-out estimate: mean {nested['mean']:.3f}, "
                  f"bias against the realised sensitivity of the final model {nested['bias_vs_final']:+.3f} "
                  f"(of the fold models {nested['bias_vs_fold_models']:+.3f}); its 95 % Wilson interval covers "
                  f"the final model's in {nested['ci_covers_final']:.0%} of runs (the fold models' in "
                  f"{nested['ci_covers_fold_models']:.0%}).", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400, help="simulated cross-validated runs per scenario")
    parser.add_argument("--new", type=int, default=20000, help="new patients scored by the ensemble per run")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sim_operating_point"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = {}
    for i, sc in enumerate(SCENARIOS):
        rng = np.random.default_rng([args.seed, i])
        results[sc.name] = summarise([one_run(sc, rng, args.new) for _ in range(args.runs)])
        print(f"{sc.name}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"target": TARGET, "runs": args.runs, "seed": args.seed,
               "scenarios": [asdict(s) for s in SCENARIOS], "results": results}  # fmt: skip
    write_text(args.out.with_suffix(".json"), json.dumps(payload, indent=1) + "\n")
    text = markdown(results, args.runs)
    write_text(args.out.with_suffix(".md"), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
