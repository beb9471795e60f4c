"""Frozen-trunk feature cache: the trunk runs once per image, and every fold and epoch trains only the tail.

When a :class:`~cacxr.model.networks.CACNet`'s trunk is frozen and no augmentation is asked, its output for an image
never changes, so it is computed once and stored on disk in float16::

    CACHE_DIR/<key>/meta.json          key, arch, profile, image size, feature shape, cacxr feature version
    CACHE_DIR/<key>/images.json        patient id -> digest of the stored image each map was computed from
    CACHE_DIR/<key>/<patient>.npy      one (C, H, W) float16 map per image, memory-mapped on read
    CACHE_DIR/<key>/trunk.onnx         the frozen trunk exported for ONNX Runtime (when that engine ran)

The key (:func:`trunk_key`) hashes everything the maps depend on (arch, trunk weights and BatchNorm
statistics, store profile and its version, image size, :data:`FEATURE_VERSION`), so caches of different
trunks never mix and all folds and runs on one store share one cache. Each map is written atomically and
recorded in ``images.json`` after it: an interrupted build leaves only complete files, and the next build
computes just the missing ones, plus those whose stored image has changed since.

The trunk pass (``engine``). On the CPU, a build with enough work (:data:`ONNX_MIN_PIXELS`) runs the trunk
through ONNX Runtime in fp32 when ``onnxruntime`` is installed (the ``[export]`` extra): the trunk is exported
once per cache key into the cache folder (``trunk.onnx``, seconds) and reused by later builds. Without
onnxruntime (or when the export fails) it runs eager in channels_last memory format. Small builds, and any
other device, run the plain fp32 eager trunk. Every engine's maps are within :data:`TRUNK_TOLERANCE` of the
fp32 eager trunk (measured: ONNX Runtime 1.7e-6, channels_last 5.5e-6 absolute on a DenseNet-121 trunk whose
features reach 3.5, i.e. 5e-7 / 1.6e-6 relative; the float16 cache itself rounds by up to 4.9e-4 relative),
so maps of different engines may share a cache. bfloat16 is not used: its error (8e-3 relative) is beyond it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cacxr.core import CacxrError, atomic_path, missing_dependency, write_json
from cacxr.model import CACNet
from cacxr.pixels import get_profile, normalise

__all__ = [
    "ENGINES", "FEATURE_VERSION", "ONNX_MIN_PIXELS", "TRUNK_TOLERANCE", "FeatureCache", "resolve_engine", "trunk_key",
]

logger = logging.getLogger(__name__)

# Bump when the way maps are computed or stored changes: old caches then stop matching.
FEATURE_VERSION = "1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
# Largest |map - fp32 eager map| allowed of any engine, as a fraction of the largest |fp32 eager value|.
TRUNK_TOLERANCE = 1e-4
# "auto": ONNX Runtime (else channels_last) on the CPU for at least this many input pixels to compute (8
# images at 512 px); below it the one-off export (4-6 s for DenseNet-121) costs more than it saves.
ONNX_MIN_PIXELS = 1 << 21
ENGINES = ("auto", "onnx", "channels_last", "eager")
ONNX_FILE = "trunk.onnx"


def _profile_id(store: Any) -> str:
    """The store's profile as ``name@vN``: images made by another recipe version give other features."""
    spec = get_profile(store.profile)
    version = getattr(store, "profile_version", spec.version)  # the version the store was built with
    return f"{spec.name}@v{version}"


def _image_digest(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=12).hexdigest()


def trunk_key(model: CACNet, store: Any) -> str:
    """Identify the trunk outputs of ``model`` on ``store``'s images.

    Args:
        model: the model whose :meth:`~cacxr.model.networks.CACNet.trunk_features` are cached.
        store: an image store (``profile``, ``image_size`` and, when it has one, ``profile_version``).

    Returns:
        A 20-character hex digest of the arch, the trunk's weights and buffers, the store's profile and
        image size, and :data:`FEATURE_VERSION`.
    """
    digest = hashlib.sha256()
    header = [FEATURE_VERSION, model.arch, _profile_id(store), str(int(store.image_size))]
    digest.update("\0".join(header).encode())
    for name, tensor in sorted(model.trunk_state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())  # raw bytes: any dtype, bfloat16 included
    return digest.hexdigest()[:20]


# Refuse a batch when more than this share of its non-zero trunk outputs would be stored as 0 in float16.
UNDERFLOW_SHARE = 0.01


