"""TF Serving's REST JSON encoding of tensors (``util/json_tensor.cc``), in Python.

Requests carry ``signature_name`` (optional) and exactly one of ``instances`` (row format: one
element per example, objects keyed by input name when the signature has several inputs) or
``inputs`` (columnar format: a value, or an object keyed by input name). DT_STRING values are JSON
strings or ``{"b64": "..."}`` objects. Responses are ``{"predictions": [...]}`` for row requests
and ``{"outputs": ...}`` for columnar ones; string outputs whose name ends in ``_bytes`` are
written as ``{"b64": ...}``, float values with the shortest text that reads back to the same
float32 (``0.2``, not ``0.200000003``), whole floats with a trailing ``.0``.

One deliberate difference: TF Serving writes non-finite floats as the bare tokens ``NaN``,
``Infinity`` and ``-Infinity``, which strict JSON parsers (browsers, Go, Java) reject. Here they
are the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``, protobuf's JSON mapping for
non-finite floats, so every answer is valid JSON.

Bounds, checked before any conversion: documents nested deeper than :data:`MAX_JSON_DEPTH`, and
more than ``max_instances`` rows (or columnar entries) per request, are refused.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping

import numpy as np

from kerascls.serving.status import ServingError, invalid

# TensorFlow DataType names -> numpy dtypes for the types JSON can carry.
NUMPY_DTYPES = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_HALF": np.float16,
    "DT_INT8": np.int8,
    "DT_INT16": np.int16,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
    "DT_UINT8": np.uint8,
    "DT_UINT16": np.uint16,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
    "DT_BOOL": np.bool_,
    "DT_STRING": object,
}
MAX_JSON_DEPTH = 64  # numpy's own limit on dimensions
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_FLOAT_LIMITS = {
    "DT_FLOAT": (24, 3.4028234663852886e38),
    "DT_HALF": (11, 65504.0),
    "DT_DOUBLE": (53, 1.7976931348623157e308),
}


@dataclasses.dataclass
class PredictJson:
    """A parsed REST predict body."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    row_format: bool


def _short(value, limit: int = 120) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value, dtype: str) -> ServingError:
    return invalid(
        f"JSON Value: {_short(value)} Type: {_json_type(value)} is not of expected "
        f"type: {dtype[3:].lower()}"
    )


