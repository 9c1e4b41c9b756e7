"""Tensor codec: V2 datatype names <-> numpy dtypes (a table and its inverse), and the JSON and
binary encodings of tensor data.

JSON data is validated strictly: numbers only (no strings, nulls or objects), integers in range
for integer tensors, booleans for BOOL. Non-finite floats in *outputs* are written as the JSON
strings "NaN", "Infinity" and "-Infinity" so the body stays valid JSON for every parser;
numpy (and so `tritonclient`'s `as_numpy`) reads those strings back as floats.
"""
from __future__ import annotations

import numpy as np

from .contract import DATATYPES
from .errors import ServingError

#: V2 datatype name -> numpy dtype, for every name of the shared table (contract.DATATYPES).
#: BF16 has no numpy dtype and BYTES is variable-length: the server refuses models with either
#: (see `model.py`), but the names are valid V2 names.
_NUMPY_OF = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
V2_TO_NUMPY: dict[str, np.dtype | None] = {
    name: (np.dtype(_NUMPY_OF[name]) if name in _NUMPY_OF else None) for name in DATATYPES}
#: The inverse: numpy dtype -> V2 datatype name.
NUMPY_TO_V2: dict[np.dtype, str] = {dt: name for name, dt in V2_TO_NUMPY.items() if dt is not None}

#: onnxruntime's type strings (`NodeArg.type`) -> V2 names, to check a manifest against the model.
ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16", "tensor(string)": "BYTES",
}

#: V2 datatype -> the field of the gRPC InferTensorContents that carries it typed. FP16 and
#: BF16 have none (they travel raw only).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
#: The numpy dtype each typed field holds (before narrowing to the tensor's datatype).
_CONTENTS_DTYPES = {"bool_contents": np.dtype(np.bool_), "int_contents": np.dtype(np.int32),
                    "int64_contents": np.dtype(np.int64), "uint_contents": np.dtype(np.uint32),
                    "uint64_contents": np.dtype(np.uint64),
                    "fp32_contents": np.dtype(np.float32), "fp64_contents": np.dtype(np.float64)}

#: Which numpy kinds (as inferred from JSON values) each target kind accepts.
_ACCEPTED_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
#: Deepest JSON nesting accepted anywhere in a request.
MAX_DEPTH = 100
#: Flat JSON data longer than this is converted to an array in pieces of this many elements.
CHUNK_ELEMENTS = 65536


