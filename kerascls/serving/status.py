"""Error statuses shared by the REST and gRPC sides of the local server.

Codes are the canonical gRPC / TensorFlow status codes; :func:`http_status` maps them to HTTP
the way ``tensorflow_model_server`` does (``model_servers/http_server.cc``): INVALID_ARGUMENT,
FAILED_PRECONDITION and OUT_OF_RANGE are 400, NOT_FOUND 404, RESOURCE_EXHAUSTED 429,
UNIMPLEMENTED 501, UNAVAILABLE 503, and INTERNAL / UNKNOWN / DATA_LOSS 500.
"""

from __future__ import annotations

import re

# Canonical status codes (google.rpc.Code, tensorflow.error.Code): name -> number.
CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
CODE_NAMES = {v: k for k, v in CODES.items()}

_HTTP = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """A request that failed with a canonical status ``code`` (e.g. ``"INVALID_ARGUMENT"``)."""

    def __init__(self, code: str, message: str):
        if code not in CODES:
            raise ValueError(f"unknown status code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return http_status(self.code)


def http_status(code: str) -> int:
    """The HTTP status TF Serving answers for a canonical status code."""
    return _HTTP.get(code, 500)


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


_NODE_PREFIX = re.compile(r"\{\{function_node [^}]*\}\}\s*")
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]")
_GRAPH_TRACE = re.compile(r"\n\s*\[\[\{\{node [^\n]*|\n\s*\[\[[^\n]*\]\]")


def from_tf_error(exc) -> ServingError:
    """A ServingError from a ``tf.errors.OpError``, its code kept and its graph noise removed."""
    code = CODE_NAMES.get(int(getattr(exc, "error_code", 2)), "UNKNOWN")
    message = getattr(exc, "message", None) or str(exc)
    message = _NODE_PREFIX.sub("", message)
    message = _GRAPH_TRACE.sub("", message)
    message = _OP_SUFFIX.sub("", message)
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    noise = (
        "Function call stack",
        "[[",
        "Graph execution error",
        "Detected at node",
        "<stack traces unavailable>",
        'File "',
    )
    message = " ".join(ln for ln in lines if not ln.startswith(noise))
    return ServingError(code, message.strip() or code)