def is_b64(value) -> bool:
    """True for a ``{"b64": "<string>"}`` object."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _strings(value, dtype: str) -> np.ndarray:
    shape = _dense_shape(value)
    out: list[bytes] = []

    def walk(v, level):
        if isinstance(v, list):
            if level >= len(shape):
                raise invalid(
                    f"Encountered list at unexpected level: {level} expected < {len(shape)}"
                )
            if len(v) != shape[level]:
                raise invalid(
                    f"Encountered list at unexpected size: {len(v)} at level: {level} "
                    f"expected size: {shape[level]}"
                )
            for item in v:
                walk(item, level + 1)
            return
        if level != len(shape):
            raise invalid(
                f"JSON Value: {_short(v)} found at incorrect level: {level + 1} in the "
                f"JSON DOM. Expected at level: {len(shape)}"
            )
        if isinstance(v, str):
            out.append(v.encode("utf-8"))
        elif isinstance(v, dict):
            if not is_b64(v):
                raise invalid(f"JSON Value: {_short(v)} not formatted correctly for base64 data")
            try:
                out.append(base64.b64decode(v["b64"], validate=True))
            except (binascii.Error, ValueError):
                raise invalid("Unable to base64 decode") from None
        else:
            raise _type_error(v, dtype)

    walk(value, 0)
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr.reshape(shape)


def _first_bad_leaf(value, ok: Callable[[object], bool]):
    if isinstance(value, list):
        for item in value:
            bad = _first_bad_leaf(item, ok)
            if bad is not None:
                return bad
        return None
    return None if ok(value) else (value,)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(value, dtype: str) -> np.ndarray:
    try:
        raw = np.asarray(value)
    except ValueError:
        raise invalid(
            f"JSON Value: {_short(value)} is a ragged list: every list at the same "
            "level must have the same size"
        ) from None
    kind = raw.dtype.kind
    if dtype == "DT_BOOL":
        if kind != "b":
            bad = _first_bad_leaf(value, lambda v: isinstance(v, bool))
            raise _type_error(bad[0] if bad else value, dtype)
        return raw.astype(np.bool_)
    if kind not in "iuf" or (
        kind == "f" and not dtype.startswith(("DT_FLOAT", "DT_DOUBLE", "DT_HALF"))
    ):
        is_float_type = dtype in _FLOAT_LIMITS
        bad = _first_bad_leaf(
            value,
            (lambda v: _is_number(v))
            if is_float_type
            else (lambda v: isinstance(v, int) and not isinstance(v, bool)),
        )
        raise _type_error(bad[0] if bad else value, dtype)
    if dtype in _FLOAT_LIMITS:
        bits, limit = _FLOAT_LIMITS[dtype]
        if raw.size:
            if kind in "iu" and np.abs(raw.astype(np.float64)).max() > 2**bits - 1:
                big = raw.ravel()[np.argmax(np.abs(raw.astype(np.float64)).ravel())]
                raise invalid(
                    f"Cannot convert JSON value: {big} to {dtype[3:].lower()} without "
                    "loss of precision."
                )
            if kind == "f":
                finite = raw[np.isfinite(raw)]
                if finite.size and np.abs(finite).max() > limit:
                    big = finite.ravel()[np.argmax(np.abs(finite).ravel())]
                    raise invalid(
                        f"Cannot convert JSON value: {big} to {dtype[3:].lower()} "
                        "without loss of precision."
                    )
    target = NUMPY_DTYPES[dtype]
    if kind in "iu" and target not in (np.float16, np.float32, np.float64):
        info = np.iinfo(target)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            raise invalid(f"JSON Value: {_short(value)} does not fit in {dtype[3:].lower()}")
    return raw.astype(target)


def value_to_array(value, dtype: str) -> np.ndarray:
    """A JSON value (scalar or nested lists) as a numpy array of the TensorFlow type ``dtype``."""
    if dtype not in NUMPY_DTYPES:
        raise ServingError(
            "UNIMPLEMENTED",
            f"Conversion of JSON Value: {_short(value)} to type: {dtype[3:].lower()}",
        )
    if dtype == "DT_STRING":
        return _strings(value, dtype)
    if isinstance(value, dict):
        raise _type_error(value, dtype)
    return _numbers(value, dtype)


def _shape_text(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def _rows(instances: list, specs: Mapping[str, str]) -> dict[str, np.ndarray]:
    names = sorted(specs)
    first = instances[0]
    objects = isinstance(first, dict) and not is_b64(first)
    if not objects and len(names) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    if not objects:
        name = names[0]
        for i, elem in enumerate(instances):
            if isinstance(elem, dict) and not is_b64(elem):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
        try:
            return {name: value_to_array(instances, specs[name])}
        except ServingError as exc:
            raise invalid(f"Failed to process 'instances' list. Error: {exc.message}") from None
    columns: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i, elem in enumerate(instances):
        if not isinstance(elem, dict) or is_b64(elem):
            raise invalid(f"Expecting object but got list at item {i} of input list")
        for key in elem:
            if key not in specs:
                raise invalid(
                    f"Failed to process element: {i} key: {key} of 'instances' list. "
                    f"Error: JSON object: does not have named input: {key}"
                )
        if set(elem) != set(names):
            raise invalid(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{_short(elem)} keys must be equal to: {','.join(names)}"
            )
        for name in names:
            try:
                arr = value_to_array(elem[name], specs[name])
            except ServingError as exc:
                raise invalid(
                    f"Failed to process element: {i} key: {name} of 'instances' list. "
                    f"Error: {exc.message}"
                ) from None
            if columns[name] and arr.shape != columns[name][0].shape:
                raise invalid(
                    f"Failed to process element: {i} key: {name} of 'instances' list. "
                    f"Error: Expecting shape {_shape_text(columns[name][0].shape)} "
                    f"but got: {_shape_text(arr.shape)}"
                )
            columns[name].append(arr)
    return {name: np.stack(vals) for name, vals in columns.items()}


def _columns(value, specs: Mapping[str, str]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or is_b64(value):
        if len(specs) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        name = next(iter(specs))
        return {name: value_to_array(value, specs[name])}
    out = {}
    for name in sorted(specs):
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        out[name] = value_to_array(value[name], specs[name])
    return out


def json_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text (strings skipped), without parsing it."""
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = _OPEN[np.frombuffer(brackets, np.uint8)]
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def _check_count(count: int, max_instances: int | None, what: str) -> None:
    if max_instances is not None and count > max_instances:
        raise invalid(
            f"'{what}' has {count} entries; the limit is {max_instances} per request "
            "(--max_instances_per_request)"
        )


