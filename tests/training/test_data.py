"""StoreDataset, Augment and preprocess_for_model: shapes, normalisation, reproducible augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from cacxr.core import CacxrError
from cacxr.imaging import read_image
from cacxr.ingest import ManifestRow
from cacxr.pixels import ImageStore, build_store, normalise
from cacxr.training.dataset import Augment, StoreDataset, preprocess_for_model

SIZE = 32
SEED_MEAN, SEED_STD = 0.5024, 0.2898


def left_bright(seed: int) -> np.ndarray:
    """An 8-bit image with a bright left half and some texture: flips are easy to see."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 60, (80, 80)).astype(np.uint8)
    image[:, :40] += 150
    return image


@pytest.fixture(scope="module", params=["seed", "xrv"])
def store(request, tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    """Three PNG exports in a store (read-only in every test: built once per profile, as the gate's worker
    start-up takes seconds)."""
    tmp_path = tmp_path_factory.mktemp(f"store-{request.param}")
    rows = []
    for i in range(3):
        path = tmp_path / "data" / f"CAC_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(left_bright(i)).save(path)
        rows.append(
            ManifestRow(patient_id=f"CAC_{i:03d}", path=str(path), site="internal", cac_score=float(i))
        )
    return build_store(
        rows, tmp_path / "store", profile=request.param, image_size=SIZE, workers=1, progress=False
    )


def plain(**changes) -> Augment:
    """An augmentation that changes nothing unless asked to."""
    kwargs = {"rotation": 0.0, "scale": (1.0, 1.0), "translate": 0.0, "brightness": 0.0, "contrast": 0.0}
    return Augment(**(kwargs | changes))


def test_items_are_normalised_images_with_targets(store):
    ids = ["CAC_002", "CAC_000"]
    dataset = StoreDataset(store, ids, targets=[12.5, 0.0])
    assert len(dataset) == 2
    item = dataset[0]
    assert set(item) == {"image", "target", "patient_id"}
    assert item["patient_id"] == "CAC_002"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, SIZE, SIZE)
    assert item["target"].dtype == torch.float32 and float(item["target"]) == 12.5
    stored = torch.from_numpy(np.array(store.get("CAC_002"))).float()
    if store.profile == "seed":
        expected = (stored / 255 - SEED_MEAN) / SEED_STD
    else:
        expected = (stored / 255 * 2 - 1) * 1024
    torch.testing.assert_close(item["image"][0], expected, rtol=1e-5, atol=1e-3)


def test_without_targets_the_target_is_nan_and_clinical_is_passed_through(store):
    clinical = np.array([[63.0, 1.0], [48.0, 0.0]])
    item = StoreDataset(store, ["CAC_000", "CAC_001"], clinical=clinical)[1]
    assert torch.isnan(item["target"])
    assert item["clinical"].dtype == torch.float32
    assert item["clinical"].tolist() == [48.0, 0.0]


def test_a_dataloader_batches_the_items(store):
    loader = DataLoader(StoreDataset(store, store.ids, targets=[0, 1, 2]), batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, SIZE, SIZE)
    assert batch["target"].tolist() == [0.0, 1.0]
    assert batch["patient_id"] == ["CAC_000", "CAC_001"]


def test_a_dataset_pickles_for_dataloader_worker_processes(store):
    dataset = StoreDataset(store, store.ids, targets=[0, 1, 2], augment=Augment(seed=1))
    copy = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(copy[2]["image"], dataset[2]["image"])


def test_seeded_augmentation_is_reproducible_and_changes_with_the_epoch(store):
    dataset = StoreDataset(store, store.ids, augment=Augment(seed=7))
    first = dataset[1]["image"]
    torch.manual_seed(123)  # the global generator does not matter for a seeded Augment
    torch.testing.assert_close(StoreDataset(store, store.ids, augment=Augment(seed=7))[1]["image"], first)
    unaugmented = StoreDataset(store, store.ids)[1]["image"]
    assert not torch.equal(first, unaugmented)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["image"], first)
    assert not torch.equal(StoreDataset(store, store.ids, augment=Augment(seed=8))[1]["image"], first)


def test_unseeded_augmentation_follows_torch_manual_seed(store):
    dataset = StoreDataset(store, store.ids, augment=Augment())
    torch.manual_seed(0)
    first = dataset[0]["image"]
    torch.manual_seed(0)
    torch.testing.assert_close(dataset[0]["image"], first)
    assert not torch.equal(dataset[0]["image"], first)


def test_no_flip_by_default(store):
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in Augment().transform().transforms)
    unaugmented = StoreDataset(store, store.ids)[0]["image"]
    for seed in range(12):
        image = StoreDataset(store, store.ids, augment=plain(seed=seed))[0]["image"]
        torch.testing.assert_close(image, unaugmented, atol=1e-4, rtol=0)
    flipped = [
        torch.allclose(
            StoreDataset(store, store.ids, augment=plain(hflip=True, seed=seed))[0]["image"],
            unaugmented.flip(-1),
            atol=1e-4,
        )
        for seed in range(12)
    ]
    assert 0 < sum(flipped) < 12


def test_augmentation_stays_small(store):
    # ±7°, ±5 %, 0.9-1.1 and ±10 % intensity: the left half stays brighter than the right.
    dataset = StoreDataset(store, store.ids, augment=Augment(seed=3))
    for index in range(len(dataset)):
        image = dataset[index]["image"][0]
        assert image[:, : SIZE // 2].mean() > image[:, SIZE // 2 :].mean() + 0.5 * image.std()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patient_ids": ["CAC_000", "CAC_404"]}, "no stored image for 1 patient\\(s\\): CAC_404"),
        ({"patient_ids": ["CAC_000"], "targets": [1.0, 2.0]}, "2 targets for 1 patients"),
        ({"patient_ids": ["CAC_000"], "clinical": np.zeros(3)}, "clinical covariates must be an array"),
    ],
)
def test_bad_arguments_are_clear_errors(store, kwargs, message):
    with pytest.raises(CacxrError, match=message):
        StoreDataset(store, **kwargs)


def test_preprocess_for_model_matches_the_store_path(store):
    result = read_image(Path(store.root).parent / "data" / "CAC_001.png")
    tensor = preprocess_for_model(result.image, store.profile, SIZE, meta=result.meta)
    assert tensor.shape == (1, SIZE, SIZE) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, StoreDataset(store, ["CAC_001"])[0]["image"])
    torch.testing.assert_close(tensor, normalise(np.array(store.get("CAC_001")), store.profile)[None])
