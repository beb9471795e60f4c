"""Synthetic cohorts in the seed layout, with a learnable calcium signal and the archive's faults.

There is no public data set of chest radiographs with CT calcium scores, so tests, the demo and
benchmarks use these: ``make_cohort`` writes ``site.db`` and ``<patient>/rx/*.dcm`` and returns
(and writes as ``synth_truth.json``) what ``cacxr ingest`` must make of every file and label row.
"""

from __future__ import annotations

from cacxr.synth.cohort import FAULTS, CohortPlan, make_cohort, plan_cohort, summary
from cacxr.synth.truth import TRUTH_FILE, FileTruth, LabelTruth, PatientTruth, SynthTruth, read_truth

__all__ = [
    "FAULTS",
    "TRUTH_FILE",
    "CohortPlan",
    "FileTruth",
    "LabelTruth",
    "PatientTruth",
    "SynthTruth",
    "make_cohort",
    "plan_cohort",
    "read_truth",
    "summary",
]
