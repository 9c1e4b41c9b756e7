"""The Open Inference Protocol (KServe V2) request and response, independent of the transport.

Every front end turns what it received (a REST JSON body, a REST body with the binary tensor
extension, a gRPC `ModelInferRequest`) into one typed `InferRequest`, and writes one
`InferResponse` back in its own encoding. What a request must satisfy to reach the model
(names, datatypes, shapes, batch rows, sizes) is checked once, here, by `RequestValidator`, so
the front ends agree on every rule and every message.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Hashable, Iterable

import numpy as np
import orjson

from . import large_json
from .codec import (
    CONTENTS_FIELDS,
    MAX_DEPTH,
    V2_TO_NUMPY,
    decode_binary,
    decode_contents,
    decode_json,
    element_count,
    encode_json,
)
from .errors import ServingError
from .manifest import Manifest, TensorSpec

JSON_HEADERS = [(b"content-type", b"application/json")]
OCTET = b"application/octet-stream"


@dataclass(frozen=True)
class RequestedOutput:
    """One output the caller wants, and whether it wants it as raw bytes (binary/raw) or typed
    data (JSON `data` / gRPC `contents`)."""
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request: model-ready arrays and what to answer with."""
    id: str | None
    feeds: dict[str, np.ndarray]
    #: rows along the batch dimension (1 for a model without one)
    rows: int
    #: requests with equal `sig` (their non-batch dimensions) may share a batch; None: never
    sig: Hashable | None
    outputs: tuple[RequestedOutput, ...]
    #: size of the encoded request, for the access log
    bytes_in: int = 0


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray
    binary: bool


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: tuple[OutputTensor, ...]


