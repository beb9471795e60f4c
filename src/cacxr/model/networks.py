"""Encoders with one input channel, split into a frozen trunk and a trainable tail.

A :class:`CACNet` is a torchvision encoder (built with ``weights=None``; nothing is ever downloaded) whose
stem takes one channel, followed by a small head::

    image (N,1,S,S) --trunk_features--> map --tail: last block, norm, pool (+ clinical) -> Linear 64 -> ReLU
                                                                                        -> Linear n_outputs

The trunk is everything before the encoder's *last block*. With ``set_finetune("last")`` (the original
project's recipe) the trunk is frozen, so its output depends only on its weights and can be computed once per
image and cached (:mod:`cacxr.training.features`); only the tail is trained.

=================  =====================================================  ==============  ==============
arch               last block (trainable with ``"last"``)                 trunk output    ``n_features``
=================  =====================================================  ==============  ==============
densenet121        ``features.denseblock4.denselayer16`` + ``norm5``      992 x S/32      1024
resnet18           ``layer4``                                             256 x S/16      512
efficientnet-b0    ``features.7`` (last MBConv stage) + ``features.8``    192 x S/32      1280
                   (final 1x1 conv block)
=================  =====================================================  ==============  ==============

For densenet121 the last block is the last *dense layer*, not all of ``denseblock4``: the original project
froze everything but that layer, and the cached map (the concatenated input of that layer) costs only one
dense layer per training step instead of sixteen.

Frozen modules are kept in eval mode whatever ``model.train()`` says, so their BatchNorm running statistics
never move and their stochastic layers stay off: the trunk really is a fixed function.

The state dict is ``encoder.<torchvision keys>`` (the torchvision model without its classifier) and
``head.0.*`` / ``head.2.*``; :mod:`cacxr.model.weights` maps other layouts onto it.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

from cacxr.core import CacxrError

__all__ = ["ARCHS", "FINETUNE_MODES", "HEAD_HIDDEN", "CACNet", "build_model"]

ARCHS = ("densenet121", "resnet18", "efficientnet-b0")
FINETUNE_MODES = ("last", "all", "head")
HEAD_HIDDEN = 64
# densenet121 trunk: conv0..transition3 (10 modules) run in sequence, then 15 dense layers that each read
# the list of all earlier maps.
_DENSENET_STEM_MODULES = 10


def _one_channel(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv`` (same geometry) that takes one input channel."""
    return nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )


def _build_encoder(arch: str) -> tuple[nn.Module, list[str], list[str], int, str]:
    """The torchvision encoder, its trunk and last-block module names, n_features and the stem key."""
    if arch == "densenet121":
        enc = torchvision.models.densenet121(weights=None)
        enc.features.conv0 = _one_channel(enc.features.conv0)
        enc.classifier = nn.Identity()
        stem = ["conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2", "transition2",
                "denseblock3", "transition3"]  # fmt: skip
        layers = [f"denseblock4.denselayer{i}" for i in range(1, 16)]
        trunk = [f"features.{n}" for n in [*stem, *layers]]
        return enc, trunk, ["features.denseblock4.denselayer16", "features.norm5"], 1024, "features.conv0.weight"
    if arch == "resnet18":
        enc = torchvision.models.resnet18(weights=None)
        enc.conv1 = _one_channel(enc.conv1)
        enc.fc = nn.Identity()
        return enc, ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"], ["layer4"], 512, "conv1.weight"
    if arch == "efficientnet-b0":
        enc = torchvision.models.efficientnet_b0(weights=None)
        enc.features[0][0] = _one_channel(enc.features[0][0])
        enc.classifier = nn.Identity()
        return enc, [f"features.{i}" for i in range(7)], ["features.7", "features.8"], 1280, "features.0.0.weight"
    raise CacxrError(f"unknown architecture '{arch}': choose one of {', '.join(ARCHS)}")


