"""The protocols around the handler's core: how a request's image is read, and how its answer
is shaped, given a status and a Content-Type and serialized. In the spirit of TorchServe's
request envelopes (ts/torch_handler/request_envelope/): protocols wrapped around the core, which
answers every request the same way whatever its protocol: one `Answer` (body and status) each.

Without a `service_envelope` (config.properties), TorchServe hands `handle` one row per request,
and each request speaks its own protocol, recognised from its body (`protocol_of`):

    PlainProtocol           TorchServe's own API: raw image, multipart or {"image": base64}
                            (handler/payload.py); the answer's body as it is.
    OpenInferenceProtocol   KServe v2 / Open Inference Protocol: {"inputs": [one BYTES input]},
                            also with Triton's binary-data extension; the answer as v2 tensors
                            (labels, probabilities, indices) or {"error": "..."}.

So v2 requests batch with each other and with raw images, each with its own status. Two
envelopes place the answers:

    PlainEnvelope     no service envelope: row i is request i, with its own status, Content-Type
                      and protocol.
    KServeV2Envelope  TorchServe's kservev2 service envelope (kept for servers configured with
                      it; ours are not): the rows are the inputs of ONE v2 request, which has one
                      status, at index 0, and each answer becomes an output of datatype BYTES, a
                      JSON string. It reads only the first request of a batch: batchSize 1 only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Protocol

from handler.payload import (
    V2_BINARY_HEADER,
    V2Body,
    payload_to_bytes,
    v2_body,
    v2_image,
    v2_requested_outputs,
)
from handler.responses import V2_KNOWN, Answer, reason_phrase, v2_error, v2_prediction

JSON = "application/json"  # TorchServe's default Content-Type would be text/plain
Header = Callable[[str], "str | None"]  # a request's header by lower-case name


class RequestProtocol(Protocol):
    def image(self, row: dict) -> bytes: ...

    def render(self, answer: Answer, request_id: str | None) -> dict: ...


class PlainProtocol:
    """TorchServe's own API: the image as payload.py reads it, the answer's body as it is."""

    def image(self, row: dict) -> bytes:
        return payload_to_bytes(row)

    def render(self, answer: Answer, request_id: str | None) -> dict:
        return answer.body


PLAIN = PlainProtocol()


class OpenInferenceProtocol:
    """One v2 request: its one BYTES input is the image; its answer the v2 response (the
    outputs it asked for; its own id, else the answer's request id, else TorchServe's) or
    {"error"}."""

    def __init__(self, body: V2Body) -> None:
        self.body = body
        self.outputs = V2_KNOWN

    def image(self, row: dict) -> bytes:
        image = v2_image(self.body)  # the whole request is checked before any pixel is decoded
        self.outputs = v2_requested_outputs(self.body.doc, V2_KNOWN)
        return image

    def render(self, answer: Answer, request_id: str | None) -> dict:
        if answer.status != 200:
            return v2_error(answer.body)
        request_id = self.body.request_id or answer.body.get("request_id") or request_id or ""
        return v2_prediction(answer.body, request_id, self.outputs)


class PlainEnvelope:
    """No service envelope: row i is request i, in the protocol its body speaks."""

    def protocol_of(self, row: dict, header: Header) -> RequestProtocol:
        body = v2_body(row, header(V2_BINARY_HEADER))
        return PLAIN if body is None else OpenInferenceProtocol(body)

    def respond(self, context, answers: Sequence[Answer],
                protocols: Sequence[RequestProtocol]) -> list[dict]:
        for idx, answer in enumerate(answers):
            context.set_response_content_type(idx, JSON)
            if answer.status != 200:
                context.set_response_status(answer.status, reason_phrase(answer.status), idx)
        return [protocol.render(answer, _request_id(context, idx))
                for idx, (answer, protocol) in enumerate(zip(answers, protocols))]


class KServeV2Envelope:
    """TorchServe's kservev2 envelope: the rows are one v2 request's inputs, already taken apart."""

    def protocol_of(self, row: dict, header: Header) -> RequestProtocol:
        return PLAIN

    def respond(self, context, answers: Sequence[Answer],
                protocols: Sequence[RequestProtocol]) -> list[str]:
        context.set_response_content_type(0, JSON)
        # One status for the request: its last failed input's (each output's body carries its own).
        for answer in answers:
            if answer.status != 200:
                context.set_response_status(answer.status, reason_phrase(answer.status), 0)
        return [json.dumps(answer.body) for answer in answers]


Envelope = PlainEnvelope | KServeV2Envelope


def envelope_of(context) -> Envelope:
    """The envelope of this call: TorchServe's kservev2 envelope sets `context.input_names`
    (the v2 inputs' names) before each call of `handle`, and deletes it after."""
    if getattr(context, "input_names", None) is not None:
        return KServeV2Envelope()
    return PlainEnvelope()


def request_header(context, idx: int, name: str) -> str | None:
    """Request idx's header `name` (lower case), whatever case the client sent it in: TorchServe
    passes header names as they came."""
    try:
        headers = context.request_processor[idx].get_request_properties()
    except (AttributeError, IndexError, TypeError):  # no per-request headers (in-process use)
        return None
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _request_id(context, idx: int) -> str | None:
    try:
        return context.get_request_id(idx)
    except (AttributeError, TypeError):
        return None
