"""Slow and idle clients against a real `cacxr serve` (issue 21, item 6).

One server runs in a child process with at most 256 open files (the limit under which a probe's 1,100 idle
connections made /health fail and wrote 303 MB of "Too many open files" log in 35 s), given its limits on the
command line: a 3 s head deadline, a 2 s upload deadline, at most 30 connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cacxr.cli import build_parser, main
from cacxr.serving.connections import throttled_logs

resource = pytest.importorskip("resource")  # the open-file limit of the child (POSIX)

HEADER_TIMEOUT_S, REQUEST_TIMEOUT_S, MAX_CONNECTIONS, OPEN_FILES = 3.0, 2.0, 30, 256


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory) -> tuple[str, int, Path]:
    """`cacxr serve` on a free port; yields its host, port and log file; stops it with Ctrl-C afterwards."""
    log = tmp_path_factory.mktemp("serve_slow") / "serve.log"

    def few_open_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))

    command = [sys.executable, "-m", "cacxr", "serve", str(run_dir), "--port", "0"]
    command += ["--header-timeout", f"{HEADER_TIMEOUT_S:g}", "--request-timeout", f"{REQUEST_TIMEOUT_S:g}"]
    command += ["--read-timeout", "10", "--max-connections", str(MAX_CONNECTIONS)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            preexec_fn=few_open_files,
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"open http://127\.0\.0\.1:(\d+)/", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        port = int(found.group(1))
        while True:  # the URL is logged just before uvicorn starts
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield "127.0.0.1", port, log
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()


def _health_ms(host: str, port: int) -> float:
    """/health's answer time; fails if it is not a 200 within 2 s."""
    started = time.monotonic()
    answer = httpx.get(f"http://{host}:{port}/health", timeout=2)
    assert answer.status_code == 200, answer.text
    return (time.monotonic() - started) * 1000


def _readable(sock: socket.socket) -> bool:
    """The server sent something, or closed the connection."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _closed_by_server(sock: socket.socket) -> bool:
    if not _readable(sock):
        return False
    try:
        return sock.recv(4096, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def _answer(sock: socket.socket, wait_s: float, until: bytes | None = None) -> bytes:
    """What the server sends until it closes the connection, or sends ``until`` (a timeout if neither)."""
    sock.settimeout(wait_s)
    answer = b""
    while (until is None or until not in answer) and (more := sock.recv(4096)):
        answer += more
    return answer


def test_slow_and_silent_request_heads_are_closed(server) -> None:
    host, port, _ = server
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 100
    trickled = [socket.create_connection((host, port)) for _ in range(10)]
    silent = socket.create_connection((host, port))
    answered_at = None
    for i in range(int(HEADER_TIMEOUT_S / 0.25) + 6):  # a byte every 0.25 s: never a pause, never the end
        for sock in trickled:
            sock.sendall(head[i : i + 1])  # also once after the answer: it must not be lost to a reset
        time.sleep(0.25)
        if answered_at is not None:
            break
        if all(_readable(s) for s in trickled):
            answered_at = i
    for sock in trickled:
        answer = _answer(sock, wait_s=5)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
        assert b"the request head did not arrive within 3 s" in answer
        sock.close()
    assert _answer(silent, wait_s=5) == b""  # nothing asked, nothing answered: just closed
    silent.close()
    _health_ms(host, port)


def test_an_idle_flood_leaves_health_answering_and_the_log_short(server) -> None:
    host, port, log = server
    before = len(log.read_text().splitlines())
    flood = [socket.create_connection((host, port), timeout=5) for _ in range(400)]
    try:
        for _ in range(10):  # each a fresh connection, while 400 are idle
            _health_ms(host, port)
        # The server kept at most MAX_CONNECTIONS open: the oldest idle ones were closed as new ones came.
        still_open = sum(not _closed_by_server(sock) for sock in flood)
        assert still_open <= MAX_CONNECTIONS, still_open
    finally:
        for sock in flood:
            sock.close()
    text = log.read_text()
    lines = text.splitlines()[before:]
    assert len(lines) < 40, "\n".join(lines[:60])  # 10 access lines, about 370 closings summed up in 1 or 2
    assert "Traceback" not in text and "Too many open files" not in text
    assert any("closed the oldest connection waiting for a request head" in line for line in lines)


def test_a_trickled_upload_meets_the_deadline_given_on_the_command_line(server) -> None:
    host, port, _ = server
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n\r\n'
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body) + 100}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(head + body)
        for _ in range(int(REQUEST_TIMEOUT_S / 0.25) + 8):  # a byte every 0.25 s: never a 10 s stall
            if _readable(sock):
                break
            with contextlib.suppress(OSError):
                sock.sendall(b"x")
            time.sleep(0.25)
        answer = _answer(sock, wait_s=5, until=b"request deadline")
    assert answer.startswith(b"HTTP/1.1 408") and b"request deadline" in answer, answer


def test_accept_errors_are_logged_once_per_interval(caplog) -> None:
    """asyncio's own handler of a failed accept, 1,000 times: one line, then one line with the count."""
    loop = asyncio.new_event_loop()
    now = [0.0]
    error = OSError(24, "Too many open files")
    try:
        with throttled_logs(every_s=10) as filters, caplog.at_level(logging.ERROR, logger="asyncio"):
            filters["asyncio"].clock = lambda: now[0]
            for _ in range(1000):
                loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": error})
            now[0] = 10.5
            loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": error})
            loop.call_exception_handler({"message": "Task was destroyed but it is pending!"})
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records] == [
        "socket.accept() out of system resource: [Errno 24] Too many open files",
        "socket.accept() out of system resource: [Errno 24] Too many open files"
        " (999 more like this since the last such line)",
        "Task was destroyed but it is pending!",  # other lines pass as they are
    ]
    assert all(r.exc_info is None for r in caplog.records[:2])
    assert not logging.getLogger("asyncio").filters  # removed when the server stops


