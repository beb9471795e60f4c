"""Named pretrained weights: the registry, the cache (``$CACXR_HOME``), fetching and importing files.

Every entry names its source URL, the checksum it is verified against, the architecture it fits and its
intensity contract (the preprocessing profile whose intensities it expects). torchvision publishes the
first 8 hex digits of each file's SHA-256 in its name (torch.hub checks the same prefix); where nothing is
published (torchxrayvision), the SHA-256 seen at the first fetch or import is recorded in
``$CACXR_HOME/weights/recorded.json`` and every later use is verified against it.

A file enters the cache only after it has been verified: downloads go to a temporary file beside the
cache (pooch's downloader, with a progress bar), are hashed, then moved into place. An interrupted or
corrupted download therefore never looks cached. ``CACXR_OFFLINE=1`` forbids downloading; files are then
copied in by hand with :func:`import_file` (``cacxr weights import NAME FILE``).

More sources can be declared in ``$CACXR_HOME/sources.toml`` (a hospital's own mirror or models)::

    [my-encoder]
    url = "https://models.example.org/encoder.safetensors"
    sha256 = "e3b0c442..."      # optional: recorded at the first fetch when absent
    size = 123456               # optional, bytes
    arch = "densenet121"        # optional, default: every architecture
    intensity = "seed"          # optional, default seed

This module does not import torch, so ``cacxr weights list`` and config validation stay fast.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlparse

from cacxr.atomic import read_json_object, write_json
from cacxr.errors import CacxrError

__all__ = [
    "WeightSource",
    "WEIGHT_SOURCES",
    "PROFILE_INTENSITY",
    "XRV_NAME",
    "XRV_FILE",
    "cache_home",
    "weights_dir",
    "all_sources",
    "get_source",
    "resolve_source",
    "cached_file",
    "expected_checksum",
    "fetch",
    "import_file",
    "weights_path",
    "offline",
    "check_profile",
    "add_source",
    "SOURCES_FILE",
]

XRV_NAME = "xrv-densenet121-all"
# torchxrayvision's release file for "densenet121-res224-all" (a pickled model object).
XRV_FILE = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
RECORD_FILE = "recorded.json"
SOURCES_FILE = "sources.toml"
_TIMEOUT_S = 30
_MB = 1024 * 1024

# The intensity contract each preprocessing profile delivers: seed and clahe share the seed scale
# ((x / 255 - 0.5024) / 0.2898), xrv gives torchxrayvision's [-1024, 1024] (cacxr.preprocess.normalise).
PROFILE_INTENSITY: MappingProxyType[str, str] = MappingProxyType({"seed": "seed", "clahe": "seed", "xrv": "xrv"})


@dataclass(frozen=True)
class WeightSource:
    """One named weight source.

    Attributes:
        name: the ``--weights`` value.
        description: what the weights are.
        arch: the architecture they fit (``"*"``: every arch in :data:`cacxr.models.ARCHS`).
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
            "see imagenet-<arch>",
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


def weights_dir() -> Path:
    """The folder holding cached weight files and the recorded checksums."""
    return cache_home() / "weights"


