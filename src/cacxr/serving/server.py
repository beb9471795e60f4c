"""Building the app for a run and running it with uvicorn (in the foreground, or in a background thread)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cacxr.core import CacxrError, missing_dependency
from cacxr.serving.model import RunModel, ServedModel

if TYPE_CHECKING:
    from fastapi import FastAPI

    from cacxr.use import LoadedRun

__all__ = [
    "DEFAULT_HEADER_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "create_app",
    "serve",
    "serve_in_background",
    "is_loopback",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 50.0
# 50 MP: well above any chest detector (about 4300 x 4300 = 18.5 MP), far below a decompression bomb.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# A request head (request line and headers) must be complete this long after the connection opened or the
# previous answer ended (nginx: 60 s; a browser sends it at once, and closes its own idle spares after 10 s).
DEFAULT_HEADER_TIMEOUT_S = 10.0
# Connections open at once (fewer when the open-file limit is low); one model scores a few uploads at a time.
DEFAULT_MAX_CONNECTIONS = 200
_APP_MODULES = (("fastapi", "fastapi"), ("python_multipart", "python-multipart"))


def _require(*modules: tuple[str, str]) -> None:
    """Raise the install hint for the first missing ``(module, package)`` of the ``serve`` extra."""
    import importlib.util

    for module, package in modules:
        if importlib.util.find_spec(module) is None:
            raise missing_dependency(package, "serve")


def create_app(
    run: LoadedRun | ServedModel,
    *,
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    worker_threads: int = 2,
    explain_steps: int = 32,
    read_timeout_s: float = 30.0,
    request_timeout_s: float = 120.0,
) -> FastAPI:
    """Build the FastAPI app serving a trained run.

    Args:
        run: a loaded run (``cacxr.use.loaded_run.load_run``), or any :class:`ServedModel`.
        max_upload_bytes: the largest accepted upload (enforced while reading; 413 above it).
        max_image_pixels: the largest accepted rows x columns, checked before decoding (413 above it).
        worker_threads: uploads decoded and scored at once; further uploads wait in a queue.
        explain_steps: default integrated-gradients steps of ``/explain``.
        read_timeout_s: seconds an upload may stall before it is answered 408.
        request_timeout_s: seconds a whole upload may take, however steadily it trickles (408 after).

    Returns:
        The app (run it with uvicorn, or test it with ``fastapi.testclient.TestClient``).

    Raises:
        CacxrError: a limit below 1, or fastapi / python-multipart not installed.
    """
    _require(*_APP_MODULES)
    from cacxr.serving.app import Limits, build_app

    limits = Limits(
        max_upload_bytes=max_upload_bytes,
        max_image_pixels=max_image_pixels,
        worker_threads=worker_threads,
        explain_steps=explain_steps,
        read_timeout_s=read_timeout_s,
        request_timeout_s=request_timeout_s,
    )
    model = run if isinstance(run, ServedModel) else RunModel(run)
    return build_app(model, limits)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface only (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a readable error (uvicorn itself would exit the process)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CacxrError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CacxrError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _check_connection_limits(header_timeout_s: float, max_connections: int) -> None:
    if not header_timeout_s > 0:
        raise CacxrError(f"--header-timeout must be positive (got {header_timeout_s:g})")
    if max_connections < 1:
        raise CacxrError(f"--max-connections must be at least 1 (got {max_connections})")


def _server(app: FastAPI, access_log: bool, header_timeout_s: float, max_connections: int):
    """A uvicorn server whose connections a slow or idle client cannot hold (cacxr.serving.connections)."""
    import uvicorn

    from cacxr.serving.connections import ACCEPT_BATCH, GuardedServer, fd_limits, guarded_protocol

    connections = fd_limits(max_connections)
    if connections < max_connections:
        logger.warning(
            "at most %d connections at once, not %d: the open-file limit is low (raise it with ulimit -n)",
            connections,
            max_connections,
        )
    config = uvicorn.Config(
        app,
        log_level="info",
        access_log=access_log,
        server_header=False,
        timeout_graceful_shutdown=5,
        http=guarded_protocol(header_timeout_s, connections),
        ws="none",  # no websocket routes: an Upgrade header is answered as plain HTTP
        backlog=ACCEPT_BATCH,
    )
    return GuardedServer(config)


def serve(
    run_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    fold: int | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    worker_threads: int = 2,
    explain_steps: int = 32,
    read_timeout_s: float = 30.0,
    request_timeout_s: float = 120.0,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Load a run once and serve it with uvicorn until interrupted (Ctrl-C).

    Args:
        run_dir: a trained run folder.
        host: the interface to bind; loopback only unless told otherwise.
        port: the TCP port (0: any free port).
        fold: serve fold ``fold``'s model only (default: the ensemble of all folds).
        max_upload_mb: the largest accepted upload, in MB (2**20 bytes).
        worker_threads: uploads decoded and scored at once.
        explain_steps: default integrated-gradients steps of ``/explain``.
        read_timeout_s: seconds an upload may stall before it is answered 408.
        request_timeout_s: seconds a whole upload may take, however steadily it trickles (408 after).
        header_timeout_s: seconds a client has to send a request's head (408 and closed after).
        max_connections: connections open at once; past it a new one closes the oldest idle one.

    Raises:
        CacxrError: a bad run folder or option, a missing dependency, or an address that cannot be bound.
    """
    _require(*_APP_MODULES, ("uvicorn", "uvicorn"))
    from cacxr.use import load_run

    if max_upload_mb <= 0:
        raise CacxrError(f"--max-upload-mb must be positive (got {max_upload_mb:g})")
    if not 0 <= port <= 65535:
        raise CacxrError(f"--port must be between 0 and 65535 (got {port})")
    _check_connection_limits(header_timeout_s, max_connections)
    app = create_app(
        load_run(run_dir, fold=fold),
        max_upload_bytes=int(max_upload_mb * 2**20),
        worker_threads=worker_threads,
        explain_steps=explain_steps,
        read_timeout_s=read_timeout_s,
        request_timeout_s=request_timeout_s,
    )
    from cacxr.serving.connections import throttled_logs

    with _bind(host, port) as sock:
        if not is_loopback(host):
            logger.warning("listening on %s: reachable from other machines, and there is no login", host)
        logger.info("cacxr serve: open %s/ in a browser (API docs at %s/docs)", _url(sock), _url(sock))
        server = _server(app, True, header_timeout_s, max_connections)
        with throttled_logs():
            server.run(sockets=[sock])


