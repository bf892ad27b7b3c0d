"""The Open Inference Protocol (KServe v2): how its request's image is read, and its answer.

A v2 request is recognised by its body alone (TorchServe tells the handler nothing about the
URL a request came in on): a JSON object with the key "inputs" (our own JSON form never has
one), or any body sent with Triton's binary-data header. Recognised, it is answered in v2 form
whatever is wrong with it; a body that is not even JSON cannot be known as v2. One request
carries one image as one BYTES input (JSON base64, or Triton's binary-data extension); its
answer is three tensors (labels, probabilities, indices; a fourth, `predicted`, where the
model's head predicts a set) or {"error": "..."}. So v2 requests batch with each other and with
plain ones, each with its own status.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from handler.errors import BadInput
from handler.protocols.plain import BODY_KEY, MAX_FIELDS, MAX_JSON_DEPTH, JsonBody, b64, json_body, parse_json

if TYPE_CHECKING:
    from handler.request import RequestView
    from handler.responses import Answer

V2_DATATYPE = "BYTES"
# Triton's binary-data extension: the JSON header's length; raw tensor data follows it.
V2_BINARY_HEADER = "inference-header-content-length"
V2_ACCEPTED = ('one input {"name": "image", "shape": [1], "datatype": "BYTES", '
               '"data": ["<base64 of the encoded image>"]}')


def read_body(row: dict, binary_header: str | None) -> JsonBody | None:
    """The row's raw body read once: split at `binary_header` (Triton's binary-data extension:
    then it is a v2 request, however malformed), else as JSON when it is JSON (plain.json_body).
    Never raises: a malformed v2 request is still a v2 request, refused in v2 form later."""
    if binary_header is not None:
        return _split_binary(row.get(BODY_KEY), binary_header)
    return json_body(row)


def is_v2(body: JsonBody | None, binary_header: str | None) -> bool:
    """Whether the body `read_body` read is a v2 request: sent with the binary-data header, or
    a JSON object with "inputs"."""
    if binary_header is not None:
        return True
    return body is not None and body.doc is not None and "inputs" in body.doc


def _split_binary(body, header: str) -> JsonBody:
    if isinstance(body, dict):  # sent as application/json and parsed whole: there is no tail
        return JsonBody(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)):  # JSON that parsed to a number, list, null, ...
        return JsonBody(None, error=BadInput("InvalidV2Request", "A v2 request is a JSON object "
                                             f"(then its binary data); the body is a {type(body).__name__}."))
    raw = bytes(body)
    try:
        length = int(header)
    except ValueError:
        length = -1
    if not 0 < length <= len(raw):
        return JsonBody(None, error=BadInput("InvalidBinaryData", f"Inference-Header-Content-Length "
                                             f"is {header!r}; the body has {len(raw)} bytes."))
    try:
        return JsonBody(parse_json(raw[:length]), raw[length:])
    except BadInput as err:
        return JsonBody(None, error=err)


def v2_image(body: JsonBody) -> bytes:
    """The encoded image of a v2 request, or BadInput (400). One request carries one image:
    TorchServe batches requests, so a client gains nothing by packing several into one, and one
    image per request keeps each request's cost budget and its own answer."""
    doc = body.document()
    if "id" in doc and not isinstance(doc["id"], str):
        raise BadInput("InvalidV2Request", "'id' must be a string.")
    if not isinstance(doc.get("parameters", {}), dict):
        raise BadInput("InvalidV2Request", "'parameters' must be an object.")
    tensor = _one_input(doc.get("inputs"))
    count = _element_count(tensor)
    params = tensor.get("parameters", {})
    if not isinstance(params, dict):
        raise BadInput("InvalidV2Request", f"The input's 'parameters' must be an object; send {V2_ACCEPTED}.")
    if "binary_data_size" in params:
        elements = _binary_elements(params["binary_data_size"], body.tail)
    elif body.tail:
        raise BadInput("InvalidBinaryData", "The body carries binary data but no input names its "
                       "binary_data_size.")
    else:
        elements = _json_elements(tensor.get("data"))
    if len(elements) != count:
        sent = len(elements) if len(elements) <= MAX_FIELDS else f"over {MAX_FIELDS}"
        raise BadInput("ShapeMismatch", f"The input's shape {tensor['shape']} holds {count} "
                       f"element(s) but its data has {sent}.")
    if count != 1:
        raise BadInput("TooManyImages" if count else "EmptyInput",
                       f"The input holds {count} images; a request carries exactly one (send each "
                       "image as its own request: the server batches them).")
    return elements[0] if isinstance(elements[0], bytes) else b64(elements[0])


def _one_input(inputs) -> dict:
    if not isinstance(inputs, list) or not inputs:
        raise BadInput("InvalidV2Request", f"'inputs' must be a list holding {V2_ACCEPTED}.")
    if len(inputs) > 1:
        raise BadInput("TooManyInputs", f"The request has {len(inputs)} inputs; send {V2_ACCEPTED} "
                       "(one image per request: the server batches requests).")
    tensor = inputs[0]
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise BadInput("InvalidV2Request", f"An input is an object with a string 'name'; send {V2_ACCEPTED}.")
    if tensor.get("datatype") != V2_DATATYPE:
        raise BadInput("UnsupportedDatatype", f"The input's datatype is {tensor.get('datatype')!r}; "
                       "the model takes the encoded image (JPEG, PNG, ...) as one BYTES element.")
    return tensor


def _element_count(tensor: dict) -> int:
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape or len(shape) > MAX_JSON_DEPTH
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise BadInput("InvalidV2Request", f"The input's shape must be a list of sizes, e.g. [1]; "
                       f"got {str(shape)[:80]!r}.")
    return math.prod(shape)  # Python's integers: a dimension of 10**20 cannot overflow


