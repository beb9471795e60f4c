"""Named pretrained weights: the registry (built in, plus ``$CACXR_HOME/sources.toml``).

Every entry names its source URL, the checksum it is verified against, the architecture it fits and its
intensity contract (the preprocessing profile whose intensities it expects). torchvision publishes the
first 8 hex digits of each file's SHA-256 in its name (torch.hub checks the same prefix); where nothing is
published (torchxrayvision), the SHA-256 seen at the first fetch or import is recorded (cacxr.model.weightcache,
which downloads, verifies and caches the files).

More sources can be declared in ``$CACXR_HOME/sources.toml`` (a hospital's own mirror or models), by hand
or with :func:`add_source` (``cacxr weights add``)::

    [my-encoder]
    url = "https://models.example.org/encoder.safetensors"
    sha256 = "e3b0c442..."      # optional: recorded at the first fetch when absent
    size = 123456               # optional, bytes
    arch = "densenet121"        # optional, default: every architecture
    intensity = "seed"          # optional, default seed

This module does not import torch, so ``cacxr weights list`` and config validation stay fast.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlparse

from cacxr.core import CacxrError

__all__ = [
    "WeightSource",
    "WEIGHT_SOURCES",
    "PROFILE_INTENSITY",
    "XRV_NAME",
    "XRV_FILE",
    "SOURCES_FILE",
    "cache_home",
    "all_sources",
    "add_source",
    "get_source",
    "resolve_source",
    "check_profile",
]

XRV_NAME = "xrv-densenet121-all"
# torchxrayvision's release file for "densenet121-res224-all" (a pickled model object).
XRV_FILE = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
SOURCES_FILE = "sources.toml"
_MB = 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# The intensity contract each preprocessing profile delivers: seed and clahe share the seed scale
# ((x / 255 - 0.5024) / 0.2898), xrv gives torchxrayvision's [-1024, 1024] (cacxr.pixels.profiles.normalise).
PROFILE_INTENSITY: MappingProxyType[str, str] = MappingProxyType({"seed": "seed", "clahe": "seed", "xrv": "xrv"})


@dataclass(frozen=True)
class WeightSource:
    """One named weight source.

    Attributes:
        name: the ``--weights`` value.
        description: what the weights are.
        arch: the architecture they fit (``"*"``: every arch in :data:`cacxr.model.networks.ARCHS`).
        input_size: image size they were trained at (None: not applicable).
        intensity: the intensity contract they expect, a value of :data:`PROFILE_INTENSITY`.
        obtain: how to get the file onto this machine by hand.
        url: where the file is downloaded from (None: nothing to download).
        sha256: its published SHA-256 or a published prefix of it (None: recorded at the first fetch).
        size: its exact size in bytes, when known.
        size_mb: its approximate size in MiB, for listings.
    """

    name: str
    description: str
    arch: str
    input_size: int | None
    intensity: str
    obtain: str
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    size_mb: float | None = None

    @property
    def filename(self) -> str | None:
        """The file's name in the cache (the URL's last part)."""
        return urlparse(self.url).path.rsplit("/", 1)[-1] if self.url else None


def _torchvision(arch: str, file: str, size_mb: float) -> WeightSource:
    """A torchvision ImageNet file: the SHA-256 prefix is the hex part of its name."""
    return WeightSource(
        f"imagenet-{arch}",
        f"torchvision ImageNet-1k weights for {arch}, RGB stem summed into one channel",
        arch,
        224,
        "seed",
        f"download {file} from https://download.pytorch.org/models/ and run "
        f"`cacxr weights import imagenet-{arch} FILE`",
        url=f"https://download.pytorch.org/models/{file}",
        sha256=file.rsplit("-", 1)[-1].split(".")[0],
        size_mb=size_mb,
    )


_IMAGENET = {
    "densenet121": _torchvision("densenet121", "densenet121-a639ec97.pth", 30.845),
    "resnet18": _torchvision("resnet18", "resnet18-f37072fd.pth", 44.661),
    "efficientnet-b0": _torchvision("efficientnet-b0", "efficientnet_b0_rwightman-7f5810bc.pth", 20.451),
}

WEIGHT_SOURCES: MappingProxyType[str, WeightSource] = MappingProxyType(
    {
        "none": WeightSource("none", "random initialisation", "*", None, "seed", "nothing to obtain"),
        "imagenet": WeightSource(
            "imagenet",
            "torchvision ImageNet-1k weights of the chosen --arch (imagenet-<arch>)",
            "*",
            224,
            "seed",
            "fetch the file of an architecture: " + ", ".join(f"imagenet-{arch}" for arch in _IMAGENET),
        ),
        **{source.name: source for source in _IMAGENET.values()},
        XRV_NAME: WeightSource(
            XRV_NAME,
            "torchxrayvision DenseNet121 'densenet121-res224-all', trained on 8 public chest X-ray datasets",
            "densenet121",
            224,
            "xrv",
            f"download {XRV_FILE} from torchxrayvision's release v1 and run `cacxr weights import {XRV_NAME} "
            f"FILE`, or pass {XRV_NAME}=PATH to a state dict / safetensors file",
            url=f"https://github.com/mlmed/torchxrayvision/releases/download/v1/{XRV_FILE}",
        ),
    }
)


# ---- where things are --------------------------------------------------------------------------------------


def cache_home() -> Path:
    """``$CACXR_HOME``, by default the platform's cache folder for cacxr (e.g. ``~/.cache/cacxr``)."""
    if os.environ.get("CACXR_HOME"):
        return Path(os.environ["CACXR_HOME"]).expanduser()
    import pooch

    return Path(pooch.os_cache("cacxr"))


