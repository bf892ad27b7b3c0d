"""Cheap bounds on what a request may carry, before anything expensive, in process: JSON nesting
depth counted without parsing, a JSON body's shape bounded before it is parsed, the number of
inputs (form fields, query parameters), and which input is the image when a query string names
one too (the body wins; two candidates without a body are ambiguous). Each refusal is a 400 with
its own error type."""

from __future__ import annotations

import pytest

from handler.errors import InputError
from handler.protocols import plain
from tests.support.bodies import DEEP, WORST_JSON


def refused(row: dict) -> InputError:
    with pytest.raises(InputError) as err:
        plain.payload_to_bytes(row)
    return err.value


def test_json_depth_counts_brackets_and_braces():
    assert plain.json_depth(b'{"image": "abc"}') == 1
    assert plain.json_depth(b'{"a": [[{"b": 1}]]}') == 4
    assert plain.json_depth(b"") == 0 and plain.json_depth(DEEP) == 100_000


@pytest.mark.parametrize("row", [{"body": DEEP}, {"body": DEEP.decode()}])
def test_deep_json_is_a_client_error_not_a_recursion_error(row):
    err = refused(row)
    assert (err.status, err.error_type) == (400, "InvalidJSON") and "100000 objects or lists" in err.message


def test_many_inputs_are_refused_before_reading_any():
    row = {f"f{i}": b"x" for i in range(plain.MAX_FIELDS + 1)}
    err = refused(row)
    assert (err.status, err.error_type) == (400, "TooManyFields")


def test_the_raw_body_wins_over_query_parameters():
    assert plain.payload_to_bytes({"data": b"x", "image": b"y", "body": b"\xff\xd8jpeg"}) == b"\xff\xd8jpeg"


def test_two_candidate_fields_without_a_body_are_ambiguous():
    err = refused({"data": b"x", "image": b"\xff\xd8jpeg"})
    assert (err.status, err.error_type) == (400, "AmbiguousInput") and "data, image" in err.message


def test_json_shape_is_bounded_before_parsing():
    for name, body in WORST_JSON.items():
        if name != "one 6.5 MB base64 string":
            err = refused({"body": body})
            assert (err.status, err.error_type) == (400, "InvalidJSON") and "at most" in err.message, name
