"""TF Serving's gRPC messages without TensorFlow: the few the client needs, in a private pool.

``tensorflow-serving-api``'s generated modules import ``tensorflow.core...``, and importing any
module under the ``tensorflow`` package runs TensorFlow's ``__init__`` (seconds and hundreds of MB).
This module declares the messages the client sends and reads (``PredictRequest``/``Response``,
``GetModelStatus*``, ``GetModelMetadata*`` with ``SignatureDefMap``, ``TensorProto``) with their
real full names, field numbers, types and JSON names, builds them with ``google.protobuf`` alone
in a private descriptor pool (so they never clash with TensorFlow's own copies in a process that
has both), and exposes the message classes. On the wire they are the same messages;
``tests/test_serving_client_light.py`` checks every declared field against TensorFlow's
descriptors. Fields the client never reads (streaming options, composite tensor type specs) are
left out and travel as unknown fields.

Example:
    >>> from kerascls.serving import protos
    >>> request = protos.PredictRequest()
    >>> request.model_spec.name = "clf"
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto
_T = {
    "double": _F.TYPE_DOUBLE,
    "float": _F.TYPE_FLOAT,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "int32": _F.TYPE_INT32,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "uint32": _F.TYPE_UINT32,
}

DATA_TYPES = {
    "DT_INVALID": 0, "DT_FLOAT": 1, "DT_DOUBLE": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 5,
    "DT_INT8": 6, "DT_STRING": 7, "DT_COMPLEX64": 8, "DT_INT64": 9, "DT_BOOL": 10,
    "DT_QINT8": 11, "DT_QUINT8": 12, "DT_QINT32": 13, "DT_BFLOAT16": 14, "DT_QINT16": 15,
    "DT_QUINT16": 16, "DT_UINT16": 17, "DT_COMPLEX128": 18, "DT_HALF": 19, "DT_RESOURCE": 20,
    "DT_VARIANT": 21, "DT_UINT32": 22, "DT_UINT64": 23,
}  # fmt: skip
ERROR_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "UNAUTHENTICATED": 16,
    "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15,
}  # fmt: skip
VERSION_STATES = {
    "UNKNOWN": 0, "START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50,
}  # fmt: skip

# message name -> [(field, number, type, repeated, json_name or None, oneof or None)];
# a type starting with "." is a message or enum full name; "map<K,V>" a map field.
_TENSORFLOW = {
    "TensorShapeProto.Dim": [("size", 1, "int64"), ("name", 2, "string")],
    "TensorShapeProto": [
        ("dim", 2, ".tensorflow.TensorShapeProto.Dim", True),
        ("unknown_rank", 3, "bool"),
    ],
    "TensorProto": [
        ("dtype", 1, ".tensorflow.DataType"),
        ("tensor_shape", 2, ".tensorflow.TensorShapeProto"),
        ("version_number", 3, "int32"),
        ("tensor_content", 4, "bytes"),
        ("half_val", 13, "int32", True),
        ("float_val", 5, "float", True),
        ("double_val", 6, "double", True),
        ("int_val", 7, "int32", True),
        ("string_val", 8, "bytes", True),
        ("scomplex_val", 9, "float", True),
        ("int64_val", 10, "int64", True),
        ("bool_val", 11, "bool", True),
        ("dcomplex_val", 12, "double", True),
        ("uint32_val", 16, "uint32", True),
        ("uint64_val", 17, "uint64", True),
    ],
    "TensorInfo.CooSparse": [
        ("values_tensor_name", 1, "string"),
        ("indices_tensor_name", 2, "string"),
        ("dense_shape_tensor_name", 3, "string"),
    ],
    "TensorInfo.CompositeTensor": [("components", 2, ".tensorflow.TensorInfo", True)],
    "TensorInfo": [
        ("name", 1, "string", False, None, "encoding"),
        ("coo_sparse", 4, ".tensorflow.TensorInfo.CooSparse", False, None, "encoding"),
        ("composite_tensor", 5, ".tensorflow.TensorInfo.CompositeTensor", False, None, "encoding"),
        ("dtype", 2, ".tensorflow.DataType"),
        ("tensor_shape", 3, ".tensorflow.TensorShapeProto"),
    ],
    "SignatureDef": [
        ("inputs", 1, "map<string,.tensorflow.TensorInfo>"),
        ("outputs", 2, "map<string,.tensorflow.TensorInfo>"),
        ("method_name", 3, "string"),
        ("defaults", 4, "map<string,.tensorflow.TensorProto>"),
    ],
}
_SERVING = {
    "ModelSpec": [
        ("name", 1, "string"),
        ("version", 2, ".google.protobuf.Int64Value", False, None, "version_choice"),
        ("version_label", 4, "string", False, None, "version_choice"),
        ("signature_name", 3, "string"),
    ],
    "PredictRequest": [
        ("model_spec", 1, ".tensorflow.serving.ModelSpec"),
        ("inputs", 2, "map<string,.tensorflow.TensorProto>"),
        ("output_filter", 3, "string", True),
    ],
    "PredictResponse": [
        ("model_spec", 2, ".tensorflow.serving.ModelSpec"),
        ("outputs", 1, "map<string,.tensorflow.TensorProto>"),
    ],
    "StatusProto": [
        ("error_code", 1, ".tensorflow.error.Code", False, "error_code"),
        ("error_message", 2, "string", False, "error_message"),
    ],
    "ModelVersionStatus": [
        ("version", 1, "int64"),
        ("state", 2, ".tensorflow.serving.ModelVersionStatus.State"),
        ("status", 3, ".tensorflow.serving.StatusProto"),
    ],
    "GetModelStatusRequest": [("model_spec", 1, ".tensorflow.serving.ModelSpec")],
    "GetModelStatusResponse": [
        (
            "model_version_status",
            1,
            ".tensorflow.serving.ModelVersionStatus",
            True,
            "model_version_status",
        )
    ],
    "SignatureDefMap": [("signature_def", 1, "map<string,.tensorflow.SignatureDef>")],
    "GetModelMetadataRequest": [
        ("model_spec", 1, ".tensorflow.serving.ModelSpec"),
        ("metadata_field", 2, "string", True),
    ],
    "GetModelMetadataResponse": [
        ("model_spec", 1, ".tensorflow.serving.ModelSpec"),
        ("metadata", 2, "map<string,.google.protobuf.Any>"),
    ],
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _enum(parent, name: str, values: dict[str, int]) -> None:
    enum = parent.enum_type.add(name=name)
    for key, number in values.items():
        enum.value.add(name=key, number=number)


def _file(name: str, package: str, deps: list[str], messages: dict, enums=()):
    fdp = descriptor_pb2.FileDescriptorProto(
        name=name, package=package, syntax="proto3", dependency=deps
    )
    made: dict[str, descriptor_pb2.DescriptorProto] = {}
    for path in sorted(messages, key=lambda p: p.count(".")):  # parents before nested messages
        parent_path, _, short = path.rpartition(".")
        siblings = made[parent_path].nested_type if parent_path else fdp.message_type
        made[path] = siblings.add(name=short)
    for path, fields in messages.items():
        msg = made[path]
        oneofs: dict[str, int] = {}
        for spec in fields:
            fname, number, ftype, repeated, json_name, oneof = (*spec, False, None, None)[:6]
            field = msg.field.add(name=fname, number=number, json_name=json_name or _camel(fname))
            field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if ftype.startswith("map<"):
                key, value = ftype[4:-1].split(",")
                entry = msg.nested_type.add(name=fname[:1].upper() + _camel(fname)[1:] + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_T[key], label=_F.LABEL_OPTIONAL)
                vfield = entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL)
                vfield.type_name = value
                vfield.json_name = "value"
                entry.field[0].json_name = "key"
                field.label = _F.LABEL_REPEATED
                field.type_name = f".{package}.{path}.{entry.name}"
            elif ftype.startswith("."):
                field.type_name = ftype
            else:
                field.type = _T[ftype]
            if oneof:
                if oneof not in oneofs:
                    oneofs[oneof] = len(msg.oneof_decl)
                    msg.oneof_decl.add(name=oneof)
                field.oneof_index = oneofs[oneof]
    for parent_path, enum_name, values in enums:
        _enum(made[parent_path] if parent_path else fdp, enum_name, values)
    return fdp


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in (wrappers_pb2, any_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    error = _file("kerascls/light/error_codes.proto", "tensorflow.error", [], {})
    _enum(error, "Code", ERROR_CODES)
    pool.Add(error)
    pool.Add(
        _file(
            "kerascls/light/tensorflow.proto",
            "tensorflow",
            [],
            _TENSORFLOW,
            [("", "DataType", DATA_TYPES)],
        )
    )
    pool.Add(
        _file(
            "kerascls/light/tensorflow_serving.proto",
            "tensorflow.serving",
            [
                "google/protobuf/wrappers.proto",
                "google/protobuf/any.proto",
                "kerascls/light/tensorflow.proto",
                "kerascls/light/error_codes.proto",
            ],
            _SERVING,
            [("ModelVersionStatus", "State", VERSION_STATES)],
        )
    )
    return pool


POOL = _build_pool()


def message_class(full_name: str):
    """The message class of ``full_name`` (e.g. ``tensorflow.serving.PredictRequest``)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


TensorProto = message_class("tensorflow.TensorProto")
ModelSpec = message_class("tensorflow.serving.ModelSpec")
PredictRequest = message_class("tensorflow.serving.PredictRequest")
PredictResponse = message_class("tensorflow.serving.PredictResponse")
GetModelStatusRequest = message_class("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponse = message_class("tensorflow.serving.GetModelStatusResponse")
GetModelMetadataRequest = message_class("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse = message_class("tensorflow.serving.GetModelMetadataResponse")
SignatureDefMap = message_class("tensorflow.serving.SignatureDefMap")

# gRPC method paths and the classes of their requests and responses.
METHODS = {
    "Predict": ("/tensorflow.serving.PredictionService/Predict", PredictRequest, PredictResponse),
    "GetModelMetadata": (
        "/tensorflow.serving.PredictionService/GetModelMetadata",
        GetModelMetadataRequest,
        GetModelMetadataResponse,
    ),
    "GetModelStatus": (
        "/tensorflow.serving.ModelService/GetModelStatus",
        GetModelStatusRequest,
        GetModelStatusResponse,
    ),
}
