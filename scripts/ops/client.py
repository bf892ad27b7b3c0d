"""A small token-aware client for TorchServe's inference and management APIs.

TorchServe rewrites its bearer keys into `key_file.json` (in its working directory) at every
start and when a key is renewed; server_config.KeyFile re-reads the file whenever it changes.
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

from scripts.ops.server_config import KEY_FILE, KEY_RENEWAL_WAIT_S, KeyFile, addresses, auth_refused

# Raw image bodies must not go out as application/x-www-form-urlencoded (the default of many
# clients): TorchServe's frontend fails those with HTTP 500 before any handler runs.
IMAGE_HEADERS = {"Content-Type": "application/octet-stream"}


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


def worker_died(resp: requests.Response) -> bool:
    """TorchServe answers 500 or 507 "Worker died." to the requests a crashed worker held (a
    whole batch). A prediction has no side effect, so such a request can safely be resent."""
    return resp.status_code in (500, 507) and "Worker died" in resp.text


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
        for attempt in (0, 1):
            resp = (session or requests).request(method, url, headers={
                **self.auth_headers(api), **(headers or {})}, **kwargs)
            if attempt or not auth_refused(resp.status_code, resp.text):
                return resp
            time.sleep(KEY_RENEWAL_WAIT_S)
        return resp

    def predict(self, model: str, body: bytes, headers: dict | None = None,
                session: requests.Session | None = None, retries: int = 0) -> requests.Response:
        """POST one raw image; returns the response (any status). `retries`: how many times to
        resend a request whose worker died under it (see worker_died)."""
        for _ in range(retries + 1):
            resp = self._send("POST", f"{self.inference_url}/predictions/{model}", "inference",
                              session, {**IMAGE_HEADERS, **(headers or {})}, data=body)
            if not worker_died(resp):
                break
        return resp

    def ping(self) -> requests.Response:
        return self._send("GET", f"{self.inference_url}/ping", "inference")

    def describe(self, model: str) -> list[dict]:
        """GET /models/NAME: one entry per version, each with its workers."""
        resp = self._send("GET", f"{self.management_url}/models/{model}", "management")
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
        return self._send("PUT", f"{self.management_url}/models/{model}", "management",
                          params=params, timeout=timeout + 10)

    def metrics(self) -> str:
        resp = requests.get(f"{self.metrics_url}/metrics", timeout=self.timeout)
        resp.raise_for_status()
        return resp.text

    def models(self) -> list[str]:
        """Names of the registered models (GET /models)."""
        resp = self._send("GET", f"{self.management_url}/models", "management")
        resp.raise_for_status()
        return [m["modelName"] for m in resp.json().get("models", [])]

    @classmethod
    def from_workdir(cls, workdir: str | Path, timeout: float = 10.0) -> TorchServeClient:
        """A client for the server whose config.properties and key_file.json are in `workdir`
        (the working directory scripts.ops.serve gives each server)."""
        return cls(*addresses(workdir), key_file=Path(workdir) / KEY_FILE, timeout=timeout)
