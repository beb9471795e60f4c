"""Connections that cannot be held by slow or idle clients, and server log lines that cannot flood.

uvicorn's h11 protocol has no timeout for a request head: its keep-alive timer starts only after an answer and
restarts on every byte, so a client that connects and sends nothing, or sends its headers a byte at a time,
holds the connection for ever. Enough of them exhaust the process's file descriptors, and then asyncio logs
"socket.accept() out of system resource" with a traceback for every failed accept (Python 3.11's loop goes on
accepting after the error: ``backlog`` lines per loop turn; a probe measured 303 MB in 35 s) while ``/health``
cannot connect. :func:`guarded_protocol` adds:

- a head deadline: each request head (request line and headers) must be complete ``header_timeout_s`` after
  the connection opened or the previous answer ended, however it trickles; a late one is answered 408 (or just
  closed when nothing came) and the connection closed;
- a connection cap: past ``max_connections``, a new connection closes the oldest one still waiting for a head
  (idle, or slow; not one whose bytes wait to be read); when every connection is busy with a request, the new
  one is answered 503. New clients (``/health``) thus always get in, and the cap is kept below the open-file
  limit (:func:`fd_limits`, :class:`GuardedServer`).

:class:`Throttle` lets one log line of a kind through per interval, its traceback folded into the line, with
the count of those it held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import socket
import time
from collections.abc import Callable, Iterator

import h11
from uvicorn import Server
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ACCEPT_BATCH", "GuardedServer", "fd_limits", "guarded_protocol", "Throttle", "throttled_logs"]

logger = logging.getLogger(__name__)

HEAD_LATE = "closed a connection whose request head did not arrive within"
EVICTED = "closed the oldest connection waiting for a request"
REFUSED = "answered 503 to a new connection"
# asyncio's and uvicorn's lines that a flood of connections repeats.
_FLOODED = {
    "asyncio": ("socket.accept() out of system resource", "Exception in callback BaseSelectorEventLoop._start_serving"),
    "uvicorn.error": ("Invalid HTTP request received.",),
    __name__: (HEAD_LATE, EVICTED, REFUSED),
}
# Open files besides the connections: the listening socket, logs, the model's files, the event loop's own.
_RESERVED_FDS = 64
# asyncio takes one number for the kernel's queue of connections waiting to be accepted and for how many it
# accepts per loop turn. A long queue costs no file descriptor (a burst waits there instead of having its
# connection attempts dropped and retried a second later); short turns let each batch be counted against the
# cap (and the oldest idle connections closed) before the next batch takes more descriptors.
ACCEPT_BATCH = 16
_LINGER_S = 1.0
LISTEN_QUEUE = 2048


def fd_limits(max_connections: int) -> int:
    """The connections to keep at most: ``max_connections``, fewer when the open-file (soft) limit is low.

    Each connection may hold two files (its socket and its upload's temporary file), and about three accept
    batches of sockets wait for their protocol; with the usual limit of 1024 the default 200 fits.
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return max_connections
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(8, min(max_connections, (soft - _RESERVED_FDS - 4 * ACCEPT_BATCH) // 2))


class GuardedServer(Server):
    """uvicorn's server, its listening sockets given a long queue once asyncio has set its short batch."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or ():
            sock.listen(LISTEN_QUEUE)  # a second listen() only changes the queue's length


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a head deadline and a connection cap (pass it as ``Config(http=...)``).

    Each call makes a class with its own registry of connections waiting for a head, so two servers in one
    process do not evict each other's connections.
    """
    # Connections waiting for a request head, oldest wait first (a dict keeps insertion order).
    waiting: dict[GuardedH11, None] = {}

    class GuardedH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _lingering = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()
            if len(self.connections) > max_connections:
                self._make_room()

        def data_received(self, data: bytes) -> None:
            if self._lingering:  # answered 408 and closing: what still trickles in is dropped
                return
            super().data_received(data)
            if self._busy():
                self._head_came()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request at once
            if not self._busy():
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_came()
            super().connection_lost(exc)

        def _busy(self) -> bool:
            """A request head came and its answer is not finished."""
            return self.cycle is not None and not self.cycle.response_complete

        def _await_head(self) -> None:
            if self.transport.is_closing():
                return
            self._head_came()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_late)
            waiting[self] = None

        def _head_came(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            waiting.pop(self, None)

        def _head_late(self) -> None:
            self._head_timer = None
            waiting.pop(self, None)
            if self.transport.is_closing() or self._busy():
                return
            started = bool(self.conn.trailing_data[0])
            logger.warning("%s %g s (%s)", HEAD_LATE, header_timeout_s, "part came" if started else "nothing came")
            self._drop(f"the request head did not arrive within {header_timeout_s:g} s", linger=True)

        def _drop(self, reason: str, linger: bool = False) -> None:
            """Close a connection waiting for a head: with a 408 giving ``reason`` when part of a head came;
            without an answer when nothing came (an idle keep-alive, a browser's spare connection)."""
            self._close(408 if self.conn.trailing_data[0] else None, reason, linger)

        def _make_room(self) -> None:
            oldest = next((c for c in waiting if c is not self and not _unread(c.transport)), None)
            if oldest is not None:
                logger.warning("%s head: %d connections open (the most kept)", EVICTED, max_connections)
                waiting.pop(oldest, None)
                oldest._drop(f"closed for a new connection: the server keeps {max_connections} connections at most")
            else:
                logger.warning("%s: %d connections busy (the most kept)", REFUSED, max_connections)
                self._head_came()
                self._close(503, f"the server is busy: {max_connections} connections open; try again shortly")

        def _close(self, status: int | None, message: str, linger: bool = False) -> None:
            """Answer ``status`` with ``{"detail": message}`` (when ours to send now) and close.

            ``linger``: after an answer, close our side only and read on for a second, dropping what comes
            (nginx's lingering close): closing while a client still sends makes the kernel reset the
            connection, and the client could lose the answer. Not while making room (that needs the file).
            """
            self.connections.discard(self)  # closing: no longer counts against the cap
            if self.transport.is_closing():
                return
            with contextlib.suppress(h11.LocalProtocolError):  # an answer already begun: just close
                if status is not None and self.conn.our_state is h11.IDLE:
                    body = json.dumps({"detail": message}).encode()
                    reason = b"Request Timeout" if status == 408 else b"Service Unavailable"
                    headers = [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ]
                    for event in (
                        h11.Response(status_code=status, headers=headers, reason=reason),
                        h11.Data(data=body),
                        h11.EndOfMessage(),
                    ):
                        self.transport.write(self.conn.send(event))
                    if linger and self.transport.can_write_eof():
                        self._lingering = True
                        self.transport.write_eof()
                        self.loop.call_later(_LINGER_S, self.transport.close)
                        return
            self.transport.close()

    return GuardedH11


def _unread(transport: asyncio.BaseTransport) -> bool:
    """Whether bytes wait unread on a connection: its head is on the way, so it is not idle (during a burst
    of connections, a client's request can wait a few loop turns to be read). A peer that hung up is idle."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(select, "poll"):  # no poll on Windows
        return False
    hung_up = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | hung_up)
    events = poller.poll(0)
    return bool(events) and not events[0][1] & hung_up


class Throttle(logging.Filter):
    """Let one record per ``every_s`` seconds through for each text prefix; count the others.

    The record let through is one line: its traceback is folded into ``": <exception>"`` and the number held
    back since the last one is appended. Records with other texts pass unchanged.
    """

    def __init__(
        self, prefixes: tuple[str, ...], every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.every_s = every_s
        self.clock = clock
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        prefix = next((p for p in self.prefixes if text.startswith(p)), None)
        if prefix is None:
            return True
        now = self.clock()
        if now < self._next.get(prefix, -1.0):
            self._held[prefix] = self._held.get(prefix, 0) + 1
            return False
        self._next[prefix] = now + self.every_s
        line = text.splitlines()[0]
        if record.exc_info and record.exc_info[1] is not None:
            line += f": {record.exc_info[1]}"
        held = self._held.pop(prefix, 0)
        if held:
            line += f" ({held} more like this since the last such line)"
        record.msg, record.args, record.exc_info, record.exc_text = line, (), None, None
        return True


@contextlib.contextmanager
def throttled_logs(every_s: float = 10.0) -> Iterator[dict[str, Throttle]]:
    """Throttle the lines a flood of connections repeats (asyncio's accept errors, uvicorn's invalid requests,
    this module's closings) while the block runs; yields the filters by logger name."""
    filters = {name: Throttle(prefixes, every_s) for name, prefixes in _FLOODED.items()}
    for name, each in filters.items():
        logging.getLogger(name).addFilter(each)
    try:
        yield filters
    finally:
        for name, each in filters.items():
            logging.getLogger(name).removeFilter(each)
