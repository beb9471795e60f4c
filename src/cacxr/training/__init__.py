"""The pieces of ``cacxr.train``: one fold's training loop and the run folder's files.

The public entry points are in :mod:`cacxr.train` (``train_run``, ``merge_folds``).
"""
