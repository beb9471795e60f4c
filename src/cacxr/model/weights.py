"""Pretrained weights: a registry by name, safe file reading, and strict loading into a :class:`CACNet`.

``--weights`` takes one of:

* ``none``: random initialisation;
* a registry name (:mod:`cacxr.model.registry`, ``cacxr weights list``): ``imagenet`` (torchvision's ImageNet file
  of the chosen architecture, also ``imagenet-<arch>``), ``xrv-densenet121-all`` (torchxrayvision's chest
  X-ray DenseNet121, "densenet121-res224-all", ``xrv`` intensities) or an entry of ``$CACXR_HOME/sources.toml``.
  The verified file in the cache is used, fetched first unless ``CACXR_OFFLINE=1``; torchvision files
  already in torch's hub cache are used too (after the same verification). ``NAME=PATH`` reads a
  registry entry's weights from PATH (no checksum: the file is the user's);
* a file PATH: torchvision layout (whole model or ``features.*`` only), the original project's encoder file
  (``{"model": {encoder.*, fc1.*, fc2.*}}``), its CAC checkpoint (``{encoder.*, fc.*}``), or a cacxr model
  saved by :func:`save_model`.

Loading is strict: every encoder tensor must be present with the right shape; only the classification head
may differ (ours is new, theirs is ignored). A 3-channel stem is summed into our one channel. Files are read
as safetensors or with ``torch.load(weights_only=True)``: a pickle holding arbitrary objects is refused.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import save_file
from torch import Tensor, nn

from cacxr.core import CacxrError, atomic_path, is_safetensors, read_safetensors
from cacxr.model.networks import HEAD_HIDDEN, CACNet, build_model
from cacxr.model.registry import WEIGHT_SOURCES, XRV_FILE, XRV_NAME, WeightSource, resolve_source
from cacxr.model.weightcache import weights_path

__all__ = [
    "WeightSource",
    "WEIGHT_SOURCES",
    "LoadReport",
    "imagenet_file",
    "load_pretrained",
    "save_model",
    "load_model_file",
    "load_saved_model",
]

logger = logging.getLogger(__name__)

XRV_SAFETENSORS = "densenet121-res224-all.safetensors"
FORMAT = "cacxr.CACNet"


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        missing: model keys the file did not provide (only head keys or BatchNorm counters are tolerated).
        unexpected: file keys the model has no place for (only the file's own head is tolerated).
        loaded: model keys set from the file.
        source: the file (or package) the weights came from; ``"none"`` for random initialisation.
        notes: human-readable remarks (stem summed, head mapped or left random, ...).
        intensity: the intensity profile the weights expect, when known.
    """

    missing: list[str]
    unexpected: list[str]
    loaded: list[str]
    source: str
    notes: list[str] = field(default_factory=list)
    intensity: str | None = None

    def summary(self) -> str:
        """One line for logs and reports."""
        text = (
            f"weights {self.source}: {len(self.loaded)} tensors loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected"
        )
        return "; ".join([text, *self.notes])


# ---- reading files ---------------------------------------------------------------------------------------


