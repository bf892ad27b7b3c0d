"""Cheap bounds on what a request may carry, before anything expensive: JSON nesting depth,
the number of inputs (form fields, query parameters), and which input is the image when a
query string names one too. Each is a 4xx JSON error, in-process and through a real server."""

from __future__ import annotations

import io

import pytest
import requests

from handler import payload
from handler.errors import InputError
from tests.support.servers import MODEL

DEEP = b'{"a":' * 100_000 + b"1" + b"}" * 100_000  # 600 KB: Python's parser hits RecursionError


def refused(row: dict) -> InputError:
    with pytest.raises(InputError) as err:
        payload.payload_to_bytes(row)
    return err.value


def test_json_depth_counts_brackets_and_braces():
    assert payload.json_depth(b'{"image": "abc"}') == 1
    assert payload.json_depth(b'{"a": [[{"b": 1}]]}') == 4
    assert payload.json_depth(b"") == 0 and payload.json_depth(DEEP) == 100_000


@pytest.mark.parametrize("row", [{"body": DEEP}, {"body": DEEP.decode()}])
def test_deep_json_is_a_client_error_not_a_recursion_error(row):
    err = refused(row)
    assert (err.status, err.error_type) == (400, "InvalidJSON") and "100000 levels" in err.message


def test_many_inputs_are_refused_before_reading_any():
    row = {f"f{i}": b"x" for i in range(payload.MAX_FIELDS + 1)}
    err = refused(row)
    assert (err.status, err.error_type) == (400, "TooManyFields")


def test_the_raw_body_wins_over_query_parameters():
    assert payload.payload_to_bytes({"data": b"x", "image": b"y", "body": b"\xff\xd8jpeg"}) == b"\xff\xd8jpeg"


def test_two_candidate_fields_without_a_body_are_ambiguous():
    err = refused({"data": b"x", "image": b"\xff\xd8jpeg"})
    assert (err.status, err.error_type) == (400, "AmbiguousInput") and "data, image" in err.message


@pytest.fixture(scope="module")
def url(server) -> str:
    return f"{server.client.inference_url}/predictions/{MODEL}"


@pytest.mark.e2e
def test_served_query_string_does_not_shadow_the_image(server, url, photos):
    resp = requests.post(url, params={"data": "x", "image": "y"}, data=photos["cat.jpg"].read_bytes(),
                         headers={**server.client.auth_headers("inference"), "Content-Type": "image/jpeg"},
                         timeout=30)
    assert resp.status_code == 200 and resp.json()["predictions"], resp.text


@pytest.mark.e2e
def test_served_deep_json_is_400_json(server, url):
    headers = {**server.client.auth_headers("inference"), "Content-Type": "application/json"}
    resp = requests.post(url, data=DEEP, headers=headers, timeout=30)
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["type"] == "InvalidJSON"


@pytest.mark.e2e
def test_served_thousands_of_form_fields_are_400(server, url, photos):
    fields = {f"f{i}": (None, "x") for i in range(2000)}
    fields["data"] = ("cat.jpg", io.BytesIO(photos["cat.jpg"].read_bytes()), "image/jpeg")
    resp = requests.post(url, files=fields, headers=server.client.auth_headers("inference"), timeout=60)
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["type"] == "TooManyFields"
