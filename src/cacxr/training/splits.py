"""Patient-grouped, class-stratified k-fold splits with an inner validation part.

Each fold has three disjoint roles: ``test`` (scored once, after training), ``val`` (chooses the
epoch and the decision threshold) and ``train``. Splitting is by group (by default the patient id),
so a patient with several rows never appears in two roles of the same fold.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from cacxr.core import CacxrError

__all__ = ["Fold", "make_folds"]



@dataclass(frozen=True)
class Fold:
    """The patients of one fold, by role (each tuple lists patient ids once, in input order)."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def make_folds(
    patient_ids: Sequence[str],
    labels: Sequence[int],
    k: int = 5,
    seed: int = 42,
    val_fraction: float = 0.2,
    groups: Sequence[str] | None = None,
) -> list[Fold]:
    """Split patients into ``k`` stratified, grouped folds, each with an inner validation part.

    The outer split is ``StratifiedGroupKFold(k)``; inside each fold the training part is split
    again the same way into train and validation, taking one of ``round(1 / val_fraction)``
    inner folds as validation.

    Args:
        patient_ids: one entry per row (a patient may have several rows).
        labels: the binary class (0/1) of each row.
        k: number of outer folds (each patient is in exactly one test fold).
        seed: seed of the shuffles; the same inputs and seed give the same folds.
        val_fraction: share of each fold's training patients held out for validation (realised as
            one of ``round(1 / val_fraction)`` inner folds, so 0.2 -> 1/5 and anything above 0.4 -> 1/2).
        groups: grouping key per row (default: the patient id); rows of one group share a role.

    Returns:
        ``k`` folds, ``index`` 0..k-1.

    Raises:
        CacxrError: inputs of different lengths, non-binary labels, too few patients for ``k``,
            or a fold whose train, val or test part lacks a class (the message gives the counts).
    """
    ids = [str(p) for p in patient_ids]
    y = np.asarray(labels)
    group_keys = ids if groups is None else [str(g) for g in groups]
    if not (len(ids) == len(y) == len(group_keys)):
        raise CacxrError(
            f"make_folds: {len(ids)} patient ids, {len(y)} labels and {len(group_keys)} groups; "
            "they must have one entry per row"
        )
    if len(ids) == 0:
        raise CacxrError("make_folds: no patients to split")
    if not np.isin(y, (0, 1)).all():
        raise CacxrError(f"make_folds: labels must be 0 or 1, got values {sorted(set(y.tolist()))}")
    y = y.astype(int)
    if k < 2:
        raise CacxrError(f"make_folds: k must be at least 2, got {k}")
    if not 0.0 < val_fraction < 1.0:
        raise CacxrError(f"make_folds: val_fraction must be between 0 and 1, got {val_fraction}")
    _check_patient_in_one_group(ids, group_keys)

    group_codes = np.unique(group_keys, return_inverse=True)[1]
    n_pos, n_neg = _class_counts(group_codes, y)
    if n_pos == 0 or n_neg == 0:
        raise CacxrError(
            f"make_folds: the cohort has {n_pos} positive and {n_neg} negative patients; "
            "both classes are needed to train and evaluate a classifier"
        )
    n_groups = int(group_codes.max()) + 1
    if n_groups < k:
        raise CacxrError(f"make_folds: {n_groups} patients cannot be split into {k} folds; use fewer folds")
    rarer, n_rarer = ("positive", n_pos) if n_pos <= n_neg else ("negative", n_neg)
    if n_rarer < k:
        hint = (
            f"use fewer folds (--kfold {n_rarer}) or add {rarer} patients"
            if n_rarer >= 2
            else f"add {rarer} patients"
        )
        raise CacxrError(
            f"make_folds: the cohort has {n_pos} positive and {n_neg} negative patients, fewer {rarer} patients "
            f"than folds ({k}), so a test fold would have no {rarer} patient: {hint}"
        )

    n_inner = max(2, round(1.0 / val_fraction))
    rows = np.zeros(len(y))  # features are not used by the splitter
    outer = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds: list[Fold] = []
    for index, (train_val_rows, test_rows) in enumerate(outer.split(rows, y, group_codes)):
        inner_codes = group_codes[train_val_rows]
        if len(np.unique(inner_codes)) < n_inner:
            raise CacxrError(
                f"make_folds: fold {index} has only {len(np.unique(inner_codes))} training patients, "
                f"too few for a validation share of {val_fraction}; use fewer folds or more patients"
            )
        inner = StratifiedGroupKFold(n_splits=n_inner, shuffle=True, random_state=seed + index)
        with warnings.catch_warnings():  # sklearn's "least populated class" warning: checked below, clearer
            warnings.simplefilter("ignore", UserWarning)
            train_pos, val_pos = next(inner.split(rows[train_val_rows], y[train_val_rows], inner_codes))
        parts = {
            "train": train_val_rows[train_pos],
            "val": train_val_rows[val_pos],
            "test": test_rows,
        }
        for role, part in parts.items():
            _check_both_classes(role, index, k, group_codes[part], y[part], n_pos, n_neg)
        folds.append(Fold(index=index, **{role: _unique_ids(ids, part) for role, part in parts.items()}))
    return folds


def _check_patient_in_one_group(ids: list[str], group_keys: list[str]) -> None:
    """A patient split across groups could land in two roles; refuse it."""
    group_of: dict[str, str] = {}
    for patient_id, group in zip(ids, group_keys, strict=True):
        if group_of.setdefault(patient_id, group) != group:
            raise CacxrError(
                f"make_folds: patient {patient_id} belongs to two groups ({group_of[patient_id]!r} "
                f"and {group!r}); all rows of a patient must share one group"
            )


def _class_counts(group_codes: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """Positive and negative patients (a group is positive when any of its rows is)."""
    codes = np.unique(group_codes)
    positive = np.zeros(int(group_codes.max()) + 1, dtype=bool)
    np.logical_or.at(positive, group_codes, y.astype(bool))
    n_pos = int(positive[codes].sum())
    return n_pos, len(codes) - n_pos


def _check_both_classes(
    role: str, index: int, k: int, group_codes: np.ndarray, y: np.ndarray, total_pos: int, total_neg: int
) -> None:
    n_pos, n_neg = _class_counts(group_codes, y) if len(y) else (0, 0)
    if n_pos and n_neg:
        return
    hint = f"use fewer folds (e.g. --kfold {k - 1})" if k > 2 else "add patients of the missing class"
    raise CacxrError(
        f"make_folds: the {role} part of fold {index} (of {k}) has {n_pos} positive and {n_neg} negative "
        f"patients; the cohort has {total_pos} positive and {total_neg} negative patients, too few of one "
        f"class for {k} folds with an inner validation split: {hint}"
    )


def _unique_ids(ids: list[str], rows: np.ndarray) -> tuple[str, ...]:
    """The patient ids of ``rows``, each once, in input order."""
    return tuple(dict.fromkeys(ids[i] for i in sorted(rows.tolist())))
