"""Open Inference Protocol V2 tensors: datatypes and the JSON and binary codecs of infer requests/responses.

Requests: `{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data"?, "parameters"?}],
"outputs"?: [{"name", "parameters"?: {"binary_data": bool}}]}`. `data` may be flat or nested
(row-major); it is reshaped to `shape`. With the binary tensor extension the body is the JSON
header (its length in the `Inference-Header-Content-Length` header) followed by the raw bytes
of the inputs that carry `parameters.binary_data_size`, in input order: little-endian values,
BOOL one byte each, BYTES each element as a 4-byte little-endian length and its bytes.

Decoded inputs are numpy arrays of the datatype's dtype (BYTES: an object array of `bytes`).
Outputs are encoded in JSON (`data` flat, row-major; BYTES as UTF-8 strings) unless the
request asks for binary (`outputs[i].parameters.binary_data`, or `parameters.binary_data_output`
for all outputs), as tritonclient does by default.

Invariant: a problem with what the client sent raises `InvalidInput` (answered 400), a problem
with what the model produced raises `OutputError` (answered 500); nothing else is raised on
purpose.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NAMES_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}
# Which numpy kinds of JSON-decoded data each datatype family accepts.
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}
_LENGTH = struct.Struct("<I")


class InvalidInput(ValueError):
    """The request is not a valid V2 infer request for this model: answered 400 `{"error": ...}`.

    A handler may raise it too (from `infer_tensors` or its hooks) to reject bad input as a 400.
    """


class OutputError(ValueError):
    """The model's result cannot be sent as V2 output tensors: answered 500 `{"error": ...}`."""


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None  # None: follow the request's `binary_data_output`


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None  # None: every output the model produced
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    name = _NAMES_BY_DTYPE.get(array.dtype.newbyteorder("="))
    if name is None:
        raise OutputError(f"numpy dtype {array.dtype} has no V2 datatype")
    return name


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    if header_length is None:
        header_length = len(body)
    if not 0 <= header_length <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes")
    try:
        header = json.loads(body[:header_length])
    except ValueError as exc:
        raise InvalidInput(f"the request is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the request must be a JSON object with 'inputs'")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    # One writable copy of the binary section, so handlers may change input arrays in place.
    binary = memoryview(bytearray(body[header_length:]))
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    for i, raw in enumerate(raw_inputs):
        name, array, used = _decode_input(i, raw, binary[offset:])
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears twice")
        inputs[name] = array
        offset += used
    if offset != len(binary):
        raise InvalidInput(
            f"the binary section has {len(binary) - offset} bytes that no input's binary_data_size claims"
        )
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    request_id = header.get("id")
    return InferRequest(
        id=None if request_id is None else str(request_id),
        inputs=inputs,
        outputs=_requested_outputs(header.get("outputs")),
        binary_output=bool(parameters.get("binary_data_output", False)),
        parameters=parameters,
    )


