"""The pieces of ``cacxr.training.crossval``: one fold's training loop and the run folder's files.

The public entry points are in :mod:`cacxr.training.crossval` (``train_run``, ``merge_folds``).
"""
