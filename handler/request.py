"""One request as every stage sees it: a view built once per request when the handler takes a
batch (`request_views`), holding its headers, its ids, its protocol and its body read as JSON.

Request ids: every answer carries one, the caller's `X-Request-ID` when it is acceptable, else
TorchServe's own id for that request (the frontend's per-request UUID, `context.get_request_id`).
The caller's value is echoed into logs and JSON bodies, so it is bounded (1-128 characters) and
limited to a charset that needs no escaping anywhere (letters, digits and `-._:/+=@`); anything
else is replaced, never trimmed or escaped: a half-kept id would correlate with nothing.

TorchServe 0.12's frontend sets the response header `x-request-id` to its own id after the worker
answered (NettyUtils.sendHttpResponse), over any value the handler set: the header therefore always
holds TorchServe's id, and the body's `request_id` the id chosen here (the caller's when sent).
The envelope (handler/protocols) still sets the header, for the protocols and versions that keep it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from handler.errors import ServerFault
from handler.protocols import REQUEST_ID_HEADER, RequestProtocol, recognise
from handler.protocols.plain import PLAIN, JsonBody

logger = logging.getLogger(__name__)

MAX_LENGTH = 128
_ACCEPTED = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_LENGTH}}}")
# What TorchServe sets on the requests it routes to a handler's other paths: `describe` for
# the management API's `GET /models/NAME?customized=true`, `explain` for /explanations/NAME.
DESCRIBE = "describe"
EXPLAIN = "explain"


@dataclass(frozen=True)
class RequestView:
    """Request `idx` of a batch. `error`: a bug hit while reading it (its answer, alone)."""

    idx: int
    headers: Mapping[str, str]  # by lower-case name
    torchserve_id: str | None
    request_id: str
    refused_id: bool  # the caller sent an X-Request-ID this service does not echo
    protocol: RequestProtocol
    body: JsonBody | None = None  # the raw body read as JSON, where it is JSON
    describe: bool = False
    explain: bool = False
    error: ServerFault | None = None

    def header(self, name: str) -> str | None:
        """A request header, whatever case the client sent it in (TorchServe keeps the case)."""
        return self.headers.get(name.lower())


def acceptable(value: object) -> bool:
    """True for a caller's id this service echoes as it is."""
    return isinstance(value, str) and _ACCEPTED.fullmatch(value) is not None


def request_id_for(caller: str | None, own: str | None) -> tuple[str, bool]:
    """(the request's id, whether the caller's value was refused)."""
    if caller is not None and acceptable(caller):
        return caller, False
    return own or uuid.uuid4().hex, caller is not None


def request_views(context, rows: list[dict]) -> list[RequestView]:
    """Each request's view, in batch order. Never raises: whatever one request sent, or a bug
    its reading hits, is that request's alone."""
    return [view_of(context, idx, row) for idx, row in enumerate(rows)]


def view_of(context, idx: int, row: dict) -> RequestView:
    try:
        headers = _headers(context, idx)
        own = _torchserve_id(context, idx)
        request_id, refused = request_id_for(headers.get(REQUEST_ID_HEADER.lower()), own)
        describe = headers.get(DESCRIBE) == "True"
        # A describe request is answered with the model's description: its body is not read.
        protocol, body = (PLAIN, None) if describe else recognise(row, lambda name: headers.get(name.lower()))
        return RequestView(idx, headers, own, request_id, refused, protocol, body, describe,
                           explain=headers.get(EXPLAIN) == "True")
    except Exception:  # a bug hit by one request must not fail its neighbours
        logger.exception("Unexpected failure reading request %d", idx)
        return RequestView(idx, MappingProxyType({}), None, request_id_for(None, None)[0], False, PLAIN,
                           error=ServerFault())


def _headers(context, idx: int) -> Mapping[str, str]:
    """Request idx's headers by lower-case name; none in-process without per-request headers.
    TorchServe's worker keeps each input's content type beside them, under the input's name (a
    dict): those are not headers."""
    try:
        raw = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, TypeError):
        raw = {}
    return MappingProxyType({str(key).lower(): value.decode("latin-1") if isinstance(value, bytes) else value
                             for key, value in raw.items() if isinstance(value, (str, bytes))})


def _torchserve_id(context, idx: int) -> str | None:
    try:
        return context.get_request_id(idx)
    except (AttributeError, IndexError, TypeError):
        return None
