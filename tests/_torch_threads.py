"""Torch's CPU thread count for a block, given back afterwards (torch keeps it process-wide)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int | None = None) -> Iterator[None]:
    """Run the block with ``count`` torch threads (None: leave it to the block, e.g. a training run that sets
    its own); the previous count is restored on the way out."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
