"""The training configuration: one object, built once (from the command line or code) and passed down.

``TrainConfig`` keeps the seed's option names and defaults. Options left at ``None`` take a value that
depends on others (``lr`` and ``milestones`` on the task, ``finetune`` on ``weights``); ``resolved()``
fills them in, and a run folder's config.json records the resolved values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from cacxr.core import TASKS, CacxrError

if TYPE_CHECKING:
    import torch

__all__ = ["TrainConfig", "TASKS", "FINETUNE_MODES", "LOSSES", "EXECUTION_FIELDS", "LOCATION_FIELDS", "resolve_device"]

FINETUNE_MODES = ("last", "all", "head")
LOSSES = ("mae", "mse")

# How a job runs rather than what it computes: not among the settings that must match when a run is
# resumed or shared by `--fold K` jobs. config.json leaves them out, except ``num_threads``: the thread
# count changes the numbers, so a run records the one it trained on (cacxr.training.reproducibility).
EXECUTION_FIELDS = (
    "fold", "resume", "progress", "workers", "num_threads", "device", "amp", "channels_last", "compile",
    "manifest_sha256", "track", "environment",
)

# Settings that locate files rather than define the run: they may change between a run and its resume
# (a moved data folder or cache); the manifest's hash guards the data itself.
LOCATION_FIELDS = ("data", "out", "store", "feature_cache_dir")

_DEFAULT_LR = {"classification": 3e-4, "regression": 1e-3}
_DEFAULT_MILESTONES = {"classification": [20, 35], "regression": [20, 40, 60]}


@dataclass
class TrainConfig:
    """Every setting of a training run (names and defaults of the seed's command line).

    Attributes:
        task: ``classification`` (CAC > threshold) or ``regression`` (log CAC).
        data: a DICOM data folder (ingested into RUN/ingest first) or a manifest.csv.
        out: the run folder.
        epochs: training epochs per fold.
        lr: learning rate; ``None`` means 3e-4 (classification, AdamW) or 1e-3 (regression, SGD).
        arch: ``densenet121``, ``resnet18`` or ``efficientnet-b0``.
        viz: write PNG plots.
        save: write each fold's model weights (needed by predict/evaluate/serve).
        wd: weight decay.
        batchsize: images per optimisation step.
        momentum: SGD momentum (regression).
        kfold: number of cross-validation folds.
        seed: seed of the folds, the model's initialisation and the training order.
        image_size: side of the square model input, in pixels.
        threshold: a patient is positive when CAC > threshold.
        weights: ``none``, a weights file or a registry name (cacxr.model.weights).
        finetune: ``last``, ``all`` or ``head``; ``None`` means ``last`` with weights, ``all`` without.
        fold: run this fold only (others run as separate jobs, then ``--merge``).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        resume: continue an interrupted run in ``out``.
        loss: regression loss, ``mae`` (L1) or ``mse``.
        profile: preprocessing profile of the image store (``seed``, ``xrv``, ``clahe``); ``None`` follows
            the intensity contract of the weights (``xrv`` for torchxrayvision's, else ``seed``). A chosen
            profile that does not deliver the weights' contract is refused (cacxr.model.registry.check_profile).
        feature_cache: with a frozen trunk and no augmentation, compute trunk features once.
        augment: random training augmentation (disables the feature cache).
        val_fraction: share of each training part held out for validation (epoch and threshold choice).
        workers: parallel workers for ingest and preprocessing (``None``: the library's choice).
        store: image store folder; ``None`` means a cache folder shared by runs (see cacxr.training.crossval).
        feature_cache_dir: feature cache folder; ``None`` means ``<store>/features``.
        num_threads: torch CPU threads (``None``: the count the run recorded when resumed, else torch's
            default); config.json records the count used, so ``--config RUN/config.json`` reuses it.
        progress: show progress bars.
        site: site used when ``data`` is a folder or a manifest (``internal``, ``external`` or ``all``).
        milestones: epochs at which the learning rate is multiplied by ``gamma``; ``None`` means
            20,35 (classification) or 20,40,60 (regression).
        gamma: learning-rate decay factor.
        patience: stop a fold after this many epochs without a better validation score (``None``: never).
        clinical: clinical covariates fed to the head beside the image features: ``[]``, ``["age"]``,
            ``["sex"]`` or ``["age", "sex"]`` (a string ``"age,sex"`` is accepted; see cacxr.model.covariates).
        amp: mixed precision on CUDA; ``None``: automatic (cacxr.training.accel); the CPU always stays float32.
        channels_last: channels-last memory format on CUDA; ``None``: automatic.
        compile: ``torch.compile`` the trained module on CUDA; ``None``: automatic.
        calibration: calibration map fitted on each fold's validation scores (and on the final model's
            calibration patients): ``platt``, ``isotonic`` or ``none`` (cacxr.model.calibration).
        operating_point: the rule fixing the operating point on all folds' out-of-fold test predictions
            (for new patients; figures by leave-one-fold-out): ``youden``, ``sensitivity=X`` or ``specificity=X`` (see cacxr.stats.decision_threshold).
        manifest_sha256: the SHA-256 the data's manifest must have (set when a run's config.json is given
            to ``--config``, so that a rerun checks it trains on the same data); ``None``: not checked.
        environment: what the run this configuration comes from recorded beside its settings (config.json's
            ``environment``: device, deterministic-algorithm settings, library versions); a rerun warns
            about each that differs here (cacxr.training.reproducibility). ``None``: not compared.
        track: log the finished run to ``mlflow`` or ``tensorboard`` (cacxr.runs.tracking); ``None``: no tracking.
    """

    task: str = "classification"
    data: str = ""
    out: str = ""
    epochs: int = 50
    lr: float | None = None
    arch: str = "densenet121"
    viz: bool = True
    save: bool = True
    wd: float = 1e-4
    batchsize: int = 4
    momentum: float = 0.9
    kfold: int = 5
    seed: int = 42
    image_size: int = 1024
    threshold: float = 0.0
    weights: str = "none"
    finetune: str | None = None
    fold: int | None = None
    device: str = "auto"
    resume: bool = False
    loss: str = "mae"
    profile: str | None = None
    feature_cache: bool = True
    augment: bool = False
    val_fraction: float = 0.2
    workers: int | None = None
    store: str | None = None
    feature_cache_dir: str | None = None
    num_threads: int | None = None
    progress: bool = True
    site: str = "internal"
    milestones: list[int] | None = field(default=None)
    gamma: float = 0.1
    patience: int | None = None
    clinical: list[str] = field(default_factory=list)
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    calibration: str = "platt"
    operating_point: str = "sensitivity=0.90"
    manifest_sha256: str | None = None
    track: str | None = None
    environment: dict[str, Any] | None = None

    def resolved(self) -> TrainConfig:
        """A validated copy with the task-dependent defaults filled in.

        Raises:
            CacxrError: a setting has an invalid value (the message names the option).
        """
        cfg = dataclasses.replace(self)
        if cfg.task not in TASKS:
            raise CacxrError(f"--task must be one of {', '.join(TASKS)} (got {cfg.task!r})")
        if cfg.lr is None:
            cfg.lr = _DEFAULT_LR[cfg.task]
        if cfg.finetune is None:
            cfg.finetune = "all" if _is_none(cfg.weights) else "last"
        if cfg.milestones is None:
            cfg.milestones = list(_DEFAULT_MILESTONES[cfg.task])
        cfg.milestones = sorted(int(m) for m in cfg.milestones)
        cfg.weights = "none" if _is_none(cfg.weights) else str(cfg.weights)
        from cacxr.model import check_profile

        cfg.profile = check_profile(cfg.weights, cfg.profile)
        from cacxr.model import parse_clinical

        cfg.clinical = parse_clinical(cfg.clinical)
        from cacxr.stats import parse_rule

        parse_rule(cfg.operating_point)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        checks = [
            (self.finetune in FINETUNE_MODES, f"--finetune must be one of {', '.join(FINETUNE_MODES)}"),
            (self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}"),
            (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             "--device must be auto, cpu or cuda"),
            (self.site in ("internal", "external", "all"), "--site must be internal, external or all"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.kfold >= 2, "--kfold must be at least 2"),
            (self.batchsize >= 1, "--batchsize must be at least 1"),
            (self.image_size >= 32, "--image-size must be at least 32"),
            (self.lr is not None and self.lr > 0, "--lr must be positive"),
            (self.wd >= 0, "--wd must not be negative"),
            (self.threshold >= 0, f"--threshold must be a number >= 0 (got {self.threshold}; positive means CAC > threshold)"),
            (0 < self.val_fraction < 1, "--val-fraction must be between 0 and 1"),
            (self.fold is None or 0 <= self.fold < self.kfold, f"--fold must be in 0..{self.kfold - 1}"),
            (self.patience is None or self.patience >= 1, "--patience must be at least 1"),
            (0 < self.gamma <= 1, "gamma must be in (0, 1]"),
            (self.calibration in ("platt", "isotonic", "none"), "--calibration must be platt, isotonic or none"),
            (self.track in (None, "mlflow", "tensorboard"), "--track must be mlflow or tensorboard"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise CacxrError("; ".join(problems))

    def to_dict(self, settings_only: bool = False) -> dict[str, Any]:
        """The settings as a JSON-ready dict.

        Args:
            settings_only: leave out the execution options (``EXECUTION_FIELDS``: fold, resume,
                progress, ...), as config.json does.
        """
        out = dataclasses.asdict(self)
        if settings_only:
            for name in EXECUTION_FIELDS:
                out.pop(name)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from ``to_dict()`` output or a run's config.json (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the settings that change the results and differ between two resolved configs."""
        ignored = set(EXECUTION_FIELDS) | set(LOCATION_FIELDS)
        mine, theirs = self.to_dict(), other.to_dict()
        return [name for name in mine if name not in ignored and mine[name] != theirs[name]]


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device of a ``--device`` value.

    Args:
        name: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The device.

    Raises:
        CacxrError: CUDA asked for but not available.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CacxrError(f"--device {name}: no CUDA device is available here (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CacxrError(f"--device {name}: not a device name (use auto, cpu or cuda)") from None


def _is_none(weights: str | None) -> bool:
    return weights is None or str(weights).strip().lower() in ("", "none")
