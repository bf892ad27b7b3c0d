"""HTTP over a Unix socket: how the tools reach a management API that listens on one.

Replicas behind the balancer run with token authorization off (HAProxy checks the clients' key).
On loopback TCP their management API would then answer any local user: scale to 0, POST
/workflows. TorchServe 0.12 also binds it to a Unix socket (`management_address=unix:/PATH`,
Netty's epoll domain socket); in a folder only the server's user may enter (mode 0700), the
kernel refuses everyone else at connect(). requests cannot speak over a Unix socket without an
extra package, so this module sends the few management calls through http.client.
"""

from __future__ import annotations

import http.client
import os
import socket
from pathlib import Path
from urllib.parse import urlencode

import requests
from requests.structures import CaseInsensitiveDict

SCHEME = "unix:"
# In the server's working directory; the socket TorchServe creates inside is mode 0755 itself,
# so the folder's 0700 is what keeps other users out.
PRIVATE_DIR = "private"
SOCKET_NAME = "management.sock"
# sockaddr_un's path on Linux holds 107 characters and a NUL.
MAX_SOCKET_PATH = 107


def is_unix(address: str) -> bool:
    return address.startswith(SCHEME)


def socket_path(address: str) -> Path:
    """`unix:/PATH` -> /PATH."""
    return Path(address.removeprefix(SCHEME))


def private_socket(workdir: str | Path) -> Path:
    """The management socket's path in `workdir`/private/, that folder made (or kept) mode 0700
    and a socket left by a previous run removed (TorchServe cannot bind over it)."""
    folder = Path(workdir).resolve() / PRIVATE_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # an existing folder keeps its mode otherwise
    path = folder / SOCKET_NAME
    if len(str(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"{path}: too long for a Unix socket; use a shorter working directory")
    path.unlink(missing_ok=True)
    return path


class UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection whose transport is a Unix stream socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(address: str, method: str, path: str, params: dict | None = None,
            headers: dict | None = None, timeout: float = 10.0) -> requests.Response:
    """One call to the server at `address` (`unix:/PATH`); the answer as a requests.Response, so
    callers treat both transports alike. Transport failures raise OSError (refused, no socket,
    TimeoutError)."""
    target = path + (f"?{urlencode(params)}" if params else "")
    conn = UnixConnection(socket_path(address), timeout)
    try:
        conn.request(method, target, headers=headers or {})
        answer = conn.getresponse()
        resp = requests.Response()
        resp.status_code, resp.reason = answer.status, answer.reason
        resp.headers = CaseInsensitiveDict(answer.getheaders())
        resp._content = answer.read()
    except http.client.HTTPException as exc:  # a malformed answer: a transport failure here
        raise ConnectionError(f"{address}: {exc}") from exc
    finally:
        conn.close()
    resp.url, resp.encoding = f"{address}{target}", "utf-8"
    return resp
