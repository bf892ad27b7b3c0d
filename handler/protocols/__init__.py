"""The protocols around the handler's core, and the envelope that sends their answers. In the
spirit of TorchServe's request envelopes (ts/torch_handler/request_envelope/) and LitServe's
specs: each protocol is one module that reads its request's image and writes its answer, and
the core answers every request the same way whatever its protocol: one `Answer` (body, status).

TorchServe hands `handle` one row per request, and each request speaks its own protocol,
recognised from its body when its view is built (`recognise`, handler/request.py):

    plain.py           TorchServe's own API: raw image, multipart or {"image": base64}; the
                       answer's body as it is.
    open_inference.py  KServe v2 / Open Inference Protocol: {"inputs": [one BYTES input]}, also
                       with Triton's binary-data extension; the answer as v2 tensors (labels,
                       probabilities, indices) or {"error": "..."}.

`respond` is the envelope: row i is request i, with its own status, Content-Type, request id
(header and body) and protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from handler.protocols.open_inference import OPEN_INFERENCE, V2_BINARY_HEADER, is_v2, read_body
from handler.protocols.plain import PLAIN, JsonBody
from handler.responses import Answer, reason_phrase

if TYPE_CHECKING:
    from handler.request import RequestView

JSON = "application/json"  # TorchServe's default Content-Type would be text/plain
# Every answer carries its request's id: the response header (handler/request.py says which
# header value survives TorchServe's frontend) and the JSON body's key.
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = "request_id"


class RequestProtocol(Protocol):
    def image(self, view: RequestView, row: dict) -> bytes: ...

    def render(self, view: RequestView, answer: Answer) -> dict: ...


def recognise(row: dict, header: Callable[[str], str | None]) -> tuple[RequestProtocol, JsonBody | None]:
    """A row's protocol and its raw body read as JSON (once; None when it is not JSON), from
    the body and its headers (`header`: by lower-case name). Never raises: a malformed body is
    kept for its protocol to refuse."""
    binary = header(V2_BINARY_HEADER)
    body = read_body(row, binary)
    return (OPEN_INFERENCE if is_v2(body, binary) else PLAIN), body


def stamp(body: dict, request_id: str) -> dict:
    """The JSON body with the request's id (a body that holds one keeps it)."""
    return body if REQUEST_ID_KEY in body else {**body, REQUEST_ID_KEY: request_id}


def respond(context, views: Sequence[RequestView], answers: Sequence[Answer]) -> list[dict]:
    """Each request's answer as its protocol writes it, its status and Content-Type set on the
    context, its request id in its header and body (a describe answer is the model's
    description as it is)."""
    out = []
    for view, answer in zip(views, answers):
        context.set_response_content_type(view.idx, JSON)
        if answer.status != 200:
            context.set_response_status(answer.status, reason_phrase(answer.status), view.idx)
        _set_header(context, view.idx, REQUEST_ID_HEADER, view.request_id)
        if not view.describe:
            answer = replace(answer, body=stamp(answer.body, view.request_id))
        out.append(view.protocol.render(view, answer))
    return out


def _set_header(context, idx: int, name: str, value: str) -> None:
    try:
        context.set_response_header(idx, name, value)
    except (AttributeError, IndexError, TypeError):  # in-process, or fewer requests than rows
        pass
