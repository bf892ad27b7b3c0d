"""The protocol around the handler's core, on the way out: where each request's status and
Content-Type go, and how its answer is serialized. In the spirit of TorchServe's request
envelopes (ts/torch_handler/request_envelope/): protocols wrapped around the core, which
answers every row the same way whatever the protocol: one `Answer` (body and status) per row.

TorchServe's `service_envelope` (config.properties) parses the protocol's body into the rows
`handle` gets and formats the list `handle` returns. What a row is differs, and with it what
the handler must do with its answers:

    PlainEnvelope     no envelope (TorchServe's own API): a row is a request, with its own
                      status and Content-Type; answers go out as dicts (TorchServe writes JSON).
    KServeV2Envelope  kservev2: the rows are the inputs of ONE v2 request; that request has one
                      status, at index 0, and each answer becomes an output of datatype BYTES,
                      so a JSON string.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from handler.responses import Answer, reason_phrase

JSON = "application/json"  # TorchServe's default Content-Type would be text/plain


class PlainEnvelope:
    """TorchServe's own API: row i is request i."""

    def respond(self, context, answers: Sequence[Answer]) -> list[dict]:
        for idx, answer in enumerate(answers):
            context.set_response_content_type(idx, JSON)
            if answer.status != 200:
                context.set_response_status(answer.status, reason_phrase(answer.status), idx)
        return [answer.body for answer in answers]


class KServeV2Envelope:
    """TorchServe's kservev2 envelope: the rows are one v2 request's inputs."""

    def respond(self, context, answers: Sequence[Answer]) -> list[str]:
        context.set_response_content_type(0, JSON)
        # One status for the request: its last failed input's (each output's body carries its own).
        for answer in answers:
            if answer.status != 200:
                context.set_response_status(answer.status, reason_phrase(answer.status), 0)
        return [json.dumps(answer.body) for answer in answers]


def envelope_of(context) -> PlainEnvelope | KServeV2Envelope:
    """The envelope of this call: TorchServe's kservev2 envelope sets `context.input_names`
    (the v2 inputs' names) before each call of `handle`, and deletes it after."""
    if getattr(context, "input_names", None) is not None:
        return KServeV2Envelope()
    return PlainEnvelope()
