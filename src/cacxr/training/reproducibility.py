"""What changes a run's figures besides its settings, data and seed: recorded in config.json, checked on a rerun.

Measured: the same run on 1 and on 2 CPU threads gives other scores (OpenMP splits the sums differently),
enough to move the demo's pooled AUC from 0.951 to 0.969 (0.974 to 0.964 in an earlier release). So a run
records:

- ``num_threads`` in config.json, resolved (the count it trained on, never ``None``): being a setting,
  ``cacxr train --config RUN/config.json`` reuses it; ``--num-threads`` given on the command line wins
  (precedence: flag > config file > torch's default). A resumed run or a sibling ``--fold K`` job without
  ``--num-threads`` takes the count its run recorded.
- ``environment`` in config.json: the deterministic-algorithm settings (cacxr sets them itself while
  training, :func:`torch_settings`, so a rerun on the same kind of device reuses them), the device and the
  versions of python, cacxr, torch, torchvision, numpy and scikit-learn. None of these can be reused by
  cacxr; a rerun compares them with its own (:func:`environment_differences`), warns once per difference,
  and records the lines (config.json and metrics.json ``environment_differences``; the summary prints them).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import torch

from cacxr import __version__

__all__ = ["torch_settings", "current_environment", "environment_differences", "VERSIONED_PACKAGES"]

# Distributions whose version changes the numbers (kernels, initialisation, metrics); cacxr's own is added.
VERSIONED_PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn")

DIFFERENCE_NOTE = (
    "the figures may differ from the recorded run's (other kernels; another CPU thread count alone moved the "
    "demo's pooled AUC by up to 0.02)"
)


@contextmanager
def torch_settings(num_threads: int | None, device: torch.device) -> Iterator[None]:
    """Thread count and deterministic kernels while a run trains, restored afterwards.

    On the CPU every kernel used here has a deterministic version, so asking for them costs nothing and
    the same seed and thread count give the same numbers. On CUDA only cuDNN's deterministic convolutions
    are asked for (some backward kernels, e.g. adaptive pooling, have no deterministic version): GPU runs
    may differ in the last digits.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if num_threads:
        torch.set_num_threads(int(num_threads))
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def current_environment(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    """What besides the settings decides this process's numbers (call it inside :func:`torch_settings`).

    Returns:
        ``{"device", "processes", "deterministic_algorithms", "cudnn_deterministic", "cudnn_benchmark",
        "versions": {"python", "cacxr", "torch", ...}}`` (a package not installed: ``None``).
    """
    name = device.type
    if device.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(device)})"
    versions: dict[str, str | None] = {"python": platform.python_version(), "cacxr": __version__}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["torch"] = torch.__version__  # the imported one (a build suffix such as +cu130 included)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic and torch.is_deterministic_algorithms_warn_only_enabled():
        deterministic = "warn_only"
    return {
        "device": name,
        "processes": int(world_size),
        "deterministic_algorithms": deterministic,
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "versions": versions,
    }


def environment_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One sentence per recorded fact of the environment that differs here (keys the record lacks are skipped).

    Args:
        recorded: a run's config.json ``environment``.
        current: :func:`current_environment` of the rerun.
    """
    lines = []
    for key, value in recorded.items():
        if key == "versions" and isinstance(value, dict):
            here = current.get("versions") or {}
            for package, version in value.items():
                if package in here and version != here[package]:
                    lines.append(f"{package} {version} recorded, {here[package]} here: {DIFFERENCE_NOTE}")
        elif key in current and value != current[key]:
            lines.append(f"{key.replace('_', ' ')} {value} recorded, {current[key]} here: {DIFFERENCE_NOTE}")
    return lines
