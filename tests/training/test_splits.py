"""Tests of cacxr.training.splits: patient-grouped, stratified k-fold splits with an inner validation part."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cacxr.core import CacxrError
from cacxr.runs.folder import FOLD_ROLES, folds_table
from cacxr.training import make_folds
from cacxr.training.splits import Fold


def _cohort(n: int, prevalence: float, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    n_pos = round(n * prevalence)
    labels = [1] * n_pos + [0] * (n - n_pos)
    rng.shuffle(labels)
    return [f"CAC_{i:03d}" for i in range(n)], labels


def _roles(fold: Fold) -> dict[str, set[str]]:
    return {role: set(getattr(fold, role)) for role in FOLD_ROLES}


@pytest.mark.parametrize(
    ("n", "prevalence", "k", "seed"),
    [
        (60, 0.5, 5, 42),
        (100, 0.3, 5, 0),
        (47, 0.25, 3, 7),
        (200, 0.1, 5, 1),
        (30, 0.5, 2, 3),
    ],
)
def test_folds_partition_patients_and_stratify(n: int, prevalence: float, k: int, seed: int) -> None:
    ids, labels = _cohort(n, prevalence, seed)
    label_of = dict(zip(ids, labels, strict=True))
    folds = make_folds(ids, labels, k=k, seed=seed)

    assert [f.index for f in folds] == list(range(k))
    for fold in folds:
        roles = _roles(fold)
        # no patient in two roles of a fold, and every patient has a role
        assert not roles["train"] & roles["val"]
        assert not roles["train"] & roles["test"]
        assert not roles["val"] & roles["test"]
        assert roles["train"] | roles["val"] | roles["test"] == set(ids)
        for role, members in roles.items():
            assert {label_of[p] for p in members} == {0, 1}, f"{role} of fold {fold.index} lacks a class"
    # each patient in exactly one test fold
    test_counts = Counter(p for f in folds for p in f.test)
    assert set(test_counts) == set(ids)
    assert set(test_counts.values()) == {1}
    # stratification: positives per test fold differ by at most one
    positives = [sum(label_of[p] for p in f.test) for f in folds]
    assert max(positives) - min(positives) <= 1, positives
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= 1, sizes


@pytest.mark.parametrize("val_fraction", [0.2, 0.25, 0.5])
def test_validation_share(val_fraction: float) -> None:
    ids, labels = _cohort(120, 0.4)
    for fold in make_folds(ids, labels, k=4, val_fraction=val_fraction):
        share = len(fold.val) / (len(fold.val) + len(fold.train))
        assert share == pytest.approx(val_fraction, abs=0.03)


def test_repeated_patient_rows_stay_together() -> None:
    rng = np.random.default_rng(5)
    patients = [f"CAC_{i:03d}" for i in range(50)]
    patient_label = {p: int(rng.random() < 0.4) for p in patients}
    rows = [p for p in patients for _ in range(int(rng.integers(1, 4)))]  # 1-3 images per patient
    labels = [patient_label[p] for p in rows]

    folds = make_folds(rows, labels, k=5, seed=3)

    for fold in folds:
        roles = _roles(fold)
        assert sum(len(m) for m in roles.values()) == len(patients)  # each patient listed once per fold
        assert roles["train"] | roles["val"] | roles["test"] == set(patients)
    table = folds_table(folds)
    assert len(table) == 5 * len(patients)
    per_fold = Counter((row["fold"], row["patient_id"]) for row in table)
    assert set(per_fold.values()) == {1}
    assert {row["role"] for row in table} == set(FOLD_ROLES)


def test_explicit_groups_keep_a_group_in_one_role() -> None:
    ids = [f"CAC_{i:03d}" for i in range(60)]
    families = [f"family_{i // 3}" for i in range(60)]  # groups of three patients
    labels = [int((i // 3) % 3 == 0) for i in range(60)]
    for fold in make_folds(ids, labels, k=4, groups=families):
        role_of = {p: role for role, members in _roles(fold).items() for p in members}
        for family in set(families):
            members = [p for p, f in zip(ids, families, strict=True) if f == family]
            assert len({role_of[p] for p in members}) == 1


def test_same_seed_same_folds_other_seed_other_folds() -> None:
    ids, labels = _cohort(80, 0.3)
    assert make_folds(ids, labels, seed=11) == make_folds(ids, labels, seed=11)
    assert make_folds(ids, labels, seed=11) != make_folds(ids, labels, seed=12)


def test_folds_table_rows() -> None:
    folds = [Fold(0, ("a", "b"), ("c",), ("d",)), Fold(1, ("c", "d"), ("a",), ("b",))]
    assert folds_table(folds) == [
        {"patient_id": "a", "fold": 0, "role": "train"},
        {"patient_id": "b", "fold": 0, "role": "train"},
        {"patient_id": "c", "fold": 0, "role": "val"},
        {"patient_id": "d", "fold": 0, "role": "test"},
        {"patient_id": "c", "fold": 1, "role": "train"},
        {"patient_id": "d", "fold": 1, "role": "train"},
        {"patient_id": "a", "fold": 1, "role": "val"},
        {"patient_id": "b", "fold": 1, "role": "test"},
    ]


@pytest.mark.parametrize(
    ("n_pos", "n_neg", "k", "expected"),
    [
        (3, 60, 5, r"3 positive and 60 negative patients, fewer positive .* \(5\).*--kfold 3"),
        (50, 1, 2, r"fewer negative patients than folds \(2\).*add negative patients"),
        (4, 40, 3, r"the val part of fold \d \(of 3\) has 0 positive and \d+ negative patients.*--kfold 2"),
        (0, 30, 3, "0 positive and 30 negative patients; both classes are needed"),
    ],
)
def test_refuses_a_fold_without_a_class(n_pos: int, n_neg: int, k: int, expected: str) -> None:
    ids = [f"CAC_{i:03d}" for i in range(n_pos + n_neg)]
    labels = [1] * n_pos + [0] * n_neg
    with pytest.raises(CacxrError, match=expected):
        make_folds(ids, labels, k=k)


@pytest.mark.parametrize(
    ("ids", "labels", "kwargs", "expected"),
    [
        (["a", "b"], [0], {}, "2 patient ids, 1 labels"),
        (["a", "b", "c", "d"], [0, 1, 2, 0], {"k": 2}, "labels must be 0 or 1"),
        (["a", "b", "c", "d"], [0, 1, 0, 1], {"k": 1}, "k must be at least 2"),
        (["a", "b", "c", "d"], [0, 1, 0, 1], {"k": 5}, "4 patients cannot be split into 5 folds"),
        (["a", "b", "c", "d"], [0, 1, 0, 1], {"k": 2, "val_fraction": 1.5}, "val_fraction"),
        (["a", "a", "b", "c"], [0, 0, 1, 1], {"k": 2, "groups": list("wxyz")}, "patient a belongs"),
        ([], [], {}, "no patients"),
    ],
)
def test_bad_inputs_are_refused_clearly(ids, labels, kwargs, expected) -> None:
    with pytest.raises(CacxrError, match=expected):
        make_folds(ids, labels, **kwargs)
