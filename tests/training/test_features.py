"""Frozen-trunk feature cache: equal to the plain forward, computed once, resumable, keyed by the trunk.

Most tests use a small in-memory store with the image store's attributes (``ids``, ``get``, ``profile``,
``image_size``; duck-typed, written while cacxr.pixels.store was being built in parallel); one builds a real
cacxr.pixels.store.ImageStore from two real radiographs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _torch_threads import torch_threads
from cacxr.core import CacxrError
from cacxr.ingest import ManifestRow
from cacxr.model import build_model
from cacxr.pixels import normalise
from cacxr.training.features import ONNX_MIN_PIXELS, TRUNK_TOLERANCE, FeatureCache, trunk_key

SIZE = 64


class MemoryStore:
    """Random uint8 radiographs keyed by patient id; counts the images it hands out."""

    def __init__(self, n: int = 5, profile: str = "seed", image_size: int = SIZE, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = {f"CAC_{i:03d}": rng.integers(0, 256, (image_size, image_size), dtype=np.uint8) for i in range(n)}
        self.profile = profile
        self.image_size = image_size
        self.fail_on: str | None = None

    @property
    def ids(self) -> list[str]:
        return sorted(self.images)

    def get(self, patient_id: str) -> np.ndarray:
        if patient_id == self.fail_on:
            raise CacxrError(f"store: image of {patient_id} unreadable")
        return self.images[patient_id]


class CountingTrunk:
    """Wraps model.trunk_features to count the images it computes."""

    def __init__(self, model) -> None:
        self.images = 0
        self._trunk = model.trunk_features
        model.trunk_features = self

    def __call__(self, x):
        self.images += len(x)
        return self._trunk(x)


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    with torch_threads(1):
        yield


def _model(seed: int = 0, arch: str = "resnet18"):
    torch.manual_seed(seed)
    return build_model(arch, 2, finetune="last")


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_cached_tail_equals_plain_forward_within_fp16_noise(tmp_path, arch):
    store, model = MemoryStore(n=3), _model(arch=arch)
    cache = FeatureCache.build(model, store, store.ids, tmp_path, batch_size=2, progress=False)
    feats = cache.get(store.ids)
    assert feats.dtype == torch.float32 and feats.shape == (3, *cache.shape)
    assert np.load(cache.path("CAC_000"), mmap_mode="r").dtype == np.float16
    model.eval()
    with torch.no_grad():
        x = normalise(np.stack([store.get(i) for i in store.ids]), "seed").unsqueeze(1)
        plain = model(x)
        cached = model.tail(feats)
        torch.testing.assert_close(feats, model.trunk_features(x), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(cached, plain, rtol=1e-2, atol=1e-2)
    assert cache.shape == tuple(model.trunk_features(x[:1]).shape[1:])


def test_second_build_computes_nothing_and_a_new_id_only_itself(tmp_path):
    store, model = MemoryStore(n=4), _model()
    first = FeatureCache.build(model, store, store.ids[:3], tmp_path, progress=False)
    mtimes = {i: first.path(i).stat().st_mtime_ns for i in store.ids[:3]}
    counter = CountingTrunk(model)
    again = FeatureCache.build(model, store, store.ids[:3], tmp_path, progress=False)
    assert counter.images == 0
    assert again.dir == first.dir and again.ids == store.ids[:3]
    FeatureCache.build(model, store, store.ids, tmp_path, progress=False)
    assert counter.images == 1
    assert {i: first.path(i).stat().st_mtime_ns for i in store.ids[:3]} == mtimes
    assert len(FeatureCache(tmp_path, trunk_key(model, store))) == 4


def test_interrupted_build_resumes_with_the_missing_images(tmp_path):
    store, model = MemoryStore(n=5), _model()
    trunk = model.trunk_features

    def interrupted(x):
        if interrupted.calls == 1:  # the second batch never finishes (Ctrl-C, killed job...)
            raise KeyboardInterrupt
        interrupted.calls += 1
        return trunk(x)

    interrupted.calls = 0
    model.trunk_features = interrupted
    with pytest.raises(KeyboardInterrupt):
        FeatureCache.build(model, store, store.ids, tmp_path, batch_size=2, progress=False)
    del model.trunk_features
    key = trunk_key(model, store)
    assert FeatureCache(tmp_path, key).ids == ["CAC_000", "CAC_001"]  # the completed batch only
    assert not list((tmp_path / key).glob(".*.tmp"))
    counter = CountingTrunk(model)
    cache = FeatureCache.build(model, store, store.ids, tmp_path, batch_size=2, progress=False)
    assert counter.images == 3
    assert cache.ids == store.ids


def test_an_image_the_store_cannot_give_stops_the_build_naming_it(tmp_path):
    store, model = MemoryStore(n=3), _model()
    store.fail_on = "CAC_002"
    with pytest.raises(CacxrError, match="CAC_002 unreadable"):
        FeatureCache.build(model, store, store.ids, tmp_path, progress=False)


def test_a_changed_image_is_recomputed(tmp_path):
    store, model = MemoryStore(n=3), _model()
    cache = FeatureCache.build(model, store, store.ids, tmp_path, progress=False)
    before = cache.get(["CAC_001"])
    store.images["CAC_001"] = 255 - store.images["CAC_001"]
    counter = CountingTrunk(model)
    cache = FeatureCache.build(model, store, store.ids, tmp_path, progress=False)
    assert counter.images == 1
    assert not torch.equal(cache.get(["CAC_001"]), before)


@pytest.mark.parametrize(
    ("change", "same_key"),
    [
        (lambda m, s: m.trunk_parameters()[5].data.add_(1e-3), False),
        (lambda m, s: m.encoder.bn1.running_mean.add_(1.0), False),
        (lambda m, s: setattr(s, "profile", "xrv"), False),
        (lambda m, s: setattr(s, "image_size", 128), False),
        (lambda m, s: m.head[0].weight.data.add_(1.0), True),
        (lambda m, s: m.encoder.layer4[0].conv1.weight.data.add_(1.0), True),  # the trainable block
    ],
)
def test_key_follows_exactly_what_the_trunk_output_depends_on(change, same_key):
    store, model = MemoryStore(n=1), _model()
    before = trunk_key(model, store)
    change(model, store)
    assert (trunk_key(model, store) == before) is same_key


def test_different_trunk_weights_use_a_different_cache(tmp_path):
    store = MemoryStore(n=2)
    a = FeatureCache.build(_model(seed=0), store, store.ids, tmp_path, progress=False)
    b = FeatureCache.build(_model(seed=1), store, store.ids, tmp_path, progress=False)
    assert a.key != b.key and a.dir != b.dir
    assert not torch.equal(a.get(store.ids), b.get(store.ids))


def test_mismatched_cache_folder_is_rebuilt(tmp_path):
    store, model = MemoryStore(n=2), _model()
    key = trunk_key(model, store)
    (tmp_path / key).mkdir()
    bogus = {"key": key, "version": "1", "arch": "densenet121", "profile": "seed@v1", "image_size": SIZE, "shape": [3, 1, 1]}
    (tmp_path / key / "meta.json").write_text(json.dumps(bogus))
    np.save(tmp_path / key / "CAC_000.npy", np.zeros((3, 1, 1), np.float16))
    cache = FeatureCache.build(model, store, store.ids, tmp_path, progress=False)
    assert cache.meta["arch"] == "resnet18" and cache.shape == (256, 4, 4)
    assert cache.get(["CAC_000"]).abs().sum() > 0


def test_build_restores_training_mode_and_leaves_frozen_statistics(tmp_path):
    store, model = MemoryStore(n=2), _model()
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    FeatureCache.build(model, store, store.ids, tmp_path, progress=False)
    assert model.training
    assert all(torch.equal(stats[k], v) for k, v in model.state_dict().items() if "running" in k)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c, d: c.get(["CAC_404"]), "no cached features for patient CAC_404"),
        (lambda c, d: FeatureCache(d, "0123456789abcdef0123"), "no feature cache here"),
        (lambda c, d: FeatureCache.build(_model(), MemoryStore(), [], d, progress=False), "no patient ids to cache"),
    ],
)
def test_bad_requests_give_clear_errors(tmp_path, call, message):
    store = MemoryStore(n=1)
    cache = FeatureCache.build(_model(), store, store.ids, tmp_path, progress=False)
    with pytest.raises(CacxrError, match=message):
        call(cache, tmp_path)


def test_cache_of_a_real_image_store(tmp_path, real_cxr_dir):
    from cacxr.pixels import ImageStore, build_store

    files = ["nhsx_nih-cxr14_google_DX.dcm", "txv_siim_chest_pa.dcm"]
    rows = [ManifestRow(f"CAC_{i:03d}", str(real_cxr_dir / f), "internal", 10.0) for i, f in enumerate(files)]
    build_store(rows, tmp_path / "store", image_size=SIZE, workers=1, progress=False)
    store = ImageStore.open(tmp_path / "store")
    model = _model()
    cache = FeatureCache.build(model, store, store.ids, tmp_path / "features", progress=False)
    assert cache.meta["profile"] == f"{store.profile}@v{store.profile_version}"
    model.eval()
    with torch.no_grad():
        x = normalise(np.stack([store.get(i) for i in store.ids]), store.profile).unsqueeze(1)
        torch.testing.assert_close(model.tail(cache.get(store.ids)), model(x), rtol=1e-2, atol=1e-2)


def test_trunk_outputs_that_underflow_float16_are_refused_not_cached_as_zeros(tmp_path):
    store, model = MemoryStore(n=2), _model()
    trunk = model.trunk_features
    model.trunk_features = lambda x: trunk(x) * 1e-9  # tiny activations: float16 would store 0
    with pytest.raises(CacxrError, match=r"underflow float16: \d+% of the non-zero values.*--no-feature-cache"):
        FeatureCache.build(model, store, store.ids, tmp_path, progress=False)
    assert not list(tmp_path.rglob("CAC_*.npy"))


def _eager_maps(model, store) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        x = normalise(np.stack([store.get(i) for i in store.ids]), store.profile).unsqueeze(1)
        return model.trunk_features(x).numpy()


@pytest.mark.parametrize("engine", ["onnx", "channels_last"])
def test_trunk_engines_within_the_cache_tolerance_of_fp32_eager(tmp_path, engine):
    """ONNX Runtime (exported once into the cache folder) and channels_last give the fp32 eager maps."""
    if engine == "onnx":
        pytest.importorskip("onnxruntime")
    store, model = MemoryStore(n=3), _model()
    reference = _eager_maps(model, store)
    cache = FeatureCache.build(model, store, store.ids, tmp_path, batch_size=2, progress=False, engine=engine)
    got = cache.get(store.ids).numpy()
    # the cached maps are float16: compare with the reference rounded the same way, within the tolerance
    half = reference.astype(np.float16).astype(np.float32)
    scale = float(np.abs(reference).max())
    assert np.abs(got - half).max() <= TRUNK_TOLERANCE * scale + float(np.spacing(np.float16(scale)))
    assert (cache.dir / "trunk.onnx").is_file() == (engine == "onnx")
    assert next(model.parameters()).is_contiguous()  # channels_last undone on the caller's model
    if engine == "onnx":  # the raw fp32 trunk pass, before the float16 cache
        import onnxruntime as ort

        session = ort.InferenceSession(str(cache.dir / "trunk.onnx"), providers=["CPUExecutionProvider"])
        x = normalise(np.stack([store.get(i) for i in store.ids]), "seed").unsqueeze(1).numpy()
        raw = session.run(None, {"x": x})[0]
        assert np.abs(raw - reference).max() <= TRUNK_TOLERANCE * scale
        print(f"onnx vs eager fp32: max abs {np.abs(raw - reference).max():.2e}, max |ref| {scale:.2f}")


def test_auto_engine_keeps_small_builds_on_the_plain_eager_trunk(tmp_path):
    store, model = MemoryStore(n=2), _model()
    cache = FeatureCache.build(model, store, store.ids, tmp_path, progress=False)
    assert not (cache.dir / "trunk.onnx").exists()  # 2 x 64 x 64 px is far below ONNX_MIN_PIXELS
    assert 2 * SIZE * SIZE < ONNX_MIN_PIXELS
    with pytest.raises(CacxrError, match="unknown trunk engine"):
        FeatureCache.build(model, MemoryStore(n=1, seed=9), ["CAC_000"], tmp_path / "x", engine="bf16", progress=False)
