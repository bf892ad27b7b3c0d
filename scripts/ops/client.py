"""A small token-aware client for TorchServe's inference and management APIs.

TorchServe rewrites its bearer keys into `key_file.json` (in its working directory) at every
start and when a key is renewed; server_config.KeyFile re-reads the file whenever it changes.
The management API is reached over TCP or, for replicas behind the balancer, over the Unix
socket their config.properties names (`management_address=unix:/PATH`, scripts/ops/uds.py).

The resend contract of a single server (no balancer in front; docs/operations.md, "Scale
workers"): a prediction has no side effect, so `predict(retries=N)` sends a request again, at
most N times, when TorchServe lost it rather than refused it:
- 500 or 507 "Worker died." / "Worker scaled down.": the worker holding its batch crashed
  (507 when its exit status was 137, i.e. SIGKILL or the OOM killer) or was removed by a
  scale-down (TorchServe 0.12 does not drain a removed worker);
- no answer within the client's timeout, or the connection reset: TorchServe 0.12 now and then
  drops a request held by a worker it removes instead of failing it;
- never on TorchServe's 503 (queue full: resending adds load where there is none to spare)
  nor on 4xx. Behind the balancer, the edge's own 503 (its queue deadline passed, or no replica
  UP) carries `Retry-After: 1`: that one is resent after the delay it names (at most
  RETRY_AFTER_MAX_S), as HTTP says, still within the same budget.
Each resend waits RESEND_WAIT_S x its number first (or Retry-After), so the worst case is
bounded: (N + 1) timeouts plus the waits. RESEND_BUDGET is what the project's callers pass.
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from PIL import Image

from scripts.ops import uds
from scripts.ops.server_config import KEY_FILE, KEY_RENEWAL_WAIT_S, KeyFile, addresses, auth_refused

# Raw image bodies must not go out as application/x-www-form-urlencoded (the default of many
# clients): TorchServe's frontend fails those with HTTP 500 before any handler runs.
IMAGE_HEADERS = {"Content-Type": "application/octet-stream"}
# The resend contract (module docstring): at most this many resends of one prediction, the k-th
# after k x RESEND_WAIT_S (a restarting worker, the remaining workers taking the queue over).
RESEND_BUDGET = 2
RESEND_WAIT_S = 0.1
# The bodies TorchServe 0.12 gives the requests of a batch whose worker went away
# (WorkerThread: "Worker died." when the process ended, "Worker scaled down." when removed).
LOST_MESSAGES = ("Worker died", "Worker scaled down")
# The longest Retry-After (s) a prediction waits for before its resend; a longer one is returned.
RETRY_AFTER_MAX_S = 2.0


def sample_jpeg(size: int = 64) -> bytes:
    """A small valid photo-like JPEG (a gradient): cheap to classify, passes every input check.
    For probes and warm-up, which must not depend on the build's sample photos."""
    img = Image.radial_gradient("L").resize((size, size)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def sample_request(envelope: str | None = None, size: int = 64) -> tuple[bytes, dict]:
    """A tiny prediction in the protocol the server speaks (config.properties `service_envelope`):
    a raw JPEG, or under TorchServe's KServe v2 envelope (config/kserve) the same JPEG as a v2
    BYTES input. The readiness probe's, and the warm-up's."""
    image = sample_jpeg(size)
    if envelope != "kservev2":
        return image, {}
    body = {"id": "probe", "inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES",
                                       "data": [base64.b64encode(image).decode()]}]}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def retry_after(resp: requests.Response) -> float | None:
    """The delay a 503 with Retry-After (seconds) asks for, if short enough to wait here."""
    try:
        delay = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return delay if resp.status_code == 503 and 0 <= delay <= RETRY_AFTER_MAX_S else None


def worker_died(resp: requests.Response) -> bool:
    """TorchServe answers 500 or 507 "Worker died." (507: the worker's exit status was 137) or
    500 "Worker scaled down." to the requests a crashed or removed worker held (a whole batch).
    A prediction has no side effect, so such a request can safely be resent."""
    return resp.status_code in (500, 507) and any(m in resp.text for m in LOST_MESSAGES)


@dataclass
class TorchServeClient:
    inference_url: str = "http://127.0.0.1:8080"
    management_url: str = "http://127.0.0.1:8081"
    metrics_url: str = "http://127.0.0.1:8082"
    key_file: Path | None = Path("run") / KEY_FILE
    timeout: float = 10.0
    keys: KeyFile = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.keys = KeyFile(Path(self.key_file) if self.key_file else None)

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
        if not uds.is_unix(self.management_url):
            return self._send(method, f"{self.management_url}{path}", "management",
                              params=params, timeout=timeout or self.timeout)
        return self._keyed("management", lambda keyed: uds.request(
            self.management_url, method, path, params, keyed, timeout or self.timeout))

    def predict(self, model: str, body: bytes, headers: dict | None = None,
                session: requests.Session | None = None, retries: int = 0,
                resent: list | None = None) -> requests.Response:
        """POST one raw image; returns the response (any status). `retries`: how many times to
        resend a request TorchServe lost or the edge asked to resend later (the contract in the
        module docstring); after the last one, a timeout or reset connection raises as requests
        does. `resent`, when given, receives what each resent attempt got (status or exception
        name), for callers that count them."""
        wait = 0.0
        for attempt in range(retries + 1):
            time.sleep(wait)
            try:
                resp = self._send("POST", f"{self.inference_url}/predictions/{model}", "inference",
                                  session, {**IMAGE_HEADERS, **(headers or {})}, data=body)
            except (requests.Timeout, requests.ConnectionError) as exc:
                if attempt == retries:
                    raise
                outcome, wait = type(exc).__name__, RESEND_WAIT_S * (attempt + 1)
            else:
                later = retry_after(resp)
                if (later is None and not worker_died(resp)) or attempt == retries:
                    return resp
                outcome = resp.status_code
                wait = later if later is not None else RESEND_WAIT_S * (attempt + 1)
            if resent is not None:
                resent.append(outcome)
        return resp

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
