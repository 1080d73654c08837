"""A tiny HTTP backend for demo and test onion services: it answers with its node's name.

Run as ``python -m onionmesh.testnet.backend --port P --name NAME``. Every GET answers
``200 text/plain`` with ``NAME\\n`` and an ``X-Onionmesh-Node: NAME`` header, so a client that
reaches a master address can tell which node served it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from onionmesh.testnet.errors import TestnetError, TestnetTimeout


class NameHandler(BaseHTTPRequestHandler):
    """Answers every GET/HEAD with the server's node name."""

    server: NamedServer

    def _send_head(self) -> bytes:
        body = f"{self.server.node_name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Onionmesh-Node", self.server.node_name)
        self.end_headers()
        return body

    def do_GET(self) -> None:
        self.wfile.write(self._send_head())

    def do_HEAD(self) -> None:
        self._send_head()

    def log_message(self, format: str, *args: object) -> None:
        # One line per request on stderr is noise in test logs; keep quiet.
        return


class NamedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows the name it answers with."""

    daemon_threads = True

    def __init__(self, port: int, node_name: str) -> None:
        self.node_name = node_name
        super().__init__(("127.0.0.1", port), NameHandler)


def start_backend_process(name: str, port: int, log_path: Path | None = None) -> subprocess.Popen:
    """Start the backend as a child process (own session) and wait until it accepts."""
    stderr = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "onionmesh.testnet.backend",
                "--port",
                str(port),
                "--name",
                name,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    finally:
        if log_path is not None:
            stderr.close()
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TestnetError(f"backend {name!r} exited with {proc.returncode} on port {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise TestnetTimeout(f"backend {name!r} did not accept connections on port {port} in 15 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HTTP backend answering with its node name")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    server = NamedServer(args.port, args.name)
    # SIGTERM from the harness: leave serve_forever cleanly instead of a traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
