"""A moto server on 127.0.0.1, in this process, that the real handlers reach through AWS_ENDPOINT_URL.

In-process (ThreadedMotoServer) on purpose: `teach_moto()` patches moto's code, and `fleet.backdate_launch` edits
moto's in-memory state, and both only reach a server that runs in the same interpreter.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from emulator import ACCOUNT, REGION
from emulator.moto_ext import teach_moto

HOST = "127.0.0.1"
READY_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class LocalAws:
    endpoint_url: str
    account: str = ACCOUNT
    region: str = REGION


def _wait_until_answering(endpoint_url: str, timeout: float) -> None:
    # The thread is listening once start() returns, but a first request proves the WSGI app is wired up too.
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint_url}/moto-api/data.json", timeout=2):  # noqa: S310 - our own URL
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the moto server at {endpoint_url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.05)


@contextmanager
def start_server() -> Iterator[LocalAws]:
    """Start a taught moto server on a free port of 127.0.0.1; stop it on exit, whatever happened inside."""
    from moto.server import ThreadedMotoServer  # moto costs ~300 ms to import: only when a server is wanted

    teach_moto()
    # werkzeug logs every request to stderr; the demo and tests want their own output readable.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # Port 0: the OS picks a free port at bind time, so there is no race with a probe socket.
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        _wait_until_answering(endpoint_url, READY_TIMEOUT_SECONDS)
        yield LocalAws(endpoint_url=endpoint_url)
    finally:
        server.stop()


def use_endpoint(endpoint_url: str, *, region: str = REGION) -> None:
    """Point every boto3 client (ours and the product's) at the emulator, with fake credentials."""
    from imds_enforcer.aws import clients

    os.environ["AWS_ENDPOINT_URL"] = endpoint_url
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"  # noqa: S105 - moto accepts any key; never a real one
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ["AWS_DEFAULT_REGION"] = region
    os.environ["AWS_REGION"] = region
    # The product caches its clients per container; they must be rebuilt to see the new endpoint.
    clients.reset_clients()
