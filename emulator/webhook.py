"""A local stand-in for a Slack incoming webhook: a real HTTP server on 127.0.0.1 that records what it was sent.

Answers like Slack does: 200 `ok` for a JSON post to its webhook path, 400 `invalid_payload` for a body that is not
JSON, 404 `no_service` for any other path. It can be told to answer 429 (with Retry-After) a number of times, or an
error status forever, so tests and the demo exercise the notifier's real HTTP client and its real retries.

Run it on its own with `python -m emulator.webhook` (prints the URL, prints each message, stops on Ctrl-C).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Attempt:
    """One request as the receiver saw it, and what it answered."""

    path: str
    status: int
    body: bytes


@dataclass
class WebhookReceiver:
    """What the local webhook received, and how it should answer next. Safe to read from the test thread."""

    url: str = ""
    path: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    _rate_limited: int = 0
    _retry_after: int = 0
    _failing_status: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def rate_limit(self, times: int, *, retry_after: int = 0) -> None:
        """Answer the next `times` posts with 429 and `Retry-After: <retry_after>`, as Slack does when throttling."""
        with self._lock:
            self._rate_limited = times
            self._retry_after = retry_after

    def fail_forever(self, status: int = 500) -> None:
        """Answer every post with `status` until `recover()`."""
        with self._lock:
            self._failing_status = status

    def recover(self) -> None:
        with self._lock:
            self._rate_limited = 0
            self._failing_status = None

    def clear(self) -> None:
        with self._lock:
            self.attempts.clear()
            self.posts.clear()

    def received(self) -> list[dict[str, Any]]:
        """A copy of the JSON bodies accepted so far (the server thread may still be appending)."""
        with self._lock:
            return list(self.posts)

    def _answer(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers: dict[str, str] = {}
        with self._lock:
            if path != self.path:
                status, reply = 404, b"no_service"
            elif self._failing_status is not None:
                status, reply = self._failing_status, b"internal_error"
            elif self._rate_limited > 0:
                self._rate_limited -= 1
                status, reply = 429, b"rate_limited"
                headers["Retry-After"] = str(self._retry_after)
            else:
                try:
                    document = json.loads(body)
                except ValueError:
                    document = None
                if isinstance(document, dict):
                    self.posts.append(document)
                    status, reply = 200, b"ok"
                else:
                    status, reply = 400, b"invalid_payload"
            self.attempts.append(Attempt(path=path, status=status, body=body))
            return status, headers, reply


def _handler_for(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the name http.server dispatches to
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            status, headers, reply = receiver._answer(self.path, body)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(reply)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            # The default writes every request line, webhook path included, to stderr: the path is the secret.
            return

    return _Handler


@contextmanager
def start_webhook() -> Iterator[WebhookReceiver]:
    """Serve a fresh webhook on a free port of 127.0.0.1 (a random, Slack-shaped path); stop it on exit."""
    token = secrets.token_urlsafe(18)
    receiver = WebhookReceiver(path=f"/services/T0LOCAL00/B0LOCAL00/{token}")
    server = ThreadingHTTPServer((HOST, 0), _handler_for(receiver))
    server.daemon_threads = True
    receiver.url = f"http://{HOST}:{server.server_address[1]}{receiver.path}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="webhook-emulator", daemon=True
    )
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main() -> None:  # pragma: no cover - a manual tool
    import time

    with start_webhook() as receiver:
        print(f"Slack webhook emulator listening at {receiver.url}", flush=True)
        seen = 0
        try:
            while True:
                time.sleep(0.5)
                posts = receiver.received()
                for post in posts[seen:]:
                    print(json.dumps(post, indent=2), flush=True)
                seen = len(posts)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
