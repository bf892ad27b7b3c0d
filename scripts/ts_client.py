"""A small token-aware client for TorchServe's inference and management APIs.

TorchServe rewrites its bearer keys into `key_file.json` (in its working directory) at every
start and they expire, so the keys are re-read from the file whenever they may have changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import requests

# Raw image bodies must not go out as application/x-www-form-urlencoded (the default of many
# clients): TorchServe's frontend fails those with HTTP 500 before any handler runs.
IMAGE_HEADERS = {"Content-Type": "application/octet-stream"}


def read_keys(key_file: str | Path) -> dict[str, str]:
    """{'inference': ..., 'management': ...} from TorchServe's key_file.json."""
    doc = json.loads(Path(key_file).read_text())
    return {name: doc[name]["key"] for name in ("inference", "management") if name in doc}


def worker_died(resp: requests.Response) -> bool:
    """TorchServe answers 500 or 507 "Worker died." to the requests a crashed worker held (a
    whole batch). A prediction has no side effect, so such a request can safely be resent."""
    return resp.status_code in (500, 507) and "Worker died" in resp.text


@dataclass
class TorchServeClient:
    inference_url: str = "http://127.0.0.1:8080"
    management_url: str = "http://127.0.0.1:8081"
    metrics_url: str = "http://127.0.0.1:8082"
    key_file: Path | None = Path("run/key_file.json")
    timeout: float = 10.0

    def auth_headers(self, api: str) -> dict[str, str]:
        if not self.key_file or not Path(self.key_file).is_file():
            return {}
        key = read_keys(self.key_file).get(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def predict(self, model: str, body: bytes, headers: dict | None = None,
                session: requests.Session | None = None, retries: int = 0) -> requests.Response:
        """POST one raw image; returns the response (any status). `retries`: how many times to
        resend a request whose worker died under it (see worker_died)."""
        sender = session or requests
        all_headers = {**IMAGE_HEADERS, **self.auth_headers("inference"), **(headers or {})}
        for _ in range(retries + 1):
            resp = sender.post(f"{self.inference_url}/predictions/{model}", data=body,
                               headers=all_headers, timeout=self.timeout)
            if not worker_died(resp):
                break
        return resp

    def ping(self) -> requests.Response:
        return requests.get(f"{self.inference_url}/ping", headers=self.auth_headers("inference"),
                            timeout=self.timeout)

    def describe(self, model: str) -> list[dict]:
        """GET /models/NAME: one entry per version, each with its workers."""
        resp = requests.get(f"{self.management_url}/models/{model}",
                            headers=self.auth_headers("management"), timeout=self.timeout)
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
        return requests.put(f"{self.management_url}/models/{model}", params=params,
                            headers=self.auth_headers("management"), timeout=timeout + 10)

    def metrics(self) -> str:
        resp = requests.get(f"{self.metrics_url}/metrics", timeout=self.timeout)
        resp.raise_for_status()
        return resp.text

    def models(self) -> list[str]:
        """Names of the registered models (GET /models)."""
        resp = requests.get(f"{self.management_url}/models", headers=self.auth_headers("management"),
                            timeout=self.timeout)
        resp.raise_for_status()
        return [m["modelName"] for m in resp.json().get("models", [])]

    @classmethod
    def from_workdir(cls, workdir: str | Path, timeout: float = 10.0) -> TorchServeClient:
        """A client for the server whose config.properties and key_file.json are in `workdir`
        (the working directory scripts/serve.py gives each server)."""
        workdir = Path(workdir)
        props = {}
        for line in (workdir / "config.properties").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.strip().startswith("#"):
                props[key.strip()] = value.strip()
        return cls(props.get("inference_address", cls.inference_url),
                   props.get("management_address", cls.management_url),
                   props.get("metrics_address", cls.metrics_url),
                   key_file=workdir / "key_file.json", timeout=timeout)
