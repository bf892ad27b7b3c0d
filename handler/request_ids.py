"""Request ids: every answer carries one, the caller's `X-Request-ID` when it is acceptable, else
TorchServe's own id for that request (the frontend's per-request UUID, `context.get_request_id`).

The caller's value is echoed into logs and JSON bodies, so it is bounded (1-128 characters) and
limited to a charset that needs no escaping anywhere (letters, digits and `-._:/+=@`); anything
else is replaced, never trimmed or escaped: a half-kept id would correlate with nothing.

TorchServe 0.12's frontend sets the response header `x-request-id` to its own id after the worker
answered (NettyUtils.sendHttpResponse), over any value the handler set: the header therefore always
holds TorchServe's id, and the body's `request_id` the id this module chose (the caller's when
sent). The handler still sets the header, for the protocols and versions that keep it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

HEADER = "X-Request-ID"
BODY_KEY = "request_id"
MAX_LENGTH = 128
_ACCEPTED = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_LENGTH}}}")


def acceptable(value: object) -> bool:
    """True for a caller's id this service echoes as it is."""
    return isinstance(value, str) and _ACCEPTED.fullmatch(value) is not None


def header_of(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A request header by name, whatever case the client sent it in (TorchServe keeps the case)."""
    wanted = name.lower()
    for key, value in (headers or {}).items():
        if key.lower() == wanted:
            return value if isinstance(value, str) else bytes(value).decode("latin-1")
    return None


def request_headers(context, idx: int) -> Mapping[str, str]:
    """Request idx's headers; none in-process or where the envelope merged the rows."""
    try:
        return context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, TypeError):
        return {}


def torchserve_id(context, idx: int) -> str | None:
    try:
        return context.get_request_id(idx)
    except (AttributeError, IndexError, TypeError):
        return None


def choose(caller: str | None, own: str | None) -> tuple[str, bool]:
    """(the request's id, whether the caller's value was refused)."""
    if caller is not None and acceptable(caller):
        return caller, False
    return own or uuid.uuid4().hex, caller is not None


def stamp(body: dict, request_id: str) -> dict:
    """The JSON body with the request's id (a body that holds one keeps it)."""
    return body if BODY_KEY in body else {**body, BODY_KEY: request_id}


def set_header(context, idx: int, request_id: str) -> None:
    try:
        context.set_response_header(idx, HEADER, request_id)
    except (AttributeError, IndexError, TypeError):  # in-process, or fewer requests than rows
        pass