def all_sources() -> dict[str, WeightSource]:
    """The built-in registry plus the entries of ``$CACXR_HOME/sources.toml``.

    Raises:
        CacxrError: an unreadable sources file, or an entry without a URL or with an unknown key.
    """
    sources = dict(WEIGHT_SOURCES)
    path = cache_home() / SOURCES_FILE
    if not path.is_file():
        return sources
    import tomllib

    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CacxrError(f"{path}: unreadable weights sources file ({exc})") from None
    allowed = {"url", "sha256", "size", "arch", "intensity", "input_size", "description"}
    for name, entry in table.items():
        if not _NAME.fullmatch(name):
            raise CacxrError(f"{path}: [{name}] is not a valid name (letters, digits, '.', '_', '-')")
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise CacxrError(f"{path}: [{name}] needs a url")
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise CacxrError(f"{path}: [{name}] has unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
        if name in WEIGHT_SOURCES:
            raise CacxrError(f"{path}: [{name}] would replace a built-in weights name; choose another name")
        intensity = entry.get("intensity", "seed")
        if intensity not in set(PROFILE_INTENSITY.values()):
            raise CacxrError(f"{path}: [{name}] intensity must be one of {', '.join(sorted(set(PROFILE_INTENSITY.values())))}")
        size = entry.get("size")
        sources[name] = WeightSource(
            name,
            str(entry.get("description", f"from {entry['url']}")),
            str(entry.get("arch", "*")),
            entry.get("input_size"),
            intensity,
            f"download {entry['url']} and run `cacxr weights import {name} FILE`",
            url=entry["url"],
            sha256=(str(entry["sha256"]).lower() if entry.get("sha256") else None),
            size=int(size) if size is not None else None,
            size_mb=size / _MB if size is not None else None,
        )
    return sources


def add_source(
    name: str,
    url: str,
    sha256: str | None = None,
    size: int | None = None,
    arch: str = "*",
    intensity: str = "seed",
) -> WeightSource:
    """Declare a new named source in ``$CACXR_HOME/sources.toml`` (``cacxr weights add``).

    Raises:
        CacxrError: a name already in use, a URL that is not http(s) or file, a malformed SHA-256, or an
            unknown intensity contract.
    """
    from cacxr.core import write_text

    if not _NAME.fullmatch(name):
        raise CacxrError(f"weights '{name}': a name is letters, digits, '.', '_' and '-' (it names a cache folder)")
    if name in all_sources():
        raise CacxrError(f"weights '{name}': the name is already in use (see `cacxr weights list`)")
    if urlparse(url).scheme not in ("http", "https"):
        raise CacxrError(f"{url}: not an http(s) URL")
    if sha256 is not None and not (8 <= len(sha256) <= 64 and all(c in "0123456789abcdefABCDEF" for c in sha256)):
        raise CacxrError(f"--sha256 {sha256}: expected 8 to 64 hex digits of the file's SHA-256")
    if intensity not in set(PROFILE_INTENSITY.values()):
        raise CacxrError(f"--intensity {intensity}: must be one of {', '.join(sorted(set(PROFILE_INTENSITY.values())))}")
    entry = {"url": url, "sha256": sha256.lower() if sha256 else None, "size": size, "arch": arch, "intensity": intensity}
    # JSON strings are valid TOML basic strings (and quoted keys).
    lines = [f"[{json.dumps(name)}]"] + [f"{k} = {json.dumps(v)}" for k, v in entry.items() if v is not None]
    path = cache_home() / SOURCES_FILE
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, before + ("\n" if before and not before.endswith("\n") else "") + "\n".join(lines) + "\n")
    return get_source(name)


def get_source(name: str) -> WeightSource:
    """The registry entry ``name``.

    Raises:
        CacxrError: an unknown name (the message lists the known ones).
    """
    sources = all_sources()
    if name not in sources:
        raise CacxrError(f"weights '{name}': not a registry name (known: {', '.join(sources)})")
    return sources[name]


def resolve_source(name: str, arch: str) -> WeightSource:
    """The entry ``name`` for architecture ``arch`` (``imagenet`` becomes ``imagenet-<arch>``).

    Raises:
        CacxrError: unknown name, or weights for another architecture.
    """
    source = get_source(name)
    if name == "imagenet" and arch in _IMAGENET:
        return _IMAGENET[arch]
    if source.arch not in ("*", arch):
        raise CacxrError(f"weights '{name}' are for {source.arch}, not {arch}")
    return source


def check_profile(weights: str, profile: str | None) -> str:
    """The preprocessing profile to use with ``weights``: the chosen one when it fits, else refused.

    Args:
        weights: a ``--weights`` value (registry names have an intensity contract; files and ``none`` not).
        profile: the chosen ``--profile``, or None when the user chose none (it then follows the weights).

    Returns:
        The profile: ``profile``, or without one the weights' own (``xrv`` for torchxrayvision's weights,
        else ``seed``).

    Raises:
        CacxrError: weights whose intensity contract the chosen profile does not deliver; the message
            names the profile to use.
    """
    name = str(weights).partition("=")[0]
    try:
        wanted = all_sources()[name].intensity if name not in ("", "none") else None
    except KeyError:  # a file path: its contract is unknown until it is read
        wanted = None
    if profile is None:
        return wanted or "seed"
    if wanted is not None and profile in PROFILE_INTENSITY and PROFILE_INTENSITY[profile] != wanted:
        fits = [p for p, contract in PROFILE_INTENSITY.items() if contract == wanted]
        raise CacxrError(
            f"--weights {name} expects the '{wanted}' intensity contract but --profile {profile} delivers "
            f"'{PROFILE_INTENSITY[profile]}': use --profile {' or '.join(fits)} (or leave --profile out to "
            "follow the weights)"
        )
    return profile