def element_count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _depth(value: object) -> int:
    """Nesting depth of `data` along its first elements (cheap: O(depth), not O(size))."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        if depth > MAX_DEPTH or not value:
            break
        value = value[0]
    return depth


def _rows_per_chunk(data: list) -> int:
    """How many of `data`'s first-level items make about CHUNK_ELEMENTS numbers (rows taken
    as long as the first one)."""
    per_row, value = 1, data[0] if data else None
    while isinstance(value, list) and value:
        per_row *= len(value)
        value = value[0]
    return max(1, CHUNK_ELEMENTS // per_row)


def _has_bool(value: object) -> bool:
    if type(value) is bool:
        return True
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return False


def decode_json(name: str, data: object, datatype: str, dtype: np.dtype, shape: list[int],
                *, check_bools: bool = False) -> np.ndarray:
    """JSON `data` (flat or nested, row-major) -> an array of `dtype` and `shape`."""
    if not isinstance(data, list):
        data = [data]
    if _depth(data) > MAX_DEPTH:
        raise ServingError(400, f"input '{name}': data is nested deeper than {MAX_DEPTH} levels")
    try:
        rows = _rows_per_chunk(data)
        if rows < len(data):
            # A long list converted in pieces: between them other threads (the event loop,
            # when this runs in the decode thread) get the interpreter lock.
            arr = np.concatenate([np.array(data[i:i + rows])
                                  for i in range(0, len(data), rows)])
        else:
            arr = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ServingError(400, f"input '{name}': data must be a flat or rectangular nested list "
                                f"of numbers") from None
    kind = dtype.kind
    if kind != "b" and arr.dtype.kind != "b" and check_bools and _has_bool(data):
        raise ServingError(400, f"input '{name}': data must be numbers for datatype {datatype}, "
                                f"got booleans among them")
    if arr.dtype.kind not in _ACCEPTED_KINDS[kind]:
        if arr.size == 0:
            arr = arr.astype(dtype)
        else:
            what = "booleans (true/false)" if kind == "b" else (
                "integers" if kind in "iu" else "numbers")
            raise ServingError(400, f"input '{name}': data must be {what} for datatype {datatype}, "
                                    f"got {_describe(arr)}")
    expected = element_count(shape)
    if arr.size != expected:
        raise ServingError(400, f"input '{name}': shape {shape} needs {expected} elements, "
                                f"data has {arr.size}")
    if kind in "iu" and arr.size and arr.dtype != dtype:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise ServingError(400, f"input '{name}': a value is out of range for {datatype} "
                                    f"[{info.min}, {info.max}]")
    try:
        return arr.astype(dtype, copy=False).reshape(shape)
    except (ValueError, OverflowError):
        raise ServingError(400, f"input '{name}': data cannot be converted to {datatype}") from None


def _describe(arr: np.ndarray) -> str:
    return {"U": "strings", "S": "strings", "O": "null, objects or mixed values", "b": "booleans",
            "f": "floats"}.get(arr.dtype.kind, str(arr.dtype))


def decode_binary(name: str, buf: bytes | memoryview, offset: int, size: int, dtype: np.dtype,
                  shape: list[int]) -> np.ndarray:
    """A slice of the request body -> an array (no copy) after checking the byte size."""
    expected = element_count(shape) * dtype.itemsize
    if size != expected:
        raise ServingError(400, f"input '{name}': binary_data_size is {size} bytes but shape "
                                f"{shape} of {NUMPY_TO_V2[dtype]} needs {expected}")
    if offset + size > len(buf):
        raise ServingError(400, f"input '{name}': binary_data_size {size} runs past the end of "
                                f"the body ({len(buf) - offset} bytes left)")
    return np.frombuffer(buf, dtype=dtype, count=element_count(shape), offset=offset).reshape(shape)


_NONFINITE = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


def encode_json(arr: np.ndarray):
    """An array -> flat JSON data for orjson (OPT_SERIALIZE_NUMPY): the array itself when it is
    finite, else a list where non-finite floats are "NaN"/"Infinity"/"-Infinity"."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(flat)
        if bad.any():
            out = flat.tolist()
            for i in np.flatnonzero(bad).tolist():
                v = out[i]
                out[i] = "NaN" if v != v else _NONFINITE[v]
            return out
    if flat.dtype.kind == "f" and flat.dtype.itemsize == 2:
        return flat.tolist()        # orjson does not serialize float16 arrays
    return flat


def decode_contents(name: str, contents, datatype: str, dtype: np.dtype,
                    shape: list[int]) -> np.ndarray:
    """gRPC typed `contents` (an InferTensorContents) -> an array of `dtype` and `shape`: the
    values must be in the datatype's own field, as many as the shape declares, in range."""
    field = CONTENTS_FIELDS.get(datatype)
    others = [f for f in _CONTENTS_DTYPES if f != field and len(getattr(contents, f))]
    if field is None or field not in _CONTENTS_DTYPES or others:
        raise ServingError(400, f"input '{name}': typed {datatype} data goes in "
                                f"contents.{field or '(none: send it raw)'}, got "
                                f"{', '.join(others) or 'another field'}")
    values = getattr(contents, field)
    expected = element_count(shape)
    if len(values) != expected:
        raise ServingError(400, f"input '{name}': shape {shape} needs {expected} elements, "
                                f"contents.{field} has {len(values)}")
    arr = np.fromiter(values, dtype=_CONTENTS_DTYPES[field], count=len(values))
    if arr.dtype != dtype and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ServingError(400, f"input '{name}': a value is out of range for {datatype} "
                                    f"[{info.min}, {info.max}]")
    return arr.astype(dtype, copy=False).reshape(shape)
