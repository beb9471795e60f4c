"""Model inputs: a torch Dataset over the image store, augmentation, and preprocessing of new files.

Every image that enters a model passes through ``preprocess.normalise`` with the store's (or the
run's) profile, so training, evaluation and inference see the same intensity convention.

``StoreDataset[i]`` returns a dict (the default DataLoader collate stacks it into a batch dict):

- ``"image"``: float32 tensor (1, S, S), normalised per the store's profile;
- ``"target"``: float32 scalar tensor (NaN when the dataset has no targets);
- ``"patient_id"``: str;
- ``"clinical"``: float32 tensor (k,), only when clinical covariates were given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from cacxr.core import CacxrError
from cacxr.model import CACNet
from cacxr.pixels import ImageStore, Profile, normalise, per_level_for, preprocess_image
from cacxr.training.features import FeatureCache

if TYPE_CHECKING:
    from cacxr.imaging import ImageMeta

__all__ = ["Augment", "StoreDataset", "preprocess_for_model"]


@dataclass(frozen=True)
class Augment:
    """Random geometric and intensity changes suited to frontal chest radiographs.

    Attributes:
        rotation: maximum rotation in degrees (either way).
        scale: range of the zoom factor.
        translate: maximum shift as a fraction of the side (either way, each axis).
        brightness: maximum relative brightness change.
        contrast: maximum relative contrast change.
        hflip: flip left-right half of the time; off by default because the heart sits on the
            patient's left and a flip makes an anatomically impossible image.
        seed: ``None`` draws from torch's global generator (reproducible after
            ``torch.manual_seed``; DataLoader workers get their own seeds from it every epoch).
            An int makes each image's augmentation a function of (seed, epoch, index) only,
            whatever the number of workers; call ``StoreDataset.set_epoch`` every epoch.
    """

    rotation: float = 7.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False
    seed: int | None = None

    def transform(self) -> v2.Compose:
        """The torchvision v2 pipeline, for float images in [0, 1] of shape (1, S, S)."""
        steps: list[Any] = []
        if self.hflip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        steps.append(
            v2.RandomAffine(
                degrees=self.rotation,
                translate=(self.translate, self.translate),
                scale=self.scale,
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=0.0,
            )
        )
        steps.append(v2.ColorJitter(brightness=self.brightness, contrast=self.contrast))
        return v2.Compose(steps)


class StoreDataset(Dataset):
    """The images of an ``ImageStore`` as normalised tensors, with targets and covariates.

    Args:
        store: the image store.
        patient_ids: the ids of this dataset, in order.
        targets: one number per id (e.g. CAC score or a 0/1 label), or None.
        augment: random augmentation, or None for the stored image as is.
        clinical: array (n, k) of covariates aligned with ``patient_ids``, or None.

    Raises:
        CacxrError: an id has no image in the store, or a length does not match.
    """

    def __init__(
        self,
        store: ImageStore,
        patient_ids: Sequence[str],
        targets: Sequence[float] | np.ndarray | None = None,
        augment: Augment | None = None,
        clinical: np.ndarray | None = None,
    ) -> None:
        self.store = store
        self.patient_ids = list(patient_ids)
        missing = [pid for pid in self.patient_ids if pid not in store]
        if missing:
            shown = ", ".join(
                f"{pid} ({store.failed[pid]})" if pid in store.failed else pid for pid in missing[:5]
            )
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise CacxrError(f"{store.root}: no stored image for {len(missing)} patient(s): {shown}{more}")
        n = len(self.patient_ids)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32).reshape(-1)
        if self.targets is not None and len(self.targets) != n:
            raise CacxrError(f"{len(self.targets)} targets for {n} patients")
        self.clinical = None if clinical is None else np.asarray(clinical, dtype=np.float32)
        if self.clinical is not None and (self.clinical.ndim != 2 or len(self.clinical) != n):
            raise CacxrError(
                f"clinical covariates must be an array (n={n}, k), got shape {self.clinical.shape}"
            )
        self.augment = augment
        self._transform = augment.transform() if augment is not None else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentations (only matters for an ``Augment`` with a seed)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.patient_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        patient_id = self.patient_ids[index]
        # A copy: the memmap is released at once and the tensor owns writable memory.
        image = torch.from_numpy(np.array(self.store.get(patient_id)))[None]
        if self._transform is None:
            tensor = normalise(image, self.store.profile)
        else:
            tensor = normalise(self._augmented(image, index).mul_(255.0), self.store.profile)
        target = np.nan if self.targets is None else self.targets[index]
        item: dict[str, Any] = {
            "image": tensor,
            "target": torch.tensor(target, dtype=torch.float32),
            "patient_id": patient_id,
        }
        if self.clinical is not None:
            item["clinical"] = torch.from_numpy(self.clinical[index].copy())
        return item

    def _augmented(self, image: torch.Tensor, index: int) -> torch.Tensor:
        """Augment a uint8 (1, S, S) image; returns float32 in [0, 1]."""
        unit = image.to(torch.float32).div_(255.0)
        if self.augment is None or self.augment.seed is None:
            return self._transform(unit)
        seed = int(np.random.SeedSequence([self.augment.seed, self.epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._transform(unit)


def preprocess_for_model(
    image: np.ndarray, profile: str | Profile, size: int, *, meta: ImageMeta | None = None
) -> torch.Tensor:
    """A decoded radiograph as a model input, exactly as the store and ``StoreDataset`` prepare it.

    Args:
        image: float32 (rows, cols) in [0, 1], bone bright (``imaging.read_image(...).image``).
        profile: the profile the model was trained with.
        size: the model's image size ``S``.
        meta: the image's ``ImageMeta`` (``imaging.read_image(...).meta``): its ``voi`` picks the
            equalisation as ``preprocess.preprocess_read`` does; None: 256-bin equalisation.

    Returns:
        float32 tensor (1, S, S).
    """
    prepared = preprocess_image(image, profile, size, per_level=per_level_for(meta))
    return normalise(prepared, profile)[None]


class FeatureDataset(Dataset):
    """Cached trunk maps in place of images (same item layout as ``StoreDataset``)."""

    def __init__(
        self, cache: FeatureCache, ids: list[str], targets: np.ndarray, clinical: np.ndarray | None = None
    ) -> None:
        self.cache, self.ids, self.targets, self.clinical = cache, ids, targets, clinical

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.cache.get([self.ids[index]])[0],
            "target": torch.tensor(self.targets[index], dtype=torch.float32),
            **({} if self.clinical is None else {"clinical": torch.from_numpy(self.clinical[index].copy())}),
        }


class FoldInputs:
    """Datasets and the forward function of a fold: cached maps -> ``model.tail``, images -> ``model``."""

    def __init__(
        self,
        store: ImageStore,
        features: FeatureCache | None,
        augment: Augment | None,
        clinical: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.store, self.features, self.augment = store, features, augment
        self.clinical = clinical  # patient id -> encoded covariates (--clinical), or None

    def dataset(self, ids: list[str], targets: np.ndarray, train: bool) -> Dataset:
        covariates = None if self.clinical is None else np.stack([self.clinical[i] for i in ids])
        if self.features is not None:
            return FeatureDataset(self.features, ids, targets, covariates)
        return StoreDataset(self.store, ids, targets, augment=self.augment if train else None, clinical=covariates)

    def forward(self, model: CACNet) -> Callable[[torch.Tensor], torch.Tensor]:
        return model.tail if self.features is not None else model
