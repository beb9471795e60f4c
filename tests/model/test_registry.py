"""Weights by name (cacxr.model.registry, cacxr.model.weightcache): fetch, verify, cache and import, against a file served on 127.0.0.1 by the test itself."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import torchvision

from cacxr.cli import main
from cacxr.config import TrainConfig
from cacxr.core import CacxrError
from cacxr.model import build_model, load_pretrained, registry, weightcache
from cacxr.model.weights import imagenet_file
from cacxr.training import train_run


def _weights_bytes() -> bytes:
    """A real (random) torchvision resnet18 state dict, as a file's bytes."""
    torch.manual_seed(3)
    buffer = io.BytesIO()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), buffer)
    return buffer.getvalue()


PAYLOAD = _weights_bytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """/w.pth: the file; /drop/w.pth: half of it, then the connection drops; anything else: 404."""

    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        if self.path.endswith("/w.pth") and not self.path.startswith("/missing"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            half = self.path.startswith("/drop/")
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2] if half else PAYLOAD)
            self.wfile.flush()
            if half:
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_error(404, "Not Found")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """An empty $CACXR_HOME and torch hub cache for each test; downloads allowed."""
    monkeypatch.setenv("CACXR_HOME", str(tmp_path / "cacxr_home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("CACXR_OFFLINE", raising=False)
    return tmp_path / "cacxr_home"


def _sources(home: Path, **entries: dict) -> None:
    """Write $CACXR_HOME/sources.toml with the given entries (arch resnet18 unless given)."""
    home.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, entry in entries.items():
        lines.append(f"[{name}]")
        entry = {"arch": "resnet18", **entry}
        lines += [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in entry.items()]
    (home / "sources.toml").write_text("\n".join(lines).replace("'", '"') + "\n", encoding="utf-8")


def _cache_listing(home: Path) -> list[str]:
    """Every file in the weights cache, relative to it."""
    folder = home / "weights"
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_fetch_verifies_then_caches_and_list_shows_it(server, home):
    _sources(home, tiny={"url": f"{server}/w.pth", "sha256": SHA, "size": len(PAYLOAD)})
    assert "tiny  " in _cli("weights", "list")[1] and " no " in _cli("weights", "list")[1].splitlines()[-2]
    code, out = _cli("weights", "fetch", "tiny", "--no-progress")
    assert code == 0 and "cached and verified" in out
    assert (home / "weights" / "tiny" / "w.pth").read_bytes() == PAYLOAD
    assert _cache_listing(home) == ["tiny/w.pth"]  # no temporary file left behind
    row = next(line for line in _cli("weights", "list")[1].splitlines() if line.startswith("tiny "))
    assert row.split()[1:] == ["resnet18", "seed", f"{len(PAYLOAD) / 2**20:.1f}", "MiB", "yes", "published", SHA[:8]]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "/w.pth", "sha256": "0" * 64}, r"checksum mismatch for weights 'bad': SHA-256 [0-9a-f]{16}\.\.\. does not match the published 0000000000000000\.\.\."),
        ({"path": "/w.pth", "sha256": SHA, "size": len(PAYLOAD) + 1}, f"wrong size for weights 'bad': {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"),
        ({"path": "/drop/w.pth", "sha256": SHA}, r"download of weights 'bad' was interrupted after \d+ bytes; nothing was cached"),
        ({"path": "/missing/w.pth"}, "download of weights 'bad' failed with HTTP 404 Not Found"),
    ],
    ids=["wrong-checksum", "wrong-size", "dropped-connection", "http-404"],
)
def test_a_failed_download_says_why_in_one_line_and_caches_nothing(server, home, entry, message):
    path = entry.pop("path")
    _sources(home, bad={"url": f"{server}{path}", **entry})
    with pytest.raises(CacxrError, match=message) as info:
        weightcache.fetch("bad", progress=False)
    assert "\n" not in str(info.value)
    assert _cache_listing(home) == []  # no partial or unverified file
    # The command line prints the same line and exits 2.
    code, _ = _cli("weights", "fetch", "bad", "--no-progress")
    assert code == 2 and weightcache.cached_file(registry.get_source("bad")) is None


