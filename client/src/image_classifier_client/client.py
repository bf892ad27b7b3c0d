"""Sync and async clients: one prediction per call, under the resend contract (contract.py),
with the current bearer key (keys.py) and the right Content-Type (wire.py).

    with Client("http://127.0.0.1:8080", key_file="run/key_file.json") as client:
        result = client.classify("cat.jpg", "efficientnet_lite0")
        print(result.top1.label, result.top1.probability)
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Union

import httpx

from image_classifier_client import contract, errors, wire
from image_classifier_client.contract import RetryPolicy
from image_classifier_client.keys import KeySource, PathLike
from image_classifier_client.results import Classification

Image = Union[bytes, str, "os.PathLike[str]"]
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRY = RetryPolicy()  # frozen: safe to share
# What counts as "no answer": a timeout, a connection refused, reset or closed before the
# answer. Not httpx.UnsupportedProtocol and the like: a wrong URL stays wrong.
LOST_IN_TRANSIT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def _image_bytes(image: Image) -> bytes:
    return image if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()


class _Call:
    """One prediction's state between attempts: the request, the budget, the key refresh. The
    sync and async clients only send and sleep."""

    def __init__(self, owner: _Base, image: Image, model: str, protocol: str | None,
                 timeout: float | None, top_k: int | None, request_id: str | None) -> None:
        self.owner, self.top_k = owner, top_k
        self.req = wire.build(model, _image_bytes(image), protocol or owner.protocol, request_id)
        self.timeout = owner.timeout if timeout is None else timeout
        self.attempts = owner.retry.start()
        self.key_retried = False

    @property
    def sent(self) -> int:
        """How many times the request went out, the key's resend included."""
        return self.attempts.sent + self.key_retried

    def request(self) -> dict:
        headers = {**self.owner.headers, **self.owner.keys.headers(), **self.req.headers}
        return {"url": self.req.path, "content": self.req.body, "headers": headers,
                "timeout": self.attempts.timeout(self.timeout)}

    def answered(self, resp: httpx.Response) -> float | Classification:
        """The result, or the seconds to wait before sending again; raises the typed error."""
        if contract.auth_refused(resp.status_code, resp.text):
            if self.key_retried or not self.owner.keys.renewable:
                raise errors.AuthError(f"the bearer key was refused: {wire.server_message(resp.text)[1]}",
                                       resp.status_code, self.sent)
            self.key_retried = True  # a renewal raced this request: read the key again, once
            self.owner.keys.refresh()
            self.attempts.sent -= 1  # not one of the contract's resends: keep their budget
            return contract.KEY_RENEWAL_WAIT_S
        wait = self.attempts.after_answer(resp.status_code, resp.text, resp.headers.get("Retry-After"))
        if wait is not None:
            return wait
        return wire.outcome(self.req, resp.status_code, resp.text, resp.headers, self.sent, self.top_k)

    def failed(self, exc: Exception) -> float:
        wait = self.attempts.after_error(type(exc).__name__)
        if wait is None:
            raise errors.Unavailable(f"no answer after {self.sent} attempt(s): {exc!r}",
                                     attempts=self.sent, resent=self.attempts.resent) from exc
        return wait


class _Base:
    def __init__(self, url: str = DEFAULT_URL, *, key_file: PathLike | None = None,
                 key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 retry: RetryPolicy = DEFAULT_RETRY, protocol: str = "v1",
                 headers: dict | None = None) -> None:
        if protocol not in wire.PROTOCOLS:
            raise ValueError(f"protocol must be one of {wire.PROTOCOLS}, not {protocol!r}")
        self.url, self.timeout, self.retry, self.protocol = url.rstrip("/"), timeout, retry, protocol
        self.keys = KeySource.resolve(key_file, key)
        self.headers = dict(headers or {})


class Client(_Base):
    """A synchronous client (httpx.Client): thread-safe, reuses its connections."""

    def __init__(self, url: str = DEFAULT_URL, *, transport: httpx.BaseTransport | None = None,
                 **kwargs) -> None:
        super().__init__(url, **kwargs)
        self._http = httpx.Client(base_url=self.url, transport=transport)

    def classify(self, image: Image, model: str, *, protocol: str | None = None,
                 timeout: float | None = None, top_k: int | None = None,
                 request_id: str | None = None) -> Classification:
        """The image's classes (bytes, or a path to read). Raises one of errors.*."""
        call = _Call(self, image, model, protocol, timeout, top_k, request_id)
        while True:
            try:
                step = call.answered(self._http.post(**call.request()))
            except LOST_IN_TRANSIT as exc:
                step = call.failed(exc)
            if isinstance(step, Classification):
                return step
            time.sleep(step)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Base):
    """An asyncio client (httpx.AsyncClient): many predictions in flight on one event loop."""

    def __init__(self, url: str = DEFAULT_URL, *, transport: httpx.AsyncBaseTransport | None = None,
                 **kwargs) -> None:
        super().__init__(url, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.url, transport=transport)

    async def classify(self, image: Image, model: str, *, protocol: str | None = None,
                       timeout: float | None = None, top_k: int | None = None,
                       request_id: str | None = None) -> Classification:
        call = _Call(self, image, model, protocol, timeout, top_k, request_id)
        while True:
            try:
                step = call.answered(await self._http.post(**call.request()))
            except LOST_IN_TRANSIT as exc:
                step = call.failed(exc)
            if isinstance(step, Classification):
                return step
            await asyncio.sleep(step)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