def _json_elements(data) -> list:
    """The BYTES elements of a JSON tensor, flattened (the protocol allows nested rows); each
    a base64 string."""
    if not isinstance(data, list):
        raise BadInput("InvalidV2Request", f"The input's 'data' must be a list; send {V2_ACCEPTED}.")
    flat, stack, steps = [], [data], 0
    # Bounded: a request holds one element; a few more are enough to say how many it sent.
    while stack and len(flat) <= MAX_FIELDS and steps < 8 * MAX_FIELDS:
        item, steps = stack.pop(), steps + 1
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            flat.append(item)
        else:
            raise BadInput("InvalidV2Request", "A BYTES element in JSON is a string: the image "
                           f"in base64, not a {type(item).__name__}.")
    return flat


def _binary_elements(size, tail: bytes) -> list[bytes]:
    """Triton's binary BYTES tensor: each element a 4-byte little-endian length and its bytes."""
    if type(size) is not int or size != len(tail):
        raise BadInput("InvalidBinaryData", f"binary_data_size is {size!r}; {len(tail)} bytes of "
                       "binary data follow the JSON header.")
    elements, at = [], 0
    while at < len(tail) and len(elements) <= MAX_FIELDS:
        if at + 4 > len(tail):
            raise BadInput("InvalidBinaryData", "A BYTES element's length prefix is cut short.")
        length = int.from_bytes(tail[at:at + 4], "little")
        if at + 4 + length > len(tail):
            raise BadInput("InvalidBinaryData", f"A BYTES element declares {length} bytes; "
                           f"{len(tail) - at - 4} follow.")
        elements.append(tail[at + 4:at + 4 + length])
        at += 4 + length
    return elements


def v2_requested_outputs(doc: dict, known: tuple[str, ...]) -> tuple[str, ...]:
    """The output names a v2 request asks for, in its order (all of `known` when it names
    none), or BadInput (400) for an unknown or repeated name."""
    outputs = doc.get("outputs")
    if outputs is None:
        return known
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadInput("InvalidV2Request", "'outputs' must be a list of objects {\"name\": ...}.")
    names = tuple(o.get("name") for o in outputs)
    unknown = [n for n in names if n not in known]
    if unknown or len(set(names)) != len(names):
        raise BadInput("UnknownOutput", f"The model's outputs are {', '.join(known)}, each named "
                       f"once; the request asks for {list(names)}.")
    return names or known


# The answer: a prediction as typed tensors, an error as {"error"}. Three outputs, so that a v2
# client reads each as an array (no JSON inside strings), and a fourth where the model's head
# predicts a set (sigmoid, binary): whether each class is in it.
V2_OUTPUTS = ("labels", "probabilities", "indices")
V2_PREDICTED = "predicted"
V2_KNOWN = (*V2_OUTPUTS, V2_PREDICTED)
_V2_FIELDS = {"labels": ("label", "BYTES"), "probabilities": ("probability", "FP32"),
              "indices": ("index", "INT64"), V2_PREDICTED: ("predicted", "BOOL")}


def v2_prediction(body: dict, request_id: str, outputs: tuple[str, ...] = V2_KNOWN) -> dict:
    """A prediction (responses.prediction's dict) as a v2 response: the k best classes, best
    first, as the tensors `outputs` names, each of shape [k] (`predicted` only where the head
    marks)."""
    preds = body["predictions"]
    marked = bool(preds) and "predicted" in preds[0]
    names = [name for name in outputs if name != V2_PREDICTED or marked]
    return {"model_name": body["model"], "model_version": body["version"], "id": request_id,
            "outputs": [{"name": name, "datatype": _V2_FIELDS[name][1], "shape": [len(preds)],
                         "data": [p[_V2_FIELDS[name][0]] for p in preds]} for name in names]}


def v2_error(body: dict) -> dict:
    """An error's body ({"code", "type", "message"}) as the protocol's {"error": "..."}; the
    type leads the message, so clients can still tell the kinds apart."""
    return {"error": f"{body['type']}: {body['message']}"}


def v2_metadata(model: str, version: str, top_k: int, marked: bool = False) -> dict:
    """The model's v2 metadata (GET /v2/models/NAME): what v2_image reads, what v2_prediction
    writes (`marked`: the head predicts a set). TorchServe 0.12 does not serve this route; a
    proxy in front of it may."""
    names = V2_KNOWN if marked else V2_OUTPUTS
    return {"name": model, "versions": [version], "platform": "torchserve",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": name, "datatype": _V2_FIELDS[name][1], "shape": [top_k]}
                        for name in names]}


def request_id_of(body: JsonBody) -> str | None:
    """The v2 request's own `id`, when it sent a string."""
    value = (body.doc or {}).get("id")
    return value if isinstance(value, str) else None


class OpenInferenceProtocol:
    """One v2 request (its view's body): its one BYTES input is the image, checked whole before
    any pixel is decoded; its answer the v2 response (the outputs it asked for; its own id,
    else the answer's request id) or {"error"}."""

    def image(self, view: RequestView, row: dict) -> bytes:
        image = v2_image(view.body)
        v2_requested_outputs(view.body.doc, V2_KNOWN)  # an unknown output is refused before work
        return image

    def render(self, view: RequestView, answer: Answer) -> dict:
        if answer.status != 200:
            return v2_error(answer.body)
        request_id = request_id_of(view.body) or answer.body.get("request_id") or ""
        return v2_prediction(answer.body, request_id, v2_requested_outputs(view.body.doc, V2_KNOWN))


OPEN_INFERENCE = OpenInferenceProtocol()
