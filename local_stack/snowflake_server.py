"""fakesnow's Snowflake stand-in as a local HTTP server whose stages reach a given S3 endpoint.

`load.py --copy` talks to it with the real connector (SNOWFLAKE_HOST=127.0.0.1,
SNOWFLAKE_PORT=<port>, SNOWFLAKE_PROTOCOL=http). The server runs in this process, in a thread:
fakesnow's DuckDB gets an s3fs filesystem pointed at `s3_endpoint` (moto's server, say), and
the worksheets run with the stand-in's adjustments of `local_stack.fakesnow_compat`.

    python -m local_stack.snowflake_server --s3-endpoint http://127.0.0.1:5000 [--port 8085]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import fakesnow.server
import s3fs
import uvicorn

from local_stack.fakesnow_compat import Report, patched


@dataclass(frozen=True)
class Server:
    """A running stand-in: connector keyword arguments, and what it skipped or replaced."""

    host: str
    port: int
    report: Report

    def settings(self) -> dict[str, str]:
        """The SNOWFLAKE_* settings that reach it (any account, user and password work)."""
        return {
            "SNOWFLAKE_ACCOUNT": "fakesnow",
            "SNOWFLAKE_USER": "fake",
            "SNOWFLAKE_PASSWORD": "snow",
            "SNOWFLAKE_HOST": self.host,
            "SNOWFLAKE_PORT": str(self.port),
            "SNOWFLAKE_PROTOCOL": "http",
        }


def s3_filesystem(
    s3_endpoint: str, key: str | None = None, secret: str | None = None
) -> s3fs.S3FileSystem:
    """s3fs on the endpoint, with these credentials or the AWS_* ones of the environment."""
    return s3fs.S3FileSystem(
        endpoint_url=s3_endpoint,
        key=key or os.environ.get("AWS_ACCESS_KEY_ID"),
        secret=secret or os.environ.get("AWS_SECRET_ACCESS_KEY"),
        client_kwargs={"region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")},
        use_listings_cache=False,
    )


@contextmanager
def serve(
    s3_endpoint: str,
    port: int | None = None,
    host: str = "127.0.0.1",
    credentials: tuple[str, str] | None = None,
) -> Iterator[Server]:
    """Start the stand-in (in a thread of this process) and stop it on exit."""
    filesystem = s3_filesystem(s3_endpoint, *(credentials or (None, None)))
    duck = fakesnow.server.shared_fs.duck_conn
    duck.register_filesystem(filesystem)
    try:
        with patched(filesystem) as report, _uvicorn(host, port) as bound:
            yield Server(host=host, port=bound, report=report)
    finally:
        duck.unregister_filesystem(filesystem.protocol[0])


@contextmanager
def _uvicorn(host: str, port: int | None) -> Iterator[int]:
    """fakesnow's app on uvicorn in a daemon thread (as `fakesnow.server()` does; that function
    is shadowed by the `fakesnow.server` module once the module is imported)."""
    if not port:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    config = uvicorn.Config(fakesnow.server.app, host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fakesnow server", daemon=True)
    thread.start()
    while thread.is_alive() and not server.started:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError(f"fakesnow server did not start on {host}:{port}")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s3-endpoint", required=True, help="e.g. http://127.0.0.1:5000")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    with serve(args.s3_endpoint, port=args.port) as server:
        for name, value in server.settings().items():
            print(f"{name}={value}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