def _tensor_dict(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict inside a torch.load result: the dict itself or the one under 'model'/'state_dict'."""
    if not isinstance(obj, dict):
        raise CacxrError(f"{path}: refused: holds a {type(obj).__name__}, not a dict of tensors")
    metadata: dict[str, str] = {}
    for wrapper in ("model", "state_dict"):
        if isinstance(obj.get(wrapper), dict):
            metadata = {str(k): str(v) for k, v in obj.items() if isinstance(v, (str, int, float))}
            obj = obj[wrapper]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CacxrError(f"{path}: refused: no tensors found (expected a state dict, or one under 'model')")
    return tensors, metadata


def load_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a weights file without running arbitrary code.

    Args:
        path: a safetensors file, or a PyTorch file holding a state dict (possibly under ``"model"`` or
            ``"state_dict"``), read with ``torch.load(weights_only=True)``.

    Returns:
        ``(state_dict, metadata)``: tensors on the CPU, and the safetensors metadata (or the plain scalar
        entries beside a wrapped state dict).

    Raises:
        CacxrError: missing or unreadable file, a pickle holding arbitrary objects, or no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CacxrError(f"{path}: no such weights file")
    if is_safetensors(path):
        return read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        refused = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and refused:
            raise CacxrError(
                f"{path}: refused: the file is a pickle of Python objects (it contains {refused.group(1)}), not a "
                "plain state dict; cacxr reads weights with torch.load(weights_only=True) so that a file cannot "
                "run code. Where you trust the file, re-save its state dict (torch.save(model.state_dict(), ...)) "
                "or convert it to safetensors"
            ) from None
        # an UnpicklingError without a refused object: bytes that are no pickle (torch's text is a page long)
        reason = "corrupt or not a pickle" if isinstance(exc, pickle.UnpicklingError) else repr(exc)
        raise CacxrError(f"{path}: not a readable PyTorch or safetensors weights file ({reason})") from None
    return _tensor_dict(obj, path)


def save_model(model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """Save a model's state dict as safetensors, atomically.

    Args:
        model: the model (a :class:`CACNet` adds its arch, n_outputs and n_clinical to the metadata).
        path: the file to write.
        metadata: extra string entries (fold, task, ...).

    Raises:
        TypeError: a metadata key or value that is not a string.
    """
    from cacxr import __version__

    meta = {"format": FORMAT, "cacxr_version": __version__}
    if isinstance(model, CACNet):
        meta.update(arch=model.arch, n_outputs=str(model.n_outputs), n_clinical=str(model.n_clinical))
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str, got {key!r}: {value!r}")
        meta[key] = value
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def load_saved_model(path: str | os.PathLike[str]) -> tuple[CACNet, dict[str, str]]:
    """Rebuild a :class:`CACNet` saved by :func:`save_model` (architecture from its metadata).

    Args:
        path: the safetensors file.

    Returns:
        ``(model in eval mode, metadata)``.

    Raises:
        CacxrError: not a cacxr model file, or weights that do not fit.
    """
    state, meta = load_model_file(path)
    try:
        model = build_model(meta["arch"], int(meta["n_outputs"]), int(meta["n_clinical"]))
    except (KeyError, ValueError):
        raise CacxrError(f"{path}: not a cacxr model file (no arch/n_outputs/n_clinical metadata)") from None
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CacxrError(
            f"{path}: refused: does not fit {meta['arch']} (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )
    return model.eval(), meta


# ---- key layouts -----------------------------------------------------------------------------------------

# Old torchvision DenseNet checkpoints name dense-layer modules 'norm.1' instead of 'norm1'.
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
# Heads of other models (torchvision classifiers, the original project's fc/fc1/fc2, torchxrayvision).
_FOREIGN_HEADS = ("classifier", "fc", "fc1", "fc2", "op_threshs")


def _is_foreign_head(key: str) -> bool:
    parts = key.split(".")
    return parts[0] in _FOREIGN_HEADS or (parts[0] == "encoder" and len(parts) > 1 and parts[1] in ("classifier", "fc"))


def _to_model_layout(model: CACNet, state: dict[str, Tensor], notes: list[str]) -> dict[str, Tensor]:
    """Rename a file's keys into CACNet's layout (``encoder.<torchvision key>``, ``head.*``)."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from nn.DataParallel
    state = {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        if model.arch == "densenet121" and "encoder.conv0.weight" in state:
            notes.append("encoder keys without the 'features.' level were mapped into it")
            state = {
                ("encoder.features." + k[len("encoder."):])
                if k.startswith("encoder.") and not _is_foreign_head(k)
                else k: v
                for k, v in state.items()
            }
    else:  # torchvision layout: the whole model, or features.* only
        state = {(k if _is_foreign_head(k) or k.startswith("head.") else f"encoder.{k}"): v for k, v in state.items()}
    return _map_fc_head(model, state, notes)


def _map_fc_head(model: CACNet, state: dict[str, Tensor], notes: list[str]) -> dict[str, Tensor]:
    """Map a checkpoint head ``fc.<i>`` (two Linear layers of our shapes) onto ``head.0`` / ``head.2``."""
    fc_keys = [k for k in state if k.startswith("fc.")]
    if not fc_keys or any(k.startswith("head.") for k in state):
        return state
    indices = sorted({k.split(".")[1] for k in fc_keys})
    want = [(HEAD_HIDDEN, model.n_features + model.n_clinical), (model.n_outputs, HEAD_HIDDEN)]
    got = [tuple(state[f"fc.{i}.weight"].shape) if f"fc.{i}.weight" in state else None for i in indices]
    complete = all(f"fc.{i}.weight" in state and f"fc.{i}.bias" in state for i in indices)
    if complete and len(fc_keys) == 4 and got == want:
        mapped = {k: v for k, v in state.items() if not k.startswith("fc.")}
        for i, ours in zip(indices, ("head.0", "head.2"), strict=True):
            mapped[f"{ours}.weight"] = state[f"fc.{i}.weight"]
            mapped[f"{ours}.bias"] = state[f"fc.{i}.bias"]
        notes.append(f"the checkpoint's head fc.{indices[0]}/fc.{indices[1]} was loaded as head.0/head.2")
        return mapped
    notes.append(
        f"the checkpoint's head fc.* (weights {got}) differs from this head ({want}): the head starts random"
    )
    return state


def _apply(model: CACNet, state: dict[str, Tensor], source: str, intensity: str | None) -> LoadReport:
    """Load ``state`` (any supported layout) into ``model`` strictly, or refuse naming ``source``."""
    notes: list[str] = []
    state = _to_model_layout(model, dict(state), notes)
    target = model.state_dict()
    stem = model.stem_key
    if stem in state and state[stem].ndim == 4 and state[stem].shape[1] == 3 and target[stem].shape[1] == 1:
        state[stem] = state[stem].sum(dim=1, keepdim=True)
        notes.append("the 3-channel stem was summed into one input channel")
    head_shapes = [tuple(state[k].shape) for k in sorted(state) if k.startswith("head.") and k in target]
    if any(state[k].shape != target[k].shape for k in state if k.startswith("head.") and k in target):
        # A head for another task or covariate count: the expected difference, so the head starts random.
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        notes.append(f"the file's head (shapes {head_shapes}) does not fit this head: the head starts random")
    wrong_shape = [
        f"{k} {tuple(v.shape)} (model {tuple(target[k].shape)})"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    if wrong_shape:
        raise CacxrError(
            f"{source}: refused: {len(wrong_shape)} tensors have the wrong shape for {model.arch}, "
            f"e.g. {', '.join(wrong_shape[:3])}"
        )
    loaded = [k for k in state if k in target]
    unexpected = [k for k in state if k not in target]
    missing = [k for k in target if k not in state]
    bad_missing = [k for k in missing if not k.startswith("head.") and not k.endswith("num_batches_tracked")]
    bad_unexpected = [k for k in unexpected if not _is_foreign_head(k)]
    if bad_missing or bad_unexpected:
        n_encoder = sum(1 for k in target if k.startswith("encoder.") and not k.endswith("num_batches_tracked"))
        raise CacxrError(
            f"{source}: refused: does not fit {model.arch}: {len(bad_missing)} of its {n_encoder} encoder "
            f"tensors are missing (e.g. {', '.join(bad_missing[:3]) or '-'}) and {len(bad_unexpected)} "
            f"file tensors have no place (e.g. {', '.join(bad_unexpected[:3]) or '-'})"
        )
    if any(k.startswith("head.") for k in missing):
        notes.append("the head starts at random initialisation")
    if unexpected:
        notes.append(f"{len(unexpected)} tensors of the file's own head were ignored")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    report = LoadReport(missing, unexpected, loaded, source, notes, intensity)
    logger.info(report.summary())
    return report


# ---- named sources ---------------------------------------------------------------------------------------

_IMAGENET_WEIGHTS = {
    "densenet121": "DenseNet121_Weights",
    "resnet18": "ResNet18_Weights",
    "efficientnet-b0": "EfficientNet_B0_Weights",
}


def imagenet_file(arch: str) -> Path:
    """Where torchvision keeps its ImageNet file for ``arch``: ``<torch hub dir>/checkpoints/<name>``."""
    url = getattr(torchvision.models, _IMAGENET_WEIGHTS[arch]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _xrv_candidates() -> tuple[Path, ...]:
    """Places torchxrayvision's file may already be (its own cache, torch's hub cache)."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        checkpoints / XRV_SAFETENSORS,
        checkpoints / XRV_FILE,
        Path.home() / ".torchxrayvision" / "models_data" / XRV_FILE,
    )


def _xrv_state(found: Path) -> tuple[dict[str, Tensor], str]:
    """torchxrayvision's DenseNet121 weights from a verified local file."""
    if is_safetensors(found):
        return load_model_file(found)[0], str(found)
    if importlib.util.find_spec("torchxrayvision") is None:
        raise CacxrError(
            f"{found} is torchxrayvision's pickled model: reading it needs the package "
            f"(pip install torchxrayvision), or pass {XRV_NAME}=PATH to its state dict saved as safetensors"
        )
    import torchxrayvision  # noqa: F401  (the pickle refers to its classes)

    # The release file pickles a whole model. It is unpickled only because its SHA-256 matched the
    # registry's record (cacxr.model.registry), as torchxrayvision itself would load it.
    net = torch.load(found, map_location="cpu", weights_only=False)
    return dict(net.state_dict()), f"torchxrayvision densenet121-res224-all ({found})"


def load_pretrained(model: CACNet, spec: str, progress: bool = True) -> LoadReport:
    """Load weights named by ``spec`` into ``model``, strictly.

    Args:
        model: the model to fill (its head stays random unless the file holds a head of the same shape).
        spec: ``none``, a registry name, ``NAME=PATH`` or a file path (module docstring).
        progress: show a progress bar when the weights must be downloaded first.

    Returns:
        What was loaded, missing and ignored.

    Raises:
        CacxrError: unknown name, weights not cached while offline (with how to import them), a failed
            download or verification, a file that does not fit the model (missing encoder tensors, wrong
            shapes), or a file that is not a plain state dict.
    """
    from cacxr.model.registry import all_sources

    name, sep, value = spec.partition("=")
    sources = all_sources()
    if name in sources:
        source = resolve_source(name, model.arch)
        if name == "none":
            return LoadReport([], [], [], "none", ["random initialisation"], None)
        if sep:
            state, origin = load_model_file(Path(value).expanduser())[0], value
        elif source.name == XRV_NAME:
            state, origin = _xrv_state(weights_path(source, progress, _xrv_candidates()))
        else:
            also = (imagenet_file(model.arch),) if source.name.startswith("imagenet-") else ()
            path = weights_path(source, progress, also)
            state, origin = load_model_file(path)[0], str(path)
        return _apply(model, state, origin, source.intensity)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CacxrError(f"weights '{spec}': not a registry name ({', '.join(sources)}) and no such file")
    state, metadata = load_model_file(path)
    return _apply(model, state, str(path), metadata.get("intensity"))
