"""The piecewise parse of large JSON bodies: it returns exactly what `orjson.loads` returns, or
None (the caller then parses the body whole), for valid bodies and for broken ones alike."""
from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from servedmodel.serving import large_json


@pytest.fixture
def small_pieces(monkeypatch):
    """Thresholds of a few bytes, so that documents of a few hundred bytes take the piecewise
    path and its cuts fall everywhere."""
    monkeypatch.setattr(large_json, "MIN_BYTES", 64)
    monkeypatch.setattr(large_json, "MIN_SPAN_BYTES", 8)
    monkeypatch.setattr(large_json, "PIECE_BYTES", 5)
    monkeypatch.setattr(large_json, "CHUNK_ELEMENTS", 3)


def _number(rng: random.Random):
    return rng.choice([rng.randint(-9, 10 ** 6), rng.uniform(-1e3, 1e3), 0, -0.5, 1e-7,
                       True, False, None])


def _data(rng: random.Random, depth: int):
    if depth == 0 or rng.random() < 0.4:
        return [_number(rng) for _ in range(rng.randint(0, 12))]
    return [_data(rng, depth - 1) for _ in range(rng.randint(1, 4))]


def _document(rng: random.Random) -> dict:
    doc: dict = {"inputs": [{"name": rng.choice(["x", "a[1,2]", 'q"[3]"', "\\[", "{"]),
                             "shape": [rng.randint(1, 9)], "datatype": "FP32",
                             "data": _data(rng, rng.randint(0, 3))}
                            for _ in range(rng.randint(1, 3))]}
    if rng.random() < 0.5:
        doc["id"] = rng.choice(["r-1", "[1,2,3,4,5,6,7]", 'x\\"[1,2,3]', "]]]", "\"{"])
    if rng.random() < 0.3:
        doc["parameters"] = {"binary_data_output": False, "extra": [1, 2, 3, 4, 5, 6, 7, 8]}
    return doc


def _mutate(rng: random.Random, body: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(body) + 1)
        how = rng.random()
        if how < 0.4:
            body = body[:i] + body[i + 1:]
        elif how < 0.8:
            body = body[:i] + rng.choice([b",", b"[", b"]", b"{", b"}", b'"', b"\\", b" ",
                                          b"NaN", b"1", b"-", b",,"]) + body[i:]
        else:
            j = rng.randrange(len(body) + 1)
            body = body[:i] + body[j:j + rng.randint(1, 20)] + body[i:]
    return body


def _check(body: bytes) -> object:
    got = large_json.loads(body)
    try:
        expected = orjson.loads(body)
    except orjson.JSONDecodeError:
        assert got is None, body
        return None
    assert got is None or got == expected, body
    return got


def test_valid_bodies_parse_piecewise_to_the_same_document(small_pieces):
    rng = random.Random(20261130)
    taken = 0
    for _ in range(1500):
        doc = _document(rng)
        body = orjson.dumps(doc, option=rng.choice([0, orjson.OPT_INDENT_2]))
        if _check(body) is not None:
            taken += 1
    # Most of them went the piecewise way (small ones, or only short arrays, do not).
    assert taken > 750


def test_broken_bodies_are_refused_or_parsed_exactly_as_orjson_would(small_pieces):
    rng = random.Random(7)
    for _ in range(4000):
        _check(_mutate(rng, orjson.dumps(_document(rng))))


@pytest.mark.parametrize("body, why", [
    (b'{"inputs":[{"name":"x","data":[1,2,3,4,5,6,7,8,],"shape":[8]}]}', "trailing comma"),
    (b'{"inputs":[{"name":"x","data":[1,2,3,4,,5,6,7,8],"shape":[8]}]}', "empty element"),
    (b'{"inputs":[{"name":"x","data":[[1,2,3],[4,5,6]]],"shape":[8]}]}', "extra bracket"),
    (b'{"inputs":[{"name":"x","data":[[1,2,3] [4,5,6]],"shape":[8]}]}', "missing comma"),
    (b'{"inputs":[{"name":"x","data":[[1,2,3],,[4,5,6]],"shape":[8]}]}', "double comma"),
    (b'{"inputs":[{"name":"x","data":[1,2,3,4,5,6,7,8],"data":[1,2,3,4,5,6,7,9]}]}', "dup key"),
    (b'{"extra":[1,2,3,4,5,6,7,8,9],"inputs":[{"name":"x","data":[1,2,3,4,5,6,7,8]}]}',
     "an array outside inputs"),
    (b'{"inputs":[{"name":"x","data":[1,2,3,4,5,6,7,NaN],"shape":[8]}]}', "NaN"),
])
def test_what_the_piecewise_path_leaves_to_the_whole_parse(small_pieces, body, why):
    assert large_json.loads(body) is None, why


def test_a_16_mb_request_parses_in_pieces_to_the_same_document():
    n = 2_000_000
    body = (b'{"id":"[1,2]","inputs":[{"name":"x","shape":[1,%d],"datatype":"FP32","data":[%s]}'
            b',{"name":"m","shape":[64,4096],"datatype":"INT64","data":%s}]}'
            % (n, b",".join([b"0.25"] * n), orjson.dumps(np.arange(64 * 4096).reshape(64, 4096),
                                                         option=orjson.OPT_SERIALIZE_NUMPY)))
    assert len(body) > 10 * 1024 * 1024
    doc = large_json.loads(body)
    assert doc is not None and doc == orjson.loads(body)


def test_arrays_are_written_in_pieces_exactly_as_whole(small_pieces):
    for arr in (np.arange(10, dtype=np.float32) / 3, np.arange(7, dtype=np.int64),
                np.array([True, False, True, True]), np.zeros(0, np.float32)):
        data = large_json.in_pieces(arr)
        assert isinstance(data, orjson.Fragment) == (arr.size > 3)
        assert (orjson.dumps({"d": data}, option=orjson.OPT_SERIALIZE_NUMPY)
                == orjson.dumps({"d": arr}, option=orjson.OPT_SERIALIZE_NUMPY))
    assert large_json.in_pieces([1.5, 2.5, 3.5, 4.5]) == [1.5, 2.5, 3.5, 4.5]


def test_release_empties_a_long_list_and_leaves_short_ones():
    values = list(range(200_000))
    large_json.release(values)
    assert values == []
    short = [1, 2, 3]
    large_json.release(short)
    assert short == [1, 2, 3]
