"""The fast GPU path: mixed precision, channels-last tensors, pinned-memory loading, ``torch.compile``.

:func:`choose_accel` turns the device and the ``--amp/--no-amp``, ``--channels-last/--no-channels-last``
and ``--compile/--no-compile`` switches (each ``None`` = automatic) into an :class:`AccelPlan`. Automatic
choices on CUDA, by the card's compute capability:

=====================  =====================================================================================
switch                 automatic choice on CUDA
=====================  =====================================================================================
mixed precision        on from capability 7.0 (tensor cores): bfloat16 from 8.0 (Ampere and later), else
                       float16 with a GradScaler (float16's range needs loss scaling; bfloat16's does not)
channels-last          on from capability 7.0 (tensor-core convolutions read NHWC without transposes)
torch.compile          on from capability 7.0 when Triton is installed and the whole network trains; off
                       when only the tail trains on cached features (compiling costs more than it saves)
pinned memory          on (host-to-GPU copies overlap with compute)
loader workers         up to 4 per process, within the machine's CPU count
=====================  =====================================================================================

On the CPU everything stays float32 and unchanged (a switch turned on there is ignored with a warning), so
CPU results do not depend on these options.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["AccelPlan", "choose_accel", "TENSOR_CORE_CAPABILITY", "BF16_CAPABILITY", "MAX_LOADER_WORKERS"]

logger = logging.getLogger(__name__)

TENSOR_CORE_CAPABILITY = (7, 0)  # Volta: float16 tensor cores, Triton's minimum
BF16_CAPABILITY = (8, 0)  # Ampere: bfloat16 tensor cores
MAX_LOADER_WORKERS = 4


@dataclass(frozen=True)
class AccelPlan:
    """How a training or inference pass uses its device.

    Attributes:
        device_type: ``cpu`` or ``cuda``.
        amp_dtype: ``bfloat16`` or ``float16`` for mixed precision (autocast), None for float32.
        grad_scaler: scale the loss (float16 only).
        channels_last: model and 4-D inputs in channels-last memory format.
        compile: wrap the trained module in ``torch.compile``.
        pin_memory: DataLoader pins host memory; copies to the device are non-blocking.
        loader_workers: DataLoader worker processes.
        reasons: why each automatic choice was made (recorded in fold.json).
    """

    device_type: str = "cpu"
    amp_dtype: str | None = None
    grad_scaler: bool = False
    channels_last: bool = False
    compile: bool = False
    pin_memory: bool = False
    loader_workers: int = 0
    reasons: tuple[str, ...] = ()

    @property
    def amp(self) -> bool:
        """True with mixed precision."""
        return self.amp_dtype is not None

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast context of the plan's precision (a no-op in float32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=getattr(torch, self.amp_dtype))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model in the plan's memory format (in place; returned for chaining)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def to_device(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A batch on ``device``: non-blocking from pinned memory, channels-last when 4-D and asked."""
        if self.channels_last and tensor.ndim == 4:
            return tensor.to(device, non_blocking=self.pin_memory, memory_format=torch.channels_last)
        return tensor.to(device, non_blocking=self.pin_memory)

    def compile_module(self, module: nn.Module) -> nn.Module:
        """``torch.compile(module)`` when the plan says so, else ``module`` itself."""
        if not self.compile:
            return module
        return torch.compile(module)  # type: ignore[return-value]

    def grad_scaler_for(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for float16 (disabled it passes ``backward``/``step`` straight through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.grad_scaler)

    def loader_kwargs(self) -> dict[str, Any]:
        """DataLoader arguments: workers and pinned memory."""
        kwargs: dict[str, Any] = {"num_workers": self.loader_workers, "pin_memory": self.pin_memory}
        if self.loader_workers:
            kwargs["persistent_workers"] = False  # loaders are rebuilt every epoch with a new order
        return kwargs

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the plan."""
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out


def choose_accel(
    device: torch.device | str,
    amp: bool | None = None,
    channels_last: bool | None = None,
    compile: bool | None = None,
    *,
    whole_model_trains: bool = True,
    capability: tuple[int, int] | None = None,
    triton_available: bool | None = None,
    cpu_count: int | None = None,
    local_world_size: int = 1,
) -> AccelPlan:
    """Choose the fast-path settings for a device (``None`` switches are chosen automatically).

    Args:
        device: where the model runs.
        amp: mixed precision (``--amp/--no-amp``); None: automatic.
        channels_last: channels-last memory format; None: automatic.
        compile: ``torch.compile``; None: automatic.
        whole_model_trains: the trained module is the whole network (False: only the tail, on cached
            features).
        capability: the CUDA card's compute capability (default: asked from the card).
        triton_available: whether Triton (torch.compile's GPU backend) is installed (default: looked up).
        cpu_count: CPUs of the machine (default: ``os.cpu_count()``).
        local_world_size: training processes on this machine (they share its CPUs for loader workers).

    Returns:
        The plan; on the CPU always float32, contiguous, not compiled, no pinning, no loader workers.
    """
    device = torch.device(device)
    if device.type != "cuda":
        asked = [name for name, value in (("--amp", amp), ("--channels-last", channels_last), ("--compile", compile)) if value]
        if asked:
            logger.warning("%s: no effect on the %s, training stays float32 and unchanged", ", ".join(asked), device.type)
        return AccelPlan(device_type=device.type, reasons=(f"{device.type}: float32, no fast-path options",))

    if capability is None:
        capability = tuple(torch.cuda.get_device_capability(device))  # type: ignore[assignment]
    if triton_available is None:
        triton_available = importlib.util.find_spec("triton") is not None
    cc = f"capability {capability[0]}.{capability[1]}"
    tensor_cores = capability >= TENSOR_CORE_CAPABILITY
    reasons: list[str] = []

    use_amp = tensor_cores if amp is None else amp
    amp_dtype = None
    if use_amp:
        amp_dtype = "bfloat16" if capability >= BF16_CAPABILITY else "float16"
    reasons.append(
        f"precision {amp_dtype or 'float32'}: "
        + ("asked" if amp is not None else f"{cc}{'' if tensor_cores else ' has no tensor cores'}")
    )

    use_channels_last = tensor_cores if channels_last is None else channels_last
    reasons.append(f"channels-last {'on' if use_channels_last else 'off'}: {'asked' if channels_last is not None else cc}")

    if compile is None:
        use_compile = tensor_cores and triton_available and whole_model_trains
        why = (
            f"{cc} is below 7.0" if not tensor_cores
            else "Triton is not installed" if not triton_available
            else "only the tail trains on cached features" if not whole_model_trains
            else cc
        )
    elif compile and not triton_available:
        logger.warning("--compile: Triton is not installed, so torch.compile cannot run on the GPU; not compiled")
        use_compile, why = False, "asked, but Triton is not installed"
    else:
        use_compile, why = compile, "asked"
    reasons.append(f"torch.compile {'on' if use_compile else 'off'}: {why}")

    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    workers = max(0, min(MAX_LOADER_WORKERS, cpus // max(local_world_size, 1) - 1))
    reasons.append(f"{workers} loader workers, pinned memory")
    return AccelPlan(
        device_type="cuda",
        amp_dtype=amp_dtype,
        grad_scaler=amp_dtype == "float16",
        channels_last=use_channels_last,
        compile=use_compile,
        pin_memory=True,
        loader_workers=workers,
        reasons=tuple(reasons),
    )
