"""What a handler's answer becomes on the wire: one encoded body, a stream, or the model's error.

Shared by every protocol adapter of the runtime (plain HTTP, streams, WebSocket), so a
result or an exception from user code reads the same whichever way the model is called.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
OCTETS = b"application/octet-stream"
# The model's error in the spec's built-in-image form (never a platform error body).
MODEL_ERROR_CODE = "MR.0105"

# Results that are never streamed: checked first because an ABC isinstance costs ~0.5 µs.
PLAIN_TYPES = frozenset({dict, list, str, bytes, int, float, bool, type(None), tuple})
_STREAM_TYPES = (Iterator, AsyncIterator)


def json_default(obj: Any) -> Any:
    # numpy arrays and scalars are the usual non-JSON results of model code.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=json_default)


def encode_result(result: Any) -> tuple[bytes, bytes]:
    """The handler's result as (content type, body)."""
    if isinstance(result, bytes | bytearray | memoryview):
        return OCTETS, bytes(result)
    if isinstance(result, str):
        # ModelArts code often returns json.dumps(...) from _postprocess.
        return (JSON if result.lstrip()[:1] in ("{", "[") else TEXT), result.encode()
    return JSON, json.dumps(result, ensure_ascii=False, default=json_default).encode()


def is_stream(result: Any) -> bool:
    """Whether a result is streamed: any iterator or async iterator (generators included)."""
    return result.__class__ not in PLAIN_TYPES and isinstance(result, _STREAM_TYPES)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def model_error(exc: BaseException) -> dict[str, str]:
    return {"erno": MODEL_ERROR_CODE, "msg": describe(exc)}
