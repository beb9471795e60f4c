"""`cacxr serve RUN [--host 127.0.0.1] [--port 8000] ...`: HTTP API and web page for uploads."""

from __future__ import annotations

import argparse
import contextlib
import sys

from cacxr.commands import add_model_argument
from cacxr.core import CacxrError
from cacxr.serving import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's flags."""
    parser.add_argument("run_dir", metavar="RUN", help="a trained run folder (cacxr train --out)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default %(default)s: this machine only; 0.0.0.0 opens it to the network)",
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=50.0,
        metavar="MB",
        help="largest accepted upload, refused with HTTP 413 while reading (default %(default)g)",
    )
    add_model_argument(parser, "serve")
    parser.add_argument(
        "--workers-threads",
        type=int,
        default=2,
        metavar="N",
        help="uploads decoded and scored at once; more wait in a queue (default %(default)s)",
    )
    parser.add_argument(
        "--explain-steps",
        type=int,
        default=32,
        metavar="N",
        help="default integrated-gradients steps of /explain (default %(default)s)",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds an upload may stall before it is answered 408 (default %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds a whole upload may take, however steadily it trickles, before it is answered 408 "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT_S,
        metavar="S",
        help="seconds a client has to send a request's headers, from connecting or from the previous answer; "
        "a slower one is answered 408 and closed, an idle one closed (default %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections open at once (fewer if the open-file limit, ulimit -n, is low); past it a new "
        "connection closes the oldest idle one, or is answered 503 when all are busy (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve the run until interrupted (Ctrl-C or SIGTERM: a clean stop, exit code 0)."""
    from cacxr.serving import serve

    if args.workers_threads < 1:
        raise CacxrError(f"--workers-threads must be at least 1 (got {args.workers_threads})")
    if args.explain_steps < 1:
        raise CacxrError(f"--explain-steps must be at least 1 (got {args.explain_steps})")
    # uvicorn re-raises Ctrl-C after its graceful shutdown: for a server that is the normal way to stop.
    with contextlib.suppress(KeyboardInterrupt):
        serve(
            args.run_dir,
            host=args.host,
            port=args.port,
            fold=args.fold,
            max_upload_mb=args.max_upload_mb,
            worker_threads=args.workers_threads,
            explain_steps=args.explain_steps,
            read_timeout_s=args.read_timeout,
            request_timeout_s=args.request_timeout,
            header_timeout_s=args.header_timeout,
            max_connections=args.max_connections,
        )
    print("cacxr serve: stopped", file=sys.stderr)
    return 0