class RequestValidator:
    """The rules a request must satisfy for one served model, shared by every front end.

    `max_rows` is the largest batch one request may carry (the resolved max batch size) and
    `max_tensor_bytes` the largest tensor it may declare (checked before anything is allocated).
    """

    def __init__(self, manifest: Manifest, *, max_rows: int, max_tensor_bytes: int,
                 max_elements: int = 0,
                 dim_names: dict[str, tuple[str | None, ...]] | None = None) -> None:
        self.inputs: dict[str, TensorSpec] = {t.name: t for t in manifest.inputs}
        self.outputs: dict[str, TensorSpec] = {t.name: t for t in manifest.outputs}
        self.batched = max_rows > 0
        self.max_rows = max_rows
        self.max_tensor_bytes = max_tensor_bytes
        self.max_elements = max_elements
        # Dynamic dimensions the model names alike (e.g. "sequence" of input_ids and
        # attention_mask) must agree within a request: checked here, not by a failing batch.
        shared: dict[str, list[tuple[str, int]]] = {}
        for name, dims in (dim_names or {}).items():
            if name in self.inputs:
                for d, dim in enumerate(dims):
                    if dim and not (d == 0 and self.batched):
                        shared.setdefault(dim, []).append((name, d))
        self.shared_dims = {k: v for k, v in shared.items() if len(v) > 1}
        self.ranged = [(n, t.range) for n, t in self.inputs.items() if t.range is not None]

    def check_input(self, name: object, datatype: object, shape: object, seen: Iterable[str],
                    typed_data: str | None = None,
                    raw_way: str = "the binary tensor extension") -> np.dtype:
        """Check one input's name, datatype and shape; return its numpy dtype.

        `typed_data` names how the caller sent typed (non-raw) data, e.g. "JSON data", for
        datatypes that cannot travel that way (FP16, BF16), and `raw_way` how they can."""
        if not isinstance(name, str):
            raise ServingError(400, "an input has no string name")
        spec = self.inputs.get(name)
        if spec is None:
            raise ServingError(400, f"unknown input '{name[:64]}'; the model takes "
                                    f"{', '.join(self.inputs)}")
        if name in seen:
            raise ServingError(400, f"input '{name}' is given twice")
        if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
            raise ServingError(400, f"input '{name}': datatype {str(datatype)[:32]!r} is not "
                                    f"a V2 datatype; the model takes {spec.datatype}")
        if typed_data and datatype in ("FP16", "BF16"):
            raise ServingError(400, f"input '{name}': {datatype} cannot be sent as {typed_data}; "
                                    f"use {raw_way}")
        if datatype != spec.datatype:
            raise ServingError(400, f"input '{name}' has datatype {datatype}; the model "
                                    f"takes {spec.datatype}")
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            raise ServingError(400, f"input '{name}': shape must be a list of integers, "
                                    f"the model takes {list(spec.shape)}")
        if len(shape) != len(spec.shape):
            raise ServingError(400, f"input '{name}': shape {shape[:8]} has rank "
                                    f"{len(shape)}; the model takes {list(spec.shape)}")
        for d, want in zip(shape, spec.shape):
            if d < 0:
                raise ServingError(400, f"input '{name}': shape {shape} has a negative "
                                        f"dimension")
            if want >= 0 and d != want:
                raise ServingError(400, f"input '{name}': shape {shape} does not match "
                                        f"the model's {list(spec.shape)}")
        if self.batched:
            if shape[0] == 0:
                raise ServingError(400, f"input '{name}': empty batch (dimension 0 is 0)")
            if shape[0] > self.max_rows:
                raise ServingError(400, f"input '{name}': batch of {shape[0]} is over "
                                        f"max_batch_size {self.max_rows}")
        if 0 in shape:
            raise ServingError(400, f"input '{name}': shape {shape} has a zero dimension; "
                                    f"empty tensors are not accepted")
        if spec.max_shape is not None:
            for d, (n, most) in enumerate(zip(shape, spec.max_shape)):
                if most > 0 and n > most:
                    raise ServingError(400, f"input '{name}': dimension {d} is {n}, over the "
                                            f"model's maximum {most} (shape at most "
                                            f"{list(spec.max_shape)}; -1: no maximum)")
        dtype = V2_TO_NUMPY[datatype]
        assert dtype is not None        # the server refuses models with BF16 or BYTES inputs
        nbytes = element_count(shape) * dtype.itemsize
        if nbytes > self.max_tensor_bytes:
            raise ServingError(400, f"input '{name}': shape {shape[:8]} declares {nbytes} "
                                    f"bytes, over the body limit of {self.max_tensor_bytes}")
        return dtype

    def check_output(self, name: object, seen: set[str], index: int) -> str:
        """Check one requested output name (known, not requested twice); return it."""
        if not isinstance(name, str):
            raise ServingError(400, f"outputs[{index}] must be an object with a string 'name'")
        if name not in self.outputs:
            raise ServingError(400, f"unknown output '{name[:64]}'; the model has "
                                    f"{', '.join(self.outputs)}")
        if name in seen:
            raise ServingError(400, f"output '{name}' is requested twice")
        seen.add(name)
        return name

    def all_outputs(self, binary: bool) -> tuple[RequestedOutput, ...]:
        return tuple(RequestedOutput(n, binary) for n in self.outputs)

    def request(self, request_id: str | None, feeds: dict[str, np.ndarray],
                outputs: tuple[RequestedOutput, ...], bytes_in: int) -> InferRequest:
        """The finished request: every input present, batch rows agreeing across inputs."""
        if len(feeds) != len(self.inputs):
            missing = [n for n in self.inputs if n not in feeds]
            raise ServingError(400, f"missing input(s) {', '.join(missing)}; the model takes "
                                    f"{', '.join(self.inputs)}")
        self._check_values(feeds)
        if not self.batched:
            return InferRequest(request_id, feeds, 1, None, outputs, bytes_in)
        rows = None
        for name in feeds:
            n = feeds[name].shape[0]
            if rows is None:
                rows = n
            elif n != rows:
                raise ServingError(400, f"input '{name}': batch dimension {n} differs from "
                                        f"the other inputs' {rows}")
        assert rows is not None             # every input is there, and there is one at least
        if len(feeds) == 1:
            sig = tuple(a.shape[1:] for a in feeds.values())
        else:
            sig = tuple((n, feeds[n].shape[1:]) for n in self.inputs)
        return InferRequest(request_id, feeds, rows, sig, outputs, bytes_in)

    def _check_values(self, feeds: dict[str, np.ndarray]) -> None:
        """What can be checked before batching, so one caller's mistake is a 400 for that
        caller instead of a failed batch for everyone in it."""
        if self.max_elements:
            total = sum(a.size for a in feeds.values())
            if total > self.max_elements:
                raise ServingError(400, f"the request carries {total} tensor elements, over the "
                                        f"limit of {self.max_elements} per request "
                                        f"(SERVEDMODEL_MAX_REQUEST_ELEMENTS); split it")
        for dim, uses in self.shared_dims.items():
            sizes = {(n, d): feeds[n].shape[d] for n, d in uses}
            if len(set(sizes.values())) > 1:
                described = ", ".join(f"'{n}' dimension {d} is {v}" for (n, d), v in sizes.items())
                raise ServingError(400, f"inputs disagree on dimension '{dim}': {described}; "
                                        f"they must be equal")
        for name, (low, high) in self.ranged:
            arr = feeds[name]
            lo, hi = arr.min(), arr.max()
            if lo < low or hi > high or (arr.dtype.kind == "f" and np.isnan(arr).any()):
                bad = lo if lo < low else hi
                raise ServingError(400, f"input '{name}': value {bad} is outside the model's "
                                        f"range [{_plain(low)}, {_plain(high)}]")

    def response(self, model_name: str, model_version: str, request: InferRequest,
                 results: dict[str, np.ndarray]) -> InferResponse:
        return InferResponse(model_name, model_version, request.id, tuple(
            OutputTensor(o.name, self.outputs[o.name].datatype, results[o.name], o.binary)
            for o in request.outputs))


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# -- REST: JSON and the binary tensor extension ----------------------------------------------

