"""A small token-aware client for TorchServe's inference and management APIs.

TorchServe rewrites its bearer keys into `key_file.json` (in its working directory) at every
start and when a key is renewed; server_config.KeyFile (the client library's KeySource)
re-reads the file whenever it changes.
The management API is reached over TCP or, for replicas behind the balancer, over the Unix
socket their config.properties names (`management_address=unix:/PATH`), through httpx's
Unix-socket transport.

The resend contract of a single server (no balancer in front; docs/operations.md, "Scale
workers") is the client library's (client/, image_classifier_client.contract): a prediction has
no side effect, so `predict(retries=N)` sends it again, at most N times, when TorchServe lost it
rather than refused it (500/507 "Worker died." / "Worker scaled down.", a timeout, a reset
connection) or the balancer's edge asked for it later (503 with a short Retry-After); never on
TorchServe's own 503 nor a 4xx. The library's RESEND_BUDGET is what the project's callers pass.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import requests
from image_classifier_client.contract import KEY_RENEWAL_WAIT_S, RetryPolicy, auth_refused
from PIL import Image

from scripts.ops.server_config import (
    DEFAULT_ADDRESSES,
    KEY_FILE,
    KeyFile,
    addresses,
    is_unix,
    socket_path,
)

# Raw image bodies must not go out as application/x-www-form-urlencoded (the default of many
# clients): TorchServe's frontend fails those with HTTP 500 before any handler runs.
IMAGE_HEADERS = {"Content-Type": "application/octet-stream"}


def sample_jpeg(size: int = 64) -> bytes:
    """A small valid photo-like JPEG (a gradient): cheap to classify, passes every input check.
    For probes and warm-up, which must not depend on the build's sample photos: sent as the raw
    body, in every protocol the handler reads (it recognises each request's own)."""
    img = Image.radial_gradient("L").resize((size, size)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


@dataclass
class TorchServeClient:
    inference_url: str = DEFAULT_ADDRESSES[0]
    management_url: str = DEFAULT_ADDRESSES[1]
    metrics_url: str = DEFAULT_ADDRESSES[2]
    key_file: Path | None = Path("run") / KEY_FILE
    timeout: float = 10.0
    keys: KeyFile = field(init=False, repr=False)
    unix_session: httpx.Client | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.keys = KeyFile(Path(self.key_file) if self.key_file else None)
        # Made once: each new httpx transport builds a TLS context (about 80 ms of CPU) even for
        # a socket that never speaks TLS. No connection is kept between calls: one per call, as
        # a restarted server needs.
        self.unix_session = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path(self.management_url)),
                                          limits=httpx.Limits(max_keepalive_connections=0)),
            base_url="http://localhost") if is_unix(self.management_url) else None

    def auth_headers(self, api: str) -> dict[str, str]:
        return self.keys.headers(api)

    def _send(self, method: str, url: str, api: str, session=None, headers: dict | None = None,
              **kwargs) -> requests.Response:
        """One call with the current key of `api`; resent once with the renewed key when the
        key it carried was renewed under it (scripts.ops.keys)."""
        kwargs.setdefault("timeout", self.timeout)
        return self._keyed(api, lambda keyed: (session or requests).request(
            method, url, headers={**keyed, **(headers or {})}, **kwargs))

    def _keyed(self, api: str, call) -> requests.Response:
        """call(auth headers), again once with the key re-read if the key was renewed under it."""
        for attempt in (0, 1):
            resp = call(self.auth_headers(api))
            if attempt or not auth_refused(resp.status_code, resp.text):
                return resp
            time.sleep(KEY_RENEWAL_WAIT_S)
        return resp

    def _manage(self, method: str, path: str, params: dict | None = None,
                timeout: float | None = None) -> requests.Response:
        """A management call, over TCP or the Unix socket management_url names."""
        if self.unix_session is None:
            return self._send(method, f"{self.management_url}{path}", "management",
                              params=params, timeout=timeout or self.timeout)
        return self._keyed("management", lambda keyed: _over_unix_socket(
            self.unix_session, self.management_url, method, path, params, keyed,
            timeout or self.timeout))

    def predict(self, model: str, body: bytes, headers: dict | None = None,
                session: requests.Session | None = None, retries: int = 0,
                resent: list | None = None) -> requests.Response:
        """POST one raw image; returns the response (any status). `retries`: how many times to
        resend a request TorchServe lost or the edge asked to resend later (the library's
        contract, no limit on the total time: at most retries + 1 timeouts plus the waits);
        after the last one, a timeout or reset connection raises as requests does. `resent`,
        when given, receives what each resent attempt got (status or exception name)."""
        if not retries:
            return self._post(model, body, headers, session, self.timeout)
        attempts = RetryPolicy(resends=retries, total_s=math.inf).start(resent)
        while True:
            try:
                resp = self._post(model, body, headers, session, attempts.timeout(self.timeout))
            except (requests.Timeout, requests.ConnectionError) as exc:
                wait = attempts.after_error(type(exc).__name__)
                if wait is None:
                    raise
            else:
                wait = attempts.after_answer(resp.status_code, resp.text, resp.headers.get("Retry-After"))
                if wait is None:
                    return resp
            time.sleep(wait)

    def _post(self, model: str, body: bytes, headers: dict | None, session: requests.Session | None,
              timeout: float) -> requests.Response:
        return self._send("POST", f"{self.inference_url}/predictions/{model}", "inference", session,
                          {**IMAGE_HEADERS, **(headers or {})}, data=body, timeout=timeout)

    def ping(self) -> requests.Response:
        return self._send("GET", f"{self.inference_url}/ping", "inference")

    def describe(self, model: str) -> list[dict]:
        """GET /models/NAME: one entry per version, each with its workers."""
        resp = self._manage("GET", f"/models/{model}")
        resp.raise_for_status()
        return resp.json()

    def workers(self, model: str) -> list[dict]:
        return [w for version in self.describe(model) for w in version.get("workers", [])]

    def ready_workers(self, model: str) -> int:
        return sum(1 for w in self.workers(model) if w.get("status") == "READY")

    def scale(self, model: str, min_workers: int, max_workers: int | None = None,
              timeout: float = 120.0) -> requests.Response:
        params = {"min_worker": min_workers, "max_worker": max_workers or min_workers,
                  "synchronous": "true", "timeout": int(timeout)}
        return self._manage("PUT", f"/models/{model}", params=params, timeout=timeout + 10)

    def describe_all(self, model: str) -> list[dict]:
        """GET /models/NAME/all: every version the server holds, each with its workers."""
        resp = self._manage("GET", f"/models/{model}/all")
        resp.raise_for_status()
        return resp.json()

    def set_default(self, model: str, version: str) -> requests.Response:
        """PUT /models/NAME/VERSION/set-default (any status: 404 for an unknown version)."""
        return self._manage("PUT", f"/models/{model}/{version}/set-default")

    def metrics(self) -> str:
        resp = requests.get(f"{self.metrics_url}/metrics", timeout=self.timeout)
        resp.raise_for_status()
        return resp.text

    def models(self) -> list[str]:
        """Names of the registered models (GET /models)."""
        resp = self._manage("GET", "/models")
        resp.raise_for_status()
        return [m["modelName"] for m in resp.json().get("models", [])]

    @classmethod
    def from_workdir(cls, workdir: str | Path, timeout: float = 10.0) -> TorchServeClient:
        """A client for the server whose config.properties and key_file.json are in `workdir`
        (the working directory scripts.ops.serve gives each server)."""
        return cls(*addresses(workdir), key_file=Path(workdir) / KEY_FILE, timeout=timeout)


def _over_unix_socket(session: httpx.Client, address: str, method: str, path: str,
                      params: dict | None, headers: dict, timeout: float) -> requests.Response:
    """One call to the server at `address` (`unix:/PATH`) through `session`, answered as a
    requests.Response so callers treat both transports alike; a transport failure raises
    OSError (ConnectionError, TimeoutError), as requests' own do."""
    try:
        answer = session.request(method, path, params=params, headers=headers, timeout=timeout)
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"{address}: {exc}") from exc
    except httpx.TransportError as exc:
        raise ConnectionError(f"{address}: {exc}") from exc
    resp = requests.Response()
    resp.status_code, resp.reason = answer.status_code, answer.reason_phrase
    resp.headers.update(answer.headers)
    resp._content, resp.url, resp.encoding = answer.content, f"{address}{path}", "utf-8"
    return resp
