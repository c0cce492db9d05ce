"""TensorProto <-> numpy with numpy alone, and with every size checked before memory is taken.

``tf.make_ndarray`` trusts a proto's declared shape: a ``tensor_shape`` of [1000000, 8, 8, 3] with
one ``float_val`` (28 bytes on the wire) is broadcast to 192 million floats. :func:`to_numpy`
computes the element count from the shape first and refuses it above a limit, requires
``tensor_content`` to be exactly ``elements x itemsize`` bytes and strings to come one per element,
and only then allocates. It reads TensorFlow's own ``TensorProto`` and the light one of
:mod:`kerascls.serving.protos` alike (the fields are the same).
"""

from __future__ import annotations

import math

import numpy as np

from kerascls.serving.status import ServingError, invalid

# DataType number -> (name, numpy dtype, the repeated field that carries values).
DTYPES = {
    1: ("DT_FLOAT", np.float32, "float_val"),
    2: ("DT_DOUBLE", np.float64, "double_val"),
    3: ("DT_INT32", np.int32, "int_val"),
    4: ("DT_UINT8", np.uint8, "int_val"),
    5: ("DT_INT16", np.int16, "int_val"),
    6: ("DT_INT8", np.int8, "int_val"),
    7: ("DT_STRING", object, "string_val"),
    9: ("DT_INT64", np.int64, "int64_val"),
    10: ("DT_BOOL", np.bool_, "bool_val"),
    17: ("DT_UINT16", np.uint16, "int_val"),
    19: ("DT_HALF", np.float16, "half_val"),
    22: ("DT_UINT32", np.uint32, "uint32_val"),
    23: ("DT_UINT64", np.uint64, "uint64_val"),
}
_BY_NUMPY = {np.dtype(v[1]): k for k, v in DTYPES.items() if v[1] is not object}


def _shape_text(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def to_numpy(
    proto, *, max_elements: int | None = None, max_batch: int | None = None, name: str = "tensor"
) -> np.ndarray:
    """A TensorProto as numpy (DT_STRING as an object array of bytes).

    Args:
        proto: a ``tensorflow.TensorProto`` (TensorFlow's class or the light one).
        max_elements: refuse shapes with more elements than this, before allocating.
        max_batch: refuse a first dimension larger than this (instances per request).
        name: the input's name, for messages.

    Raises:
        ServingError: INVALID_ARGUMENT for unsupported dtypes, malformed shapes, sizes above the
            limits and values that do not fill the declared shape.
    """
    entry = DTYPES.get(int(proto.dtype))
    if entry is None:
        raise ServingError(
            "UNIMPLEMENTED" if proto.dtype else "INVALID_ARGUMENT",
            f"input '{name}': TensorProto dtype {int(proto.dtype)} is not supported "
            f"(supported: {', '.join(v[0] for v in DTYPES.values())})",
        )
    dtype_name, dtype, field = entry
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input '{name}': TensorProto has an unknown rank")
    dims = [int(d.size) for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid(f"input '{name}': TensorProto shape {_shape_text(dims)} has a negative size")
    if max_batch is not None and dims and dims[0] > max_batch:
        raise invalid(
            f"input '{name}' has {dims[0]} instances; the limit is {max_batch} per request "
            "(--max_instances_per_request)"
        )
    count = math.prod(dims)
    if max_elements is not None and count > max_elements:
        raise invalid(
            f"input '{name}': TensorProto shape {_shape_text(dims)} declares {count} elements; "
            f"the limit is {max_elements}"
        )
    if dtype is object:
        values = proto.string_val
        if len(values) != count:
            raise invalid(
                f"input '{name}': TensorProto shape {_shape_text(dims)} needs {count} strings; "
                f"got {len(values)}"
            )
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(dims)
    np_dtype = np.dtype(dtype)
    content = proto.tensor_content
    if content:
        if len(content) != count * np_dtype.itemsize:
            raise invalid(
                f"input '{name}': tensor_content has {len(content)} bytes; shape "
                f"{_shape_text(dims)} of {dtype_name} needs {count * np_dtype.itemsize}"
            )
        return (
            np.frombuffer(content, dtype=np_dtype.newbyteorder("<")).astype(np_dtype).reshape(dims)
        )
    values = getattr(proto, field)
    given = len(values)
    if given > count:
        raise invalid(
            f"input '{name}': TensorProto has {given} values for shape {_shape_text(dims)} "
            f"({count} elements)"
        )
    if dtype_name == "DT_HALF":
        raw = np.array(values, dtype=np.uint16).view(np.float16)
    elif dtype_name == "DT_BOOL":
        raw = np.array(values, dtype=np.bool_)
    else:
        try:
            raw = np.array(values, dtype=np_dtype)
        except OverflowError:
            raise invalid(f"input '{name}': a value does not fit in {dtype_name}") from None
    if given == count:
        return raw.reshape(dims)
    # TensorFlow's rule: fewer values than elements repeat the last one (none: zeros).
    out = np.zeros(count, dtype=np_dtype)
    if given:
        out[:given] = raw
        out[given:] = raw[-1]
    return out.reshape(dims)


def from_numpy(arr, proto_class):
    """A ``proto_class`` TensorProto holding ``arr`` (object / bytes arrays become DT_STRING)."""
    arr = np.asarray(arr)
    proto = proto_class()
    for d in arr.shape:
        proto.tensor_shape.dim.add(size=int(d))
    if arr.dtype == object or arr.dtype.kind in "SU":
        proto.dtype = 7
        proto.string_val.extend(
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in arr.ravel().tolist()
        )
        return proto
    number = _BY_NUMPY.get(arr.dtype)
    if number is None:
        raise ValueError(f"no TensorFlow dtype for numpy {arr.dtype}")
    proto.dtype = number
    proto.tensor_content = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return proto