def test_no_network_names_the_host_and_how_to_import(home):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _sources(home, far={"url": f"http://127.0.0.1:{port}/w.pth", "sha256": SHA})
    with pytest.raises(CacxrError, match=rf"cannot reach 127.0.0.1:{port} \(no network\?\).*cacxr weights import far FILE"):
        weightcache.fetch("far", progress=False)


def test_weights_by_name_fetch_once_then_load_from_the_cache(server, home):
    _sources(home, tiny={"url": f"{server}/w.pth", "sha256": SHA[:8]})  # a published prefix, as torchvision's
    _Handler.hits.clear()
    model = build_model("resnet18", 2)
    report = load_pretrained(model, "tiny", progress=False)
    assert report.source == str(home / "weights" / "tiny" / "w.pth") and report.intensity == "seed"
    assert torch.equal(model.state_dict()["encoder.layer1.0.conv1.weight"], torch.load(io.BytesIO(PAYLOAD))["layer1.0.conv1.weight"])
    load_pretrained(build_model("resnet18", 2), "tiny", progress=False)
    assert _Handler.hits == ["/w.pth"]  # fetched once, then read from the cache


def test_offline_refuses_to_download_and_import_makes_it_work(server, home, tmp_path, monkeypatch):
    _sources(home, tiny={"url": f"{server}/w.pth", "sha256": SHA})
    monkeypatch.setenv("CACXR_OFFLINE", "1")
    with pytest.raises(CacxrError, match=r"weights 'tiny' are not in the cache .* CACXR_OFFLINE is set.*cacxr weights import tiny FILE"):
        load_pretrained(build_model("resnet18", 2), "tiny")
    corrupted = tmp_path / "corrupted.pth"
    corrupted.write_bytes(PAYLOAD[:-10] + b"0123456789")
    code, _ = _cli("weights", "import", "tiny", str(corrupted))
    assert code == 2 and weightcache.cached_file(registry.get_source("tiny")) is None
    copied = tmp_path / "copied_by_hand.pth"
    copied.write_bytes(PAYLOAD)
    code, out = _cli("weights", "import", "tiny", str(copied))
    assert code == 0 and "imported and verified" in out
    assert copied.read_bytes() == PAYLOAD  # the user's file is only read
    report = load_pretrained(build_model("resnet18", 2), "tiny")
    assert report.source == str(home / "weights" / "tiny" / "w.pth") and len(report.loaded) > 100


def test_without_a_published_checksum_the_first_fetch_is_recorded_and_enforced(server, home, tmp_path):
    _sources(home, tofu={"url": f"{server}/w.pth"})
    assert weightcache.expected_checksum(registry.get_source("tofu"))[2] == "none yet"
    weightcache.fetch("tofu", progress=False)
    assert weightcache.expected_checksum(registry.get_source("tofu")) == (SHA, len(PAYLOAD), "recorded")
    # A cached file that changed afterwards (disk corruption, a hand edit) is refused at use.
    cached = home / "weights" / "tofu" / "w.pth"
    cached.write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))
    with pytest.raises(CacxrError, match=f"{cached}: checksum mismatch for weights 'tofu'.*the recorded {SHA[:16]}"):
        load_pretrained(build_model("resnet18", 2), "tofu")


def test_torchvision_entries_carry_the_published_prefix_and_a_hub_file_is_verified(home):
    source = registry.resolve_source("imagenet", "resnet18")
    assert source.name == "imagenet-resnet18" and source.sha256 == "f37072fd"
    assert source.url == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert registry.get_source("imagenet-densenet121").url.endswith("densenet121-a639ec97.pth")
    assert registry.get_source("xrv-densenet121-all").intensity == "xrv"
    hub = imagenet_file("resnet18")  # a file in torch's hub cache that is not torchvision's
    hub.parent.mkdir(parents=True)
    hub.write_bytes(PAYLOAD)
    with pytest.raises(CacxrError, match=f"{hub}: checksum mismatch for weights 'imagenet-resnet18'.*published f37072fd"):
        load_pretrained(build_model("resnet18", 2), "imagenet")