class CACNet(nn.Module):
    """A one-channel encoder split into a cacheable trunk and a trainable tail, with a small head.

    Attributes:
        arch: one of :data:`ARCHS`.
        n_features: width of the pooled image features (:meth:`embed`).
        n_outputs: width of the output (2 for classification logits, 1 for regression).
        n_clinical: number of clinical covariates concatenated to the image features (0: none).
        finetune: the current :meth:`set_finetune` mode.
        stem_key: state-dict key of the one-channel stem convolution.
        trunk_names: the trunk's modules, in order (names under ``encoder``).
        block_names: the last block's modules (names under ``encoder``).
    """

    def __init__(self, arch: str, n_outputs: int, n_clinical: int = 0) -> None:
        super().__init__()
        if n_outputs < 1 or n_clinical < 0:
            raise CacxrError(f"invalid model size: n_outputs={n_outputs}, n_clinical={n_clinical}")
        encoder, trunk, block, n_features, stem = _build_encoder(arch)
        self.arch = arch
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.n_clinical = n_clinical
        self.stem_key = f"encoder.{stem}"
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Linear(n_features + n_clinical, HEAD_HIDDEN), nn.ReLU(), nn.Linear(HEAD_HIDDEN, n_outputs)
        )
        # Names, not module references: they stay right through deepcopy, DataParallel replicas, etc.
        self.trunk_names = tuple(trunk)
        self.block_names = tuple(block)
        self.finetune = "all"

    @property
    def _trunk_modules(self) -> list[nn.Module]:
        return [self.encoder.get_submodule(n) for n in self.trunk_names]

    @property
    def _block_modules(self) -> list[nn.Module]:
        return [self.encoder.get_submodule(n) for n in self.block_names]

    # ---- the split -------------------------------------------------------------------------------------

    def trunk_features(self, x: Tensor) -> Tensor:
        """The frozen part: input of the last block.

        Args:
            x: normalised images, (N, 1, S, S).

        Returns:
            The intermediate map (see the table in the module docstring); deterministic in eval mode.
        """
        if self.arch == "densenet121":
            modules = self._trunk_modules
            for module in modules[:_DENSENET_STEM_MODULES]:
                x = module(x)
            features = [x]
            for layer in modules[_DENSENET_STEM_MODULES:]:
                features.append(layer(features))  # a dense layer takes the list of earlier maps
            return torch.cat(features, 1)
        for module in self._trunk_modules:
            x = module(x)
        return x

    def _pooled(self, feats: Tensor) -> Tensor:
        """Last block + final norm/activation + global average pool: (N, n_features)."""
        if self.arch == "densenet121":
            layer, norm5 = self._block_modules
            x = F.relu(norm5(torch.cat([feats, layer(feats)], 1)))
        else:
            x = feats
            for module in self._block_modules:
                x = module(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def tail(self, feats: Tensor, clinical: Tensor | None = None) -> Tensor:
        """The trainable part: last block, norm, pool, optional clinical covariates, head.

        Args:
            feats: output of :meth:`trunk_features` (or the same values read from a feature cache).
            clinical: (N, n_clinical) covariates; required exactly when ``n_clinical > 0``.

        Returns:
            (N, n_outputs) logits or regression outputs.

        Raises:
            CacxrError: clinical covariates missing, unexpected or of the wrong width.
        """
        pooled = self._pooled(feats)
        if self.n_clinical:
            if clinical is None or clinical.ndim != 2 or clinical.shape[1] != self.n_clinical:
                got = None if clinical is None else tuple(clinical.shape)
                raise CacxrError(f"this model needs clinical covariates of shape (N, {self.n_clinical}), got {got}")
            pooled = torch.cat([pooled, clinical.to(pooled.dtype)], 1)
        elif clinical is not None:
            raise CacxrError("this model was built without clinical covariates (n_clinical=0)")
        return self.head(pooled)

    def forward(self, x: Tensor, clinical: Tensor | None = None) -> Tensor:
        """``tail(trunk_features(x), clinical)``: (N, n_outputs)."""
        return self.tail(self.trunk_features(x), clinical)

    def embed(self, x: Tensor) -> Tensor:
        """Pooled image features before the head, (N, n_features)."""
        return self._pooled(self.trunk_features(x))

    # ---- freezing ----------------------------------------------------------------------------------------

    def trunk_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trunk (frozen by ``"last"`` and ``"head"``)."""
        return [p for m in self._trunk_modules for p in m.parameters()]

    def trunk_state_dict(self) -> dict[str, Tensor]:
        """The state-dict entries (weights and BatchNorm buffers) that determine :meth:`trunk_features`."""
        ids = {id(t) for m in self._trunk_modules for t in [*m.parameters(), *m.buffers()]}
        return {k: v for k, v in self.state_dict(keep_vars=True).items() if id(v) in ids}

    def _frozen_modules(self) -> list[nn.Module]:
        if self.finetune == "last":
            return self._trunk_modules
        if self.finetune == "head":
            return [*self._trunk_modules, *self._block_modules]
        return []

    def set_finetune(self, mode: str) -> CACNet:
        """Choose what trains; sets ``requires_grad`` and keeps frozen modules in eval mode.

        Args:
            mode: ``"last"`` (original recipe: the trunk is frozen; the last block and the head train),
                ``"all"`` (everything trains) or ``"head"`` (only the head trains).

        Returns:
            The model itself.

        Raises:
            CacxrError: unknown mode.
        """
        if mode not in FINETUNE_MODES:
            raise CacxrError(f"unknown fine-tuning mode '{mode}': choose one of {', '.join(FINETUNE_MODES)}")
        self.finetune = mode
        for p in self.parameters():
            p.requires_grad_(True)
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> CACNet:
        """Like :meth:`nn.Module.train`, but frozen modules always stay in eval mode (BatchNorm statistics)."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def trunk_is_frozen(self) -> bool:
        """True when no trunk parameter trains (then trunk outputs may be cached)."""
        return not any(p.requires_grad for p in self.trunk_parameters())


def build_model(arch: str, n_outputs: int, n_clinical: int = 0, finetune: str = "all") -> CACNet:
    """Build a randomly initialised one-channel :class:`CACNet` (load weights with :mod:`cacxr.model.weights`).

    Args:
        arch: one of :data:`ARCHS`.
        n_outputs: 2 for classification (logits), 1 for regression.
        n_clinical: number of clinical covariates concatenated to the pooled image features.
        finetune: initial :meth:`CACNet.set_finetune` mode (``"all"``: a plain, fully trainable module).

    Returns:
        The model, in training mode.

    Raises:
        CacxrError: unknown architecture or fine-tuning mode.
    """
    return CACNet(arch, n_outputs, n_clinical).set_finetune(finetune)