def test_connection_flags_parse_and_are_checked(run_dir, capsys) -> None:
    args = build_parser("serve").parse_args(["serve", "R"])
    assert (args.request_timeout, args.header_timeout, args.max_connections) == (120.0, 10.0, 200)
    given = ["serve", "R", "--request-timeout", "5", "--header-timeout", "2", "--max-connections", "7"]
    args = build_parser("serve").parse_args(given)
    assert (args.request_timeout, args.header_timeout, args.max_connections) == (5.0, 2.0, 7)
    assert main(["serve", str(run_dir), "--header-timeout", "0"]) == 2
    assert "--header-timeout must be positive (got 0)" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--max-connections", "0"]) == 2
    assert "--max-connections must be at least 1 (got 0)" in capsys.readouterr().err


def test_past_the_cap_the_oldest_waiting_connection_makes_room_or_a_new_one_is_answered_503(run) -> None:
    from cacxr.serving import create_app, serve_in_background

    app = create_app(run, read_timeout_s=5, request_timeout_s=5)
    with serve_in_background(app, header_timeout_s=5, max_connections=8) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        partial = socket.create_connection((host, int(port)))
        partial.sendall(b"GET /health HT")
        time.sleep(0.2)  # read by the server: waiting for the rest of its head
        busy = []
        for _ in range(8):  # uploads announcing 1 MB and sending none of it (answered 408 after 5 s)
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n")
            sock.sendall(b"Content-Length: 1048576\r\n\r\n")
            busy.append(sock)
        answer = _answer(partial, wait_s=3)
        assert answer.startswith(b"HTTP/1.1 408") and b"closed for a new connection" in answer, answer
        time.sleep(0.2)
        with socket.create_connection((host, int(port))) as extra:  # all 8 busy: nothing to close for it
            answer = _answer(extra, wait_s=3)
        assert answer.startswith(b"HTTP/1.1 503") and b"8 connections open" in answer, answer
        for sock in [partial, *busy]:
            sock.close()