@contextlib.contextmanager
def serve_in_background(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 0,
    start_timeout: float = 30.0,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> Iterator[str]:
    """Run an app with uvicorn in a background thread (for tests, benchmarks and notebooks).

    Args:
        app: the app (:func:`create_app`).
        host: the interface (loopback by default).
        port: the port (0: a free one, chosen by the system).
        start_timeout: seconds to wait for the server to start.
        header_timeout_s: seconds a client has to send a request's head (408 and closed after).
        max_connections: connections open at once; past it a new one closes the oldest idle one.

    Yields:
        The server's base URL, e.g. ``http://127.0.0.1:53817``; the server stops when the block ends.

    Raises:
        CacxrError: the server did not start in time, or a limit below 1.
    """
    _require(("uvicorn", "uvicorn"))
    from cacxr.serving.connections import throttled_logs

    _check_connection_limits(header_timeout_s, max_connections)
    with _bind(host, port) as sock, throttled_logs():
        server = _server(app, False, header_timeout_s, max_connections)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="cacxr-serve", daemon=True
        )
        thread.start()
        try:
            deadline = time.monotonic() + start_timeout
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise CacxrError(f"the server on {_url(sock)} did not start within {start_timeout:g} s")
                time.sleep(0.02)
            yield _url(sock)
        finally:
            server.should_exit = True
            thread.join(timeout=start_timeout)