def _to_float16(maps: np.ndarray, folder: Path, batch: Sequence[str]) -> np.ndarray:
    """The maps in float16, or an error when they overflow or underflow it (cached zeros would be silent)."""
    half = maps.astype(np.float16)
    if not np.isfinite(half).all():
        raise CacxrError(f"{folder}: trunk features of {list(batch)} do not fit in float16 (too large)")
    nonzero = maps != 0
    flushed = nonzero & (half == 0)
    if nonzero.any() and flushed.sum() > UNDERFLOW_SHARE * nonzero.sum():
        raise CacxrError(
            f"{folder}: trunk features of {list(batch)} underflow float16: {flushed.sum() / nonzero.sum():.0%} of "
            f"the non-zero values (largest magnitude {np.abs(maps).max():.2e}) would be cached as 0; the trunk's "
            "outputs are too small for the float16 cache, so train without it (--no-feature-cache)"
        )
    return half


class _TrunkModule(torch.nn.Module):
    """``model.trunk_features`` as a module's forward (what ONNX export traces)."""

    def __init__(self, model: CACNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.trunk_features(x)


def resolve_engine(engine: str, device: torch.device, pixels: int) -> str:
    """The engine ``auto`` stands for on ``device`` for a pass over ``pixels`` input pixels (others as given).

    Raises:
        CacxrError: an engine not in :data:`ENGINES`.
    """
    if engine not in ENGINES:
        raise CacxrError(f"unknown trunk engine {engine!r} (choose one of: {', '.join(ENGINES)})")
    if engine != "auto":
        return engine
    if device.type != "cpu" or pixels < ONNX_MIN_PIXELS:
        return "eager"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "channels_last"
    return "onnx"


def _trunk_runner(
    model: CACNet, folder: Path, engine: str, device: torch.device, pixels: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function computing trunk maps for ``engine`` (see the module docstring); ``model`` is in eval mode."""
    engine = resolve_engine(engine, device, pixels)
    if engine == "onnx":
        if device.type != "cpu":
            raise CacxrError(f"{folder}: the onnx trunk engine runs on the CPU, not {device}")
        try:
            return _onnx_runner(model, folder)
        except ImportError:
            raise missing_dependency("onnxruntime", "export") from None
        except Exception as exc:  # noqa: BLE001 - an export the exporter cannot do: the eager trunk still can
            logger.warning("%s: ONNX export of the trunk failed (%s); using the eager trunk", folder, exc)
            engine = "channels_last"
    if engine == "channels_last":
        model.to(memory_format=torch.channels_last)

        def channels_last(x: torch.Tensor) -> torch.Tensor:
            return model.trunk_features(x.contiguous(memory_format=torch.channels_last)).contiguous()

        return channels_last
    return model.trunk_features


def _onnx_runner(model: CACNet, folder: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Runtime (CPU, fp32) on the trunk exported to ``folder/trunk.onnx`` (exported once per cache key)."""
    import onnxruntime as ort

    path = folder / ONNX_FILE
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        side = 64
        example = torch.zeros((1, 1, side, side), dtype=torch.float32, device=next(model.parameters()).device)
        with warnings.catch_warnings(), atomic_path(path) as tmp:
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(
                _TrunkModule(model).eval(), (example,), str(tmp), input_names=["x"], output_names=["maps"],
                dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "maps": {0: "n", 2: "mh", 3: "mw"}},
                opset_version=17, dynamo=False,
            )  # fmt: skip
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(session.run(None, {"x": array})[0])

    return run


def _file_name(patient_id: str) -> str:
    """A file name for a patient id: the id itself when safe, else a hash of it."""
    if _SAFE_NAME.match(patient_id):
        return f"{patient_id}.npy"
    return f"id-{hashlib.sha256(patient_id.encode()).hexdigest()[:24]}.npy"


class FeatureCache:
    """Float16 trunk maps of one trunk on one store, one memory-mapped ``.npy`` file per image.

    Args:
        cache_dir: the cache root (shared by runs); the maps live in ``cache_dir/<key>``.
        key: the :func:`trunk_key` of the trunk and store.

    Raises:
        CacxrError: the folder holds no cache of that key.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], key: str) -> None:
        self.key = key
        self.dir = Path(cache_dir) / key
        meta_path = self.dir / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            raise CacxrError(f"{meta_path}: no feature cache here (build it with FeatureCache.build)") from None
        if meta.get("key") != key or meta.get("version") != FEATURE_VERSION:
            raise CacxrError(f"{meta_path}: the cache there has key {meta.get('key')}, not {key}")
        self.meta: dict[str, Any] = meta
        self.shape: tuple[int, ...] = tuple(meta["shape"])  # one image's map: (C, H, W)

    def path(self, patient_id: str) -> Path:
        """The file holding ``patient_id``'s map."""
        return self.dir / _file_name(patient_id)

    def has(self, patient_id: str) -> bool:
        """True when a complete map of the right shape is stored for ``patient_id``."""
        path = self.path(patient_id)
        if not path.is_file():
            return False
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return False
        return array.shape == self.shape and array.dtype == np.float16

    def get(self, ids: Sequence[str]) -> torch.Tensor:
        """The maps of ``ids`` as one float32 tensor (N, C, H, W) (stored as float16).

        Raises:
            CacxrError: an id that is not in the cache.
        """
        arrays = []
        for patient_id in ids:
            try:
                arrays.append(np.load(self.path(patient_id), mmap_mode="r"))
            except (OSError, ValueError):
                raise CacxrError(f"{self.dir}: no cached features for patient {patient_id}") from None
        if not arrays:
            return torch.empty((0, *self.shape), dtype=torch.float32)
        return torch.from_numpy(np.stack(arrays).astype(np.float32))

    @classmethod
    def build(
        cls,
        model: CACNet,
        store: Any,
        ids: Sequence[str],
        cache_dir: str | os.PathLike[str],
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        progress: bool = True,
        engine: str = "auto",
    ) -> FeatureCache:
        """Compute the trunk maps of the ``ids`` not cached yet, and open the cache.

        The trunk runs in eval mode without gradients; the model's training mode is restored afterwards.
        The model is moved to ``device``.

        Args:
            model: the model (its trunk is what is cached; it should be frozen for the cache to be used).
            store: the image store (``get(id) -> uint8 (S, S)``, ``profile``, ``image_size``).
            ids: patient ids to have in the cache.
            cache_dir: the cache root.
            batch_size: images per trunk pass.
            device: where the trunk runs.
            progress: show a progress bar.
            engine: how the trunk runs (module docstring): ``auto`` (default), ``onnx`` (ONNX Runtime fp32,
                CPU), ``channels_last`` (eager fp32, channels_last) or ``eager`` (plain fp32, the reference).

        Returns:
            The cache, holding every id of ``ids``.

        Raises:
            CacxrError: an image the store cannot give, or a cache folder that cannot be written.
        """
        key = trunk_key(model, store)
        folder = Path(cache_dir) / key
        meta_path = folder / "meta.json"
        meta = {
            "key": key,
            "version": FEATURE_VERSION,
            "arch": model.arch,
            "profile": _profile_id(store),
            "image_size": int(store.image_size),
        }
        if not ids:
            raise CacxrError(f"{folder}: no patient ids to cache")
        cache = cls._open_matching(cache_dir, key, meta)
        recorded = cache._read_index() if cache is not None else {}
        digests = {i: _image_digest(np.asarray(store.get(i))) for i in dict.fromkeys(ids)}
        todo = [i for i, d in digests.items() if cache is None or recorded.get(i) != d or not cache.has(i)]
        if cache is not None and not todo:
            logger.info("feature cache %s: all %d maps present", key, len(ids))
            return cache
        logger.info("feature cache %s: computing %d of %d maps", key, len(todo), len(ids))
        was_training = model.training
        model.to(device).eval()
        size = int(store.image_size)
        trunk = _trunk_runner(model, folder, engine, torch.device(device), len(todo) * size * size)
        try:
            bar = tqdm(total=len(todo), desc="trunk features", unit="img", disable=not progress)
            with torch.inference_mode(), bar:
                for start in range(0, len(todo), batch_size):
                    batch = todo[start : start + batch_size]
                    images = np.stack([np.asarray(store.get(i)) for i in batch])
                    x = torch.as_tensor(normalise(images, store.profile), dtype=torch.float32)
                    if x.ndim == 3:
                        x = x.unsqueeze(1)
                    maps = _to_float16(trunk(x.to(device)).to("cpu", torch.float32).numpy(), folder, batch)
                    if cache is None:  # the first batch fixes the shape
                        write_json(meta_path, {**meta, "shape": list(maps.shape[1:])})
                        cache = cls(cache_dir, key)
                    for patient_id, array in zip(batch, maps, strict=True):
                        with atomic_path(cache.path(patient_id)) as tmp, tmp.open("wb") as fh:
                            np.save(fh, array)
                        recorded[patient_id] = digests[patient_id]
                    write_json(cache.dir / "images.json", recorded)  # after the maps: never ahead of them
                    bar.update(len(batch))
        finally:
            model.train(was_training)
            model.to(memory_format=torch.contiguous_format)  # the channels_last engine converted it
        return cache

    @classmethod
    def _open_matching(cls, cache_dir: str | os.PathLike[str], key: str, meta: dict[str, Any]) -> FeatureCache | None:
        """The existing cache of ``key``, or None when absent or written for something else (then rebuilt)."""
        try:
            cache = cls(cache_dir, key)
        except CacxrError:
            return None
        if any(cache.meta.get(k) != v for k, v in meta.items()):
            logger.warning("feature cache %s: its meta.json does not match; rebuilding", cache.dir)
            return None
        return cache

    def _read_index(self) -> dict[str, str]:
        try:
            index = json.loads((self.dir / "images.json").read_text())
        except (OSError, ValueError):
            return {}
        return index if isinstance(index, dict) else {}

    @property
    def ids(self) -> list[str]:
        """Patient ids with a recorded map."""
        return sorted(self._read_index())

    def __len__(self) -> int:
        return len(self._read_index())

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.dir)!r}, shape={self.shape})"