def _json_depth_ok(value: object, depth: int = 0) -> bool:
    """True when `value` (a small parameters object) nests no deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(_json_depth_ok(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_json_depth_ok(v, depth + 1) for v in value)
    return True


_BOM = b"\xef\xbb\xbf"
#: A \\uD800-\\uDBFF escape not followed by a low one, or a low one not preceded by a high one.
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_INT_RANGE = (-(2 ** 63), 2 ** 64 - 1)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:32]} is infinity when parsed as double")
    return value


def _integer(text: str) -> int | float:
    value = int(text)
    if _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        return value
    return _finite(text)        # as orjson: a float beyond 64 bits, refused if infinite


def _loads_with_nonfinite(data, error: Exception):
    """Python's json writes NaN/Infinity/-Infinity tokens (so tritonclient sends them for
    non-finite inputs); orjson refuses them. Accept them through the stdlib parser, held to
    every other rule orjson applies, so both paths accept and refuse the same bodies: UTF-8
    only (no BOM, no UTF-16), no lone surrogates, no number that overflows to infinity,
    integers beyond 64 bits as floats. (Nesting is checked on the parsed document.)"""
    raw = bytes(data)
    if b"NaN" in raw or b"Infinity" in raw:
        try:
            if raw.startswith(_BOM):
                raise ValueError("UTF-8 byte order mark (BOM) is not supported")
            text = raw.decode("utf-8")
            if _LONE_SURROGATE.search(raw):
                raise ValueError("a string has a lone surrogate escape")
            return json.loads(text, parse_float=_finite, parse_int=_integer)
        except (ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError
            error = e
    raise ServingError(400, f"request body is not valid JSON (or nests deeper than "
                            f"{MAX_DEPTH} levels): {error}")


def _check_depth(doc: dict) -> None:
    """Refuse a document nested deeper than MAX_DEPTH anywhere (tensor `data` is checked by
    the codec along its first elements, without walking every number)."""
    for key, value in doc.items():
        if key == "inputs" and isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict) and not all(
                        _json_depth_ok(v, 3) for k, v in entry.items() if k != "data"):
                    break
            else:
                continue
        elif _json_depth_ok(value, 1):
            continue
        raise ServingError(400, f"request body is not valid JSON (or nests deeper than "
                                f"{MAX_DEPTH} levels): '{key[:32]}' nests too deep")


def _looks_like_binary_tensors(body) -> bool:
    """A body that failed to parse as JSON and looks like a JSON header followed by raw tensor
    bytes (it names binary_data_size, or is not UTF-8): what a client that forgot the
    Inference-Header-Content-Length header sends. Only on the error path."""
    raw = bytes(body)
    if b'"binary_data_size"' in raw:
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def request_from_rest(body: bytes, header_len: int | None,
                      validator: RequestValidator) -> InferRequest:
    """A REST body (JSON, or a JSON header of `header_len` bytes followed by binary tensor
    data) -> an InferRequest."""
    if header_len is None:
        json_part, binary = body, b""
    else:
        view = memoryview(body)
        json_part, binary = view[:header_len], view[header_len:]
    if not json_part:
        raise ServingError(400, "request body is empty; send an inference request JSON "
                                "object with 'inputs'")
    doc = large_json.loads(json_part)
    if doc is None:
        try:
            doc = orjson.loads(json_part)
        except orjson.JSONDecodeError as e:
            if header_len is None and _looks_like_binary_tensors(json_part):
                raise ServingError(400, "request body is not JSON: a request with binary tensor data needs "
                                        "the Inference-Header-Content-Length header, the byte length of "
                                        "its JSON part (the binary tensor extension)") from None
            doc = _loads_with_nonfinite(json_part, e)
    if not isinstance(doc, dict):
        raise ServingError(400, "request must be a JSON object with 'inputs'")
    _check_depth(doc)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ServingError(400, "'id' must be a string")
    params = doc.get("parameters")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise ServingError(400, "'parameters' must be an object")
    binary_all = params.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise ServingError(400, "parameters.binary_data_output must be true or false")

    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ServingError(400, f"'inputs' must be a non-empty list; the model takes "
                                f"{', '.join(validator.inputs)}")
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    # numpy turns [1.5, true] into floats silently; look for booleans in numeric data only
    # when the body has a boolean at all.
    may_have_bools = b"true" in json_part or b"false" in json_part
    for i, entry in enumerate(inputs):
        if not isinstance(entry, dict):
            raise ServingError(400, f"inputs[{i}] must be an object")
        name = entry.get("name")
        if not isinstance(name, str):
            raise ServingError(400, f"inputs[{i}].name must be a string")
        iparams = entry.get("parameters") or {}
        if not isinstance(iparams, dict):
            raise ServingError(400, f"input '{name}': 'parameters' must be an object")
        has_data = "data" in entry
        # The request's JSON, of any type until check_input has checked it.
        shape: Any = entry.get("shape")
        datatype: Any = entry.get("datatype")
        dtype = validator.check_input(name, datatype, shape, feeds,
                                      "JSON data" if has_data else None)
        size = iparams.get("binary_data_size")
        if size is not None:
            if has_data:
                raise ServingError(400, f"input '{name}': give either 'data' or "
                                        f"parameters.binary_data_size, not both")
            if type(size) is not int or size < 0:
                raise ServingError(400, f"input '{name}': binary_data_size must be a "
                                        f"non-negative integer")
            if header_len is None:
                raise ServingError(400, f"input '{name}': binary_data_size given but the "
                                        f"request has no Inference-Header-Content-Length "
                                        f"header")
            feeds[name] = decode_binary(name, binary, offset, size, dtype, shape)
            offset += size
        elif has_data:
            data = entry["data"]
            feeds[name] = decode_json(name, data, datatype, dtype, shape,
                                      check_bools=may_have_bools)
            large_json.release(data)
        else:
            raise ServingError(400, f"input '{name}' has neither 'data' nor "
                                    f"parameters.binary_data_size")
    missing = [n for n in validator.inputs if n not in feeds]
    if missing:
        raise ServingError(400, f"missing input(s) {', '.join(missing)}; the model takes "
                                f"{', '.join(validator.inputs)}")
    if offset != len(binary):
        raise ServingError(400, f"the binary section has {len(binary)} bytes but the "
                                f"inputs' binary_data_size add up to {offset}")
    outputs = _rest_outputs(doc.get("outputs"), binary_all, validator)
    return validator.request(request_id, feeds, outputs, len(body))


def _rest_outputs(outputs, binary_all: bool,
                  validator: RequestValidator) -> tuple[RequestedOutput, ...]:
    if outputs is None:
        return validator.all_outputs(binary_all)
    if not isinstance(outputs, list):
        raise ServingError(400, "'outputs' must be a list")
    wanted, seen = [], set()
    for i, entry in enumerate(outputs):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ServingError(400, f"outputs[{i}] must be an object with a string 'name'")
        name = validator.check_output(entry["name"], seen, i)
        oparams = entry.get("parameters") or {}
        if not isinstance(oparams, dict):
            raise ServingError(400, f"output '{name}': 'parameters' must be an object")
        if oparams.get("classification"):
            raise ServingError(400, f"output '{name}': the classification extension is "
                                    f"not supported")
        binary = oparams.get("binary_data", binary_all)
        if not isinstance(binary, bool):
            raise ServingError(400, f"output '{name}': binary_data must be true or false")
        wanted.append(RequestedOutput(name, binary))
    return tuple(wanted)


def response_to_rest(response: InferResponse) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """An InferResponse -> a REST body and its headers (the binary extension when any output
    is wanted as binary)."""
    entries, blobs = [], []
    for out in response.outputs:
        entry = {"name": out.name, "datatype": out.datatype, "shape": list(out.data.shape)}
        if out.binary:
            blob = out.data.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = large_json.in_pieces(encode_json(out.data))
        entries.append(entry)
    doc = {"model_name": response.model_name, "model_version": response.model_version,
           "outputs": entries}
    if response.id is not None:
        doc["id"] = response.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, JSON_HEADERS
    return header + b"".join(blobs), [
        (b"content-type", OCTET),
        (b"inference-header-content-length", str(len(header)).encode())]


# -- gRPC: ModelInferRequest / ModelInferResponse ---------------------------------------------
# The messages are used by their fields only (no import of the generated code here), so this
# module stays importable without grpcio.

def _param(params, key: str):
    """The value of one InferParameter in a protobuf map, or None."""
    if key not in params:
        return None
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def request_from_grpc(msg, validator: RequestValidator) -> InferRequest:
    """A ModelInferRequest (model name and version already checked) -> an InferRequest.

    Inputs come either all as `raw_input_contents` (one entry per input, in order) or all as
    typed `contents`. The response is raw when the request was raw, when
    parameters["binary_data_output"] is true, or when an output has no typed field (FP16)."""
    if not msg.inputs:
        raise ServingError(400, f"'inputs' must be a non-empty list; the model takes "
                                f"{', '.join(validator.inputs)}")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise ServingError(400, f"raw_input_contents has {len(raw)} entries but the request "
                                f"has {len(msg.inputs)} inputs; give one per input, in order")
    feeds: dict[str, np.ndarray] = {}
    for i, t in enumerate(msg.inputs):
        # ListFields names the non-empty fields only, without serializing anything
        typed = t.HasField("contents") and bool(t.contents.ListFields())
        if raw and typed:
            raise ServingError(400, f"input '{t.name[:64]}': has typed contents but the request "
                                    f"carries raw_input_contents; send one or the other")
        shape = list(t.shape)
        dtype = validator.check_input(t.name, t.datatype, shape, feeds,
                                      "typed contents" if typed else None, "raw_input_contents")
        if raw:
            data = raw[i]
            expected = element_count(shape) * dtype.itemsize
            if len(data) != expected:
                raise ServingError(400, f"input '{t.name}': raw_input_contents[{i}] has "
                                        f"{len(data)} bytes but shape {shape} of {t.datatype} "
                                        f"needs {expected}")
            feeds[t.name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        elif typed:
            feeds[t.name] = decode_contents(t.name, t.contents, t.datatype, dtype, shape)
        else:
            raise ServingError(400, f"input '{t.name}' has neither typed contents nor an entry "
                                    f"in raw_input_contents")
    binary_all = _param(msg.parameters, "binary_data_output")
    if binary_all is not None and not isinstance(binary_all, bool):
        raise ServingError(400, "parameters.binary_data_output must be a bool_param")
    wanted: list[str] = []
    seen: set[str] = set()
    for i, o in enumerate(msg.outputs):
        name = validator.check_output(o.name, seen, i)
        if _param(o.parameters, "classification"):
            raise ServingError(400, f"output '{name}': the classification extension is not "
                                    f"supported")
        wanted.append(name)
    names = wanted or list(validator.outputs)
    as_raw = bool(raw) or bool(binary_all) or any(
        validator.outputs[n].datatype not in CONTENTS_FIELDS for n in names)
    outputs = tuple(RequestedOutput(n, as_raw) for n in names)
    # bytes_in: the tensors' bytes (the message's own size would cost a serialization)
    return validator.request(msg.id or None, feeds, outputs,
                             sum(a.nbytes for a in feeds.values()))


def response_to_grpc(response: InferResponse, message_type):
    """An InferResponse -> a `message_type` (ModelInferResponse): all outputs raw
    (raw_output_contents, in order) or all typed."""
    msg = message_type(model_name=response.model_name, model_version=response.model_version,
                       id=response.id or "")
    for out in response.outputs:
        entry = msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.data.shape)
        if out.binary:
            msg.raw_output_contents.append(np.ascontiguousarray(out.data).tobytes())
        else:
            getattr(entry.contents, CONTENTS_FIELDS[out.datatype]).extend(
                out.data.reshape(-1).tolist())
    return msg
