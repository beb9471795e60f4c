"""The service against hostile clients (issue 21, item 6: the truncated multipart body)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cacxr.serving import create_app


@pytest.fixture(scope="module")
def client(run) -> TestClient:
    return TestClient(create_app(run, explain_steps=2))


def _png() -> bytes:
    """A real chest radiograph export (the view gate refuses a synthetic pattern as not a radiograph)."""
    from conftest import REAL_CXR_DIR

    path = REAL_CXR_DIR / "txv_nih_00000001_000.png"
    if not path.is_file():
        pytest.skip(f"real radiographs not found at {REAL_CXR_DIR}")
    return path.read_bytes()


def _body(payload: bytes, closing: bool) -> bytes:
    head = (
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    return head + payload + (b"\r\n--XyZ--\r\n" if closing else b"")


def test_a_truncated_multipart_body_is_refused(client: TestClient) -> None:
    headers = {"content-type": "multipart/form-data; boundary=XyZ"}
    answer = client.post("/predict", content=_body(_png(), closing=False), headers=headers)
    assert answer.status_code == 400 and "closing boundary" in answer.text, answer.text
    whole = client.post("/predict", content=_body(_png(), closing=True), headers=headers)
    assert whole.status_code == 200, whole.text


@pytest.mark.timeout(60)
def test_a_trickled_upload_meets_an_overall_deadline(run) -> None:
    import socket
    import time

    from cacxr.serving.server import serve_in_background

    with serve_in_background(create_app(run, read_timeout_s=2.0, request_timeout_s=3.0)) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n\r\n'
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {len(body) + 100}\r\n\r\n"
        ).encode()
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            started = time.monotonic()
            sock.sendall(head + body)
            sock.setblocking(False)
            answer = b""
            for _ in range(60):  # one byte every 0.5 s: never a 2 s stall
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                time.sleep(0.5)
                try:
                    answer += sock.recv(4096)
                except BlockingIOError:
                    continue
                if answer:
                    break
            waited = time.monotonic() - started
            sock.setblocking(True)
            sock.settimeout(5)
            while b"deadline" not in answer and (more := sock.recv(4096)):  # the body may come apart
                answer += more
        assert answer.startswith(b"HTTP/1.1 408") and b"request deadline" in answer, answer
        assert waited < 8