def parse_predict_body(
    body: bytes,
    input_dtypes: Callable[[str], Mapping[str, str]],
    max_instances: int | None = None,
) -> PredictJson:
    """Parse a REST predict body.

    Args:
        body: the raw request body.
        input_dtypes: ``input_dtypes(signature_name) -> {input_name: "DT_..."}``; raises
            :class:`ServingError` for an unknown model, version or signature.
        max_instances: most rows (``instances``) or first-dimension entries (``inputs``).

    Raises:
        ServingError: INVALID_ARGUMENT for every malformed body, with TF Serving's messages.
    """
    if not body or not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise invalid(
            f"JSON Parse error: arrays and objects nest {depth} deep; the limit is {MAX_JSON_DEPTH}"
        )
    try:
        doc = json.loads(body)
    except UnicodeDecodeError:
        raise invalid("JSON Parse error: Invalid encoding in string.") from None
    except json.JSONDecodeError as exc:
        raise invalid(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except RecursionError:
        raise invalid("JSON Parse error: the document is nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_short(doc)} Is not object")
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid(
            f"JSON Value: {_short(doc)} not formatted correctly. 'signature_name' key "
            "must be a string value."
        )
    specs = input_dtypes(signature)
    if not specs:
        raise invalid(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid("Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid("No values in 'instances' array")
        _check_count(len(instances), max_instances, "instances")
        return PredictJson(signature, _rows(instances, specs), True)
    if has_inputs:
        inputs = doc["inputs"]
        columns = inputs.values() if isinstance(inputs, dict) and not is_b64(inputs) else [inputs]
        for column in columns:
            if isinstance(column, list):
                _check_count(len(column), max_instances, "inputs")
        return PredictJson(signature, _columns(inputs, specs), False)
    raise invalid("Missing 'inputs' or 'instances' key")


# ---------------------------------------------------------------------------------------------
# responses


def format_float(value: float, dtype=np.float32) -> str:
    """TF Serving's decimal text: 6 significant digits when they read back exactly, else full.

    Non-finite values are JSON strings (``"NaN"``, ``"Infinity"``, ``"-Infinity"``).
    """
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"-Infinity"' if value < 0 else '"Infinity"'
    text = "%g" % value
    if dtype(float(text)) != dtype(value):
        text = "%.17g" % value if dtype is np.float64 else "%.9g" % value
    if "." not in text and "e" not in text and "n" not in text:
        text += ".0"
    return text


def _leaf_texts(arr: np.ndarray, as_bytes: bool) -> np.ndarray:
    flat = arr.ravel()
    kind = arr.dtype.kind
    if kind == "f":
        dtype = np.float64 if arr.dtype == np.float64 else np.float32
        texts = [format_float(float(v), dtype) for v in flat]
    elif kind == "b":
        texts = ["true" if v else "false" for v in flat]
    elif kind in "iu":
        texts = [str(int(v)) for v in flat]
    else:
        texts = []
        for v in flat:
            raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
            if as_bytes:
                texts.append('{"b64": "' + base64.b64encode(raw).decode("ascii") + '"}')
            else:
                texts.append(json.dumps(raw.decode("utf-8", errors="replace"), ensure_ascii=False))
    out = np.empty(len(texts), dtype=object)
    out[:] = texts
    return out.reshape(arr.shape)


def _nest(texts) -> str:
    if isinstance(texts, str):
        return texts
    if texts.ndim == 0:
        return texts.item()
    if texts.ndim == 1:
        return "[" + ", ".join(texts.tolist()) + "]"
    return "[" + ", ".join(_nest(t) for t in texts) + "]"


def format_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """The JSON body for predict ``outputs``: ``{"predictions": ...}`` or ``{"outputs": ...}``."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    texts = {n: _leaf_texts(np.asarray(outputs[n]), n.endswith("_bytes")) for n in names}
    if not row_format:
        if len(names) == 1:
            body = _nest(texts[names[0]])
        else:
            body = (
                "{\n        "
                + ",\n        ".join(f"{json.dumps(n)}: {_nest(texts[n])}" for n in names)
                + "\n    }"
            )
        return ('{\n    "outputs": ' + body + "\n}\n").encode("utf-8")
    batch = None
    for n in names:
        if texts[n].ndim == 0:
            raise invalid(f"Tensor name: {n} has no shape information ")
        if batch is not None and texts[n].shape[0] != batch:
            raise invalid(
                f"Tensor name: {n} has inconsistent batch size: {texts[n].shape[0]} "
                f"expecting: {batch}"
            )
        batch = texts[n].shape[0]
    rows = []
    for i in range(batch or 0):
        if len(names) == 1:
            rows.append(_nest(texts[names[0]][i]))
        else:
            rows.append(
                "{" + ", ".join(f"{json.dumps(n)}: {_nest(texts[n][i])}" for n in names) + "}"
            )
    return ('{\n    "predictions": [\n        ' + ",\n        ".join(rows) + "\n    ]\n}\n").encode(
        "utf-8"
    )


def error_body(message: str) -> bytes:
    """``{"error": "<message>"}``."""
    return (json.dumps({"error": message}, ensure_ascii=False) + "\n").encode("utf-8")
