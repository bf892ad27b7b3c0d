"""Open Inference Protocol (v2) request bodies and the top index of either protocol's answer."""

from __future__ import annotations

import base64


def v2(image: bytes, request_id: str | None = "a", shape: list[int] | None = None, **extra) -> dict:
    """One image as a v2 request's BYTES input "image", base64; `shape` [1] unless given ([1, 1]
    for a batching Triton model, which requires the batch dimension)."""
    doc = {"inputs": [{"name": "image", "shape": shape or [1], "datatype": "BYTES",
                       "data": [base64.b64encode(image).decode()]}], **extra}
    return doc if request_id is None else {"id": request_id, **doc}


def top_index(answer: dict) -> int:
    if "predictions" in answer:
        return answer["predictions"][0]["index"]
    return {o["name"]: o for o in answer["outputs"]}["indices"]["data"][0]