def test_weights_add_declares_a_source_that_fetch_then_verifies(server, home):
    code, out = _cli("weights", "add", "mine", f"{server}/w.pth", "--sha256", SHA.upper(), "--size", str(len(PAYLOAD)),
                     "--arch", "resnet18")  # fmt: skip
    assert code == 0 and str(home / "sources.toml") in out
    source = registry.get_source("mine")
    assert (source.url, source.sha256, source.size, source.arch) == (f"{server}/w.pth", SHA, len(PAYLOAD), "resnet18")
    assert _cli("weights", "fetch", "mine", "--no-progress")[0] == 0
    _cli("weights", "add", "bad-copy", f"{server}/w.pth", "--sha256", "ab" * 32)
    assert _cli("weights", "fetch", "bad-copy", "--no-progress")[0] == 2  # a checksum that does not match
    assert _cache_listing(home) == ["mine/w.pth"]
    with pytest.raises(CacxrError, match="'mine': the name is already in use"):
        registry.add_source("mine", f"{server}/w.pth")
    with pytest.raises(CacxrError, match="--sha256 xyz: expected 8 to 64 hex digits"):
        registry.add_source("other", f"{server}/w.pth", sha256="xyz")
    with pytest.raises(CacxrError, match="'../up': a name is letters, digits"):
        registry.add_source("../up", f"{server}/w.pth")
    with pytest.raises(CacxrError, match="not an http"):
        registry.add_source("other", "ftp://host/w.pth")


def test_a_bad_sources_file_is_refused_naming_it(home):
    _sources(home, odd={"url": "http://x/w.pth", "sha": "abc"})
    with pytest.raises(CacxrError, match=r"sources.toml: \[odd\] has unknown key\(s\) sha"):
        registry.all_sources()


# ---- weights and profile agree (issue 11, deliverable 5) ----------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "profile", "expected"),
    [
        ("xrv-densenet121-all", None, "xrv"),  # no profile chosen: it follows the weights
        ("xrv-densenet121-all", "xrv", "xrv"),
        ("imagenet", None, "seed"),
        ("imagenet", "clahe", "clahe"),  # clahe delivers the seed intensity scale
        ("none", None, "seed"),
        ("none", "xrv", "xrv"),
        ("/some/file.pth", "clahe", "clahe"),
    ],
)
def test_the_profile_follows_the_weights_unless_chosen(weights, profile, expected):
    assert registry.check_profile(weights, profile) == expected


@pytest.mark.parametrize(
    ("weights", "profile", "use"),
    [("xrv-densenet121-all", "seed", "xrv"), ("xrv-densenet121-all=/x.safetensors", "clahe", "xrv"), ("imagenet", "xrv", "seed or clahe")],
)
def test_weights_whose_intensity_the_profile_does_not_deliver_are_refused(weights, profile, use):
    from cacxr.config import TrainConfig

    with pytest.raises(CacxrError, match=f"expects the .* intensity contract but --profile {profile} .*: use --profile {use} "):
        TrainConfig(weights=weights, profile=profile).resolved()


def test_every_profile_has_an_intensity_contract():
    from cacxr.pixels import PROFILES

    assert set(registry.PROFILE_INTENSITY) == set(PROFILES)


def test_train_refuses_uncached_weights_offline_before_touching_the_data(cohort, home, tmp_path, monkeypatch):
    """A weight name that cannot be fetched fails first, not after hours of ingest and preprocessing."""
    _sources(home, tiny={"url": "http://127.0.0.1:9/w.pth", "sha256": SHA})
    monkeypatch.setenv("CACXR_OFFLINE", "1")
    run = tmp_path / "run"
    with pytest.raises(CacxrError, match=r"weights 'tiny' are not in the cache .* CACXR_OFFLINE is set"):
        train_run(TrainConfig(data=str(cohort), out=str(run), arch="resnet18", weights="tiny", epochs=1, image_size=64, progress=False))
    assert not (run / "ingest").exists() and not (tmp_path / "cacxr-cache").exists()