def _decode_input(i: int, raw: Any, binary: memoryview) -> tuple[str, np.ndarray, int]:
    """(name, array, bytes of the binary section it used)."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"inputs[{i}] must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{i}] needs a 'name'")
    where = f"input '{name}'"
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers, got {shape!r}")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidInput(f"{where}: unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
    count = math.prod(shape)
    parameters = raw.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise InvalidInput(
                f"{where}: binary_data_size {size!r} does not fit the {len(binary)} bytes left in the body"
            )
        flat = _from_binary(where, binary[:size], datatype, count)
    else:
        if "data" not in raw:
            raise InvalidInput(f"{where} has neither 'data' nor parameters.binary_data_size")
        flat = _from_json(where, raw["data"], datatype)
        size = 0
    if flat.size != count:
        raise InvalidInput(f"{where}: shape {shape} needs {count} elements, got {flat.size}")
    return name, flat.reshape(shape), size


def _from_json(where: str, data: Any, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        items = _flatten(data)
        out = np.empty(len(items), dtype=object)
        for j, item in enumerate(items):
            if not isinstance(item, str):
                raise InvalidInput(f"{where}: BYTES data must be strings, got {type(item).__name__}")
            out[j] = item.encode()
        return out
    dtype = DATATYPES[datatype]
    try:
        array = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise InvalidInput(f"{where}: data is not a regular nested list ({exc})") from None
    if array.dtype.kind in "fO" and dtype.kind in "iu" and all(type(x) is int for x in _flatten(data)):
        # Python ints past int64 (UINT64 above 2**63) make numpy guess float64 or objects: convert exactly.
        try:
            array = np.array(data, dtype=dtype)
        except OverflowError:
            raise InvalidInput(f"{where}: values out of range for {datatype}") from None
    if array.size and array.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise InvalidInput(f"{where}: datatype {datatype} needs {_describe_kind(dtype.kind)} in 'data'")
    converted = array.astype(dtype).ravel()
    if dtype.kind in "iu" and array.size and not np.array_equal(converted, array.ravel()):
        raise InvalidInput(f"{where}: values out of range for {datatype}")
    return converted


def _describe_kind(kind: str) -> str:
    return {"b": "true/false values", "u": "integers", "i": "integers"}.get(kind, "numbers")


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else (item,))
    return out


def _from_binary(where: str, raw: memoryview, datatype: str, count: int) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_elements(where, raw)
    dtype = DATATYPES[datatype].newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}: {len(raw)} bytes of binary data, but {count} {datatype} values take {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)


def _bytes_elements(where: str, raw: memoryview) -> np.ndarray:
    items: list[bytes] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"{where}: BYTES binary data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(f"{where}: a BYTES element of {length} bytes runs past the data")
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _requested_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput('\'outputs\' must be a list like [{"name": "output0"}]')
    requested = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{i}] needs a 'name'")
        parameters = item.get("parameters") or {}
        binary = parameters.get("binary_data") if isinstance(parameters, dict) else None
        requested.append(RequestedOutput(item["name"], None if binary is None else bool(binary)))
    return requested


def as_output_tensors(result: Any, requested: list[RequestedOutput] | None) -> dict[str, np.ndarray]:
    """A handler's result as named arrays: a dict maps names to arrays; anything else is one output."""
    if not isinstance(result, dict):
        name = requested[0].name if requested and len(requested) == 1 else "output0"
        result = {name: result}
    tensors = {}
    for name, value in result.items():
        try:
            array = np.asarray(value)
        except ValueError as exc:
            raise OutputError(f"output '{name}' is not a regular array ({exc})") from None
        datatype_of(array)
        if array.dtype.kind == "O":
            for item in array.flat:
                if not isinstance(item, str | bytes):
                    raise OutputError(
                        f"output '{name}' holds {type(item).__name__} values; a tensor holds numbers, "
                        "booleans, str or bytes"
                    )
        tensors[str(name)] = array
    return tensors


def encode_response(
    model_name: str,
    model_version: str | None,
    request: InferRequest,
    tensors: dict[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """(body, JSON header length when the body has a binary section, else None)."""
    wanted = request.outputs or [RequestedOutput(name, None) for name in tensors]
    outputs, chunks = [], []
    for item in wanted:
        array = tensors.get(item.name)
        if array is None:
            raise InvalidInput(f"unknown output '{item.name}'; the model produced {', '.join(tensors) or 'none'}")
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": item.name, "datatype": datatype, "shape": list(array.shape)}
        if request.binary_output if item.binary is None else item.binary:
            raw = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json(item.name, array, datatype)
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": model_name}
    if model_version:
        answer["model_version"] = model_version
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = outputs
    header = json.dumps(answer, ensure_ascii=False).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _to_json(name: str, array: np.ndarray, datatype: str) -> list[Any]:
    if datatype != "BYTES":
        return array.ravel().tolist()
    out = []
    for item in array.flat:
        if isinstance(item, bytes):
            try:
                item = item.decode()
            except UnicodeDecodeError:
                raise OutputError(
                    f"output '{name}' holds bytes that are not UTF-8 text; ask for it as binary data "
                    '(outputs: [{"name": ..., "parameters": {"binary_data": true}}])'
                ) from None
        out.append(str(item))
    return out


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.flat:
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts += (_LENGTH.pack(len(raw)), raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def tensor_metadata(schema: Any) -> list[dict[str, Any]]:
    """Tensor metadata derived from an `apis[].request/response.data` JSON schema ([] if not derivable)."""
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return []
    tensors = []
    for name, prop in schema["properties"].items():
        datatype, shape = _schema_tensor(prop)
        if datatype is not None:
            tensors.append({"name": name, "datatype": datatype, "shape": shape})
    return tensors


_SCHEMA_TYPES = {"number": "FP32", "integer": "INT64", "boolean": "BOOL", "string": "BYTES", "file": "BYTES"}


def _schema_tensor(prop: Any) -> tuple[str | None, list[int]]:
    shape: list[int] = []
    while isinstance(prop, dict) and prop.get("type") == "array":
        shape.append(-1)
        prop = prop.get("items")
    if not isinstance(prop, dict):
        return None, []
    datatype = _SCHEMA_TYPES.get(prop.get("type"))  # type: ignore[arg-type]
    return datatype, shape or [1]