def offline() -> bool:
    """True when ``CACXR_OFFLINE`` asks cacxr never to download."""
    return os.environ.get("CACXR_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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
    from cacxr.atomic import write_text

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


# ---- checksums ---------------------------------------------------------------------------------------------


def _recorded() -> dict[str, Any]:
    path = weights_dir() / RECORD_FILE
    return read_json_object(path) if path.is_file() else {}


def expected_checksum(source: WeightSource) -> tuple[str | None, int | None, str]:
    """What a file of ``source`` is verified against: ``(sha256 or prefix, size, origin)``.

    ``origin`` is ``published``, ``recorded`` (at the first fetch or import) or ``none yet``.
    """
    if source.sha256:
        return source.sha256.lower(), source.size, "published"
    seen = _recorded().get(source.name)
    if isinstance(seen, dict) and seen.get("sha256"):
        return str(seen["sha256"]), seen.get("size"), "recorded"
    return None, source.size, "none yet"


def _verify(source: WeightSource, path: Path, what: str) -> str:
    """Check the size and SHA-256 of ``path``; returns its SHA-256.

    Raises:
        CacxrError: one line naming ``what`` and the reason.
    """
    import pooch

    expected, size, origin = expected_checksum(source)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise CacxrError(f"{what}: wrong size for weights '{source.name}': {actual_size} bytes, expected {size}")
    digest = pooch.file_hash(str(path), alg="sha256")
    if expected is not None and not digest.startswith(expected):
        raise CacxrError(
            f"{what}: checksum mismatch for weights '{source.name}': SHA-256 {digest[:16]}... does not match "
            f"the {origin} {expected[:16]}{'...' if len(expected) > 16 else ''}"
        )
    return digest


def _record(source: WeightSource, digest: str, size: int) -> None:
    """Remember the checksum seen at a first fetch or import (only where none is published)."""
    if source.sha256:
        return
    records = _recorded()
    if source.name in records:
        return
    records[source.name] = {
        "sha256": digest,
        "size": size,
        "url": source.url,
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(weights_dir() / RECORD_FILE, records)


# ---- the cache ---------------------------------------------------------------------------------------------


def cached_file(source: WeightSource) -> Path | None:
    """The cached file of ``source`` when present, ``weights/<name>/<file name>`` (files enter the cache only
    once verified)."""
    if source.filename is None:
        return None
    path = weights_dir() / source.name / source.filename
    return path if path.is_file() else None


def _store(source: WeightSource, fill: Any, what: str) -> Path:
    """Write a temporary file beside the cache with ``fill(tmp)``, verify it, then move it into place."""
    if source.filename is None:
        raise CacxrError(f"weights '{source.name}': nothing to fetch or import")
    folder = weights_dir() / source.name  # one folder per name: two sources never share a file
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{source.filename}.", suffix=".part")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        fill(tmp)
        digest = _verify(source, tmp, what)
        final = folder / source.filename
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _record(source, digest, final.stat().st_size)
    return final


def fetch(name: str, progress: bool = True, force: bool = False) -> Path:
    """Download the weights ``name`` into the cache (verified before they count as cached).

    Args:
        name: a registry name (``imagenet-<arch>``, ``xrv-densenet121-all`` or one of sources.toml).
        progress: show a progress bar on stderr.
        force: download again even when the file is cached.

    Returns:
        The cached file.

    Raises:
        CacxrError: unknown name, ``CACXR_OFFLINE=1``, no network, an HTTP error, an interrupted download,
            a wrong size or a checksum mismatch (each one line; nothing is left in the cache).
    """
    source = get_source(name)
    if source.url is None:
        raise CacxrError(f"weights '{name}': nothing to fetch ({source.obtain})")
    found = cached_file(source)
    if found is not None and not force:
        _verify(source, found, str(found))
        return found
    if offline():
        raise CacxrError(
            f"weights '{name}' are not in the cache ({weights_dir()}) and CACXR_OFFLINE is set, so cacxr does "
            f"not download: copy {source.filename} onto this machine (from {source.url}) and run "
            f"`cacxr weights import {name} FILE`"
        )
    return _store(source, lambda tmp: _download(source, tmp, progress), source.url)


def _download(source: WeightSource, tmp: Path, progress: bool) -> None:
    """Fetch ``source.url`` into ``tmp`` with pooch's HTTP downloader; failures become one-line errors."""
    import pooch
    import requests

    url = source.url
    assert url is not None
    try:
        pooch.HTTPDownloader(progressbar=progress, timeout=_TIMEOUT_S)(url, str(tmp), None)
    except requests.HTTPError as exc:
        response = exc.response
        code = f"HTTP {response.status_code} {response.reason}" if response is not None else "an HTTP error"
        raise CacxrError(f"{url}: download of weights '{source.name}' failed with {code}") from None
    except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError, requests.Timeout) as exc:
        got = tmp.stat().st_size if tmp.exists() else 0
        if got or isinstance(exc, requests.exceptions.ChunkedEncodingError):
            raise CacxrError(
                f"{url}: download of weights '{source.name}' was interrupted after {got} bytes; nothing was "
                "cached, run the command again"
            ) from None
        host = urlparse(url).netloc
        raise CacxrError(
            f"{url}: cannot reach {host} (no network?); on a machine without internet copy the file here "
            f"and run `cacxr weights import {source.name} FILE`"
        ) from None
    except requests.RequestException as exc:
        raise CacxrError(f"{url}: download of weights '{source.name}' failed ({type(exc).__name__})") from None


def import_file(name: str, file: str | os.PathLike[str]) -> Path:
    """Copy a file the user obtained by hand into the cache, after the same verification as a download.

    The user's file is only read. Where no checksum is published or recorded, this import records one.

    Raises:
        CacxrError: unknown name, missing file, wrong size or checksum mismatch.
    """
    source = get_source(name)
    path = Path(file).expanduser()
    if not path.is_file():
        raise CacxrError(f"{path}: no such file to import as weights '{name}'")
    return _store(source, lambda tmp: shutil.copyfile(path, tmp), str(path))


def weights_path(source: WeightSource, progress: bool = True, also: tuple[Path, ...] = ()) -> Path:
    """The verified local file of ``source``: the cache, then ``also`` (e.g. torch's hub cache), then a fetch.

    Raises:
        CacxrError: as :func:`fetch`, and a file in ``also`` that fails verification.
    """
    found = cached_file(source)
    if found is not None:
        _verify(source, found, str(found))
        return found
    for candidate in also:
        if candidate.is_file():
            _verify(source, candidate, str(candidate))
            return candidate
    return fetch(source.name, progress=progress)

