"""TF Serving's batching and monitoring config files (protobuf text format), parsed strictly.

``tensorflow-serving-api`` ships the API and model-config protos but not ``BatchingParameters``
(``session_bundle_config.proto``) or ``MonitoringConfig`` (``monitoring_config.proto``), so their
fields are declared here, with TF Serving's field names and types, and the files are parsed with
``google.protobuf.text_format``: an unknown field is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from kerascls.errors import UserError


@functools.lru_cache(maxsize=1)
def _messages():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="kerascls/serving/tf_serving_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )

    def add(msg, name, number, kind, type_name="", repeated=False):
        field = msg.field.add(
            name=name,
            number=number,
            type=kind,
            label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL,
        )
        if type_name:
            field.type_name = type_name

    batching = fdp.message_type.add(name="BatchingParameters")
    i64, s, b = (
        ".google.protobuf.Int64Value",
        ".google.protobuf.StringValue",
        ".google.protobuf.BoolValue",
    )
    add(batching, "max_batch_size", 1, F.TYPE_MESSAGE, i64)
    add(batching, "batch_timeout_micros", 2, F.TYPE_MESSAGE, i64)
    add(batching, "max_enqueued_batches", 3, F.TYPE_MESSAGE, i64)
    add(batching, "num_batch_threads", 4, F.TYPE_MESSAGE, i64)
    add(batching, "thread_pool_name", 5, F.TYPE_MESSAGE, s)
    add(batching, "allowed_batch_sizes", 6, F.TYPE_INT64, repeated=True)
    add(batching, "pad_variable_length_inputs", 7, F.TYPE_BOOL)
    add(batching, "enable_large_batch_splitting", 8, F.TYPE_MESSAGE, b)
    add(batching, "max_execution_batch_size", 9, F.TYPE_MESSAGE, i64)

    prometheus = fdp.message_type.add(name="PrometheusConfig")
    add(prometheus, "enable", 1, F.TYPE_BOOL)
    add(prometheus, "path", 2, F.TYPE_STRING)
    monitoring = fdp.message_type.add(name="MonitoringConfig")
    add(monitoring, "prometheus_config", 1, F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
        )
        for name in ("BatchingParameters", "MonitoringConfig")
    }


def _parse(kind: str, text: str, source: str):
    from google.protobuf import text_format

    message = _messages()[kind]()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise UserError(f"{source} is not a valid {kind}: {exc}") from None
    return message


@dataclasses.dataclass
class BatchingConfig:
    """The batching parameters the local server honours (TF Serving's defaults)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0


def parse_batching(text: str, source: str = "--batching_parameters_file") -> BatchingConfig:
    """A :class:`BatchingConfig` from a ``BatchingParameters`` text file."""
    msg = _parse("BatchingParameters", text, source)
    cfg = BatchingConfig()
    for name in (
        "max_batch_size",
        "batch_timeout_micros",
        "max_enqueued_batches",
        "num_batch_threads",
        "max_execution_batch_size",
    ):
        if msg.HasField(name):
            setattr(cfg, name, int(getattr(msg, name).value))
    if msg.HasField("enable_large_batch_splitting"):
        cfg.enable_large_batch_splitting = bool(msg.enable_large_batch_splitting.value)
    cfg.allowed_batch_sizes = tuple(int(v) for v in msg.allowed_batch_sizes)
    if msg.pad_variable_length_inputs:
        raise UserError(f"{source}: pad_variable_length_inputs is not supported by this server")
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"{source}: {name} must be positive. Received: {getattr(cfg, name)}")
    if cfg.batch_timeout_micros < 0:
        raise UserError(
            f"{source}: batch_timeout_micros must be >= 0. Received: {cfg.batch_timeout_micros}"
        )
    sizes = cfg.allowed_batch_sizes
    if sizes:
        if list(sizes) != sorted(set(sizes)) or sizes[0] <= 0:
            raise UserError(
                f"{source}: allowed_batch_sizes must be positive and increasing. "
                f"Received: {list(sizes)}"
            )
        if sizes[-1] != cfg.max_batch_size:
            raise UserError(
                f"{source}: the last allowed_batch_sizes entry must equal "
                f"max_batch_size ({cfg.max_batch_size}). Received: {sizes[-1]}"
            )
    return cfg


@dataclasses.dataclass
class MonitoringConfig:
    """Prometheus metrics: enabled, and the HTTP path of the metrics page."""

    prometheus_enabled: bool = False
    prometheus_path: str = "/monitoring/prometheus/metrics"


def parse_monitoring(text: str, source: str = "--monitoring_config_file") -> MonitoringConfig:
    """A :class:`MonitoringConfig` from a ``MonitoringConfig`` text file."""
    msg = _parse("MonitoringConfig", text, source)
    cfg = MonitoringConfig(bool(msg.prometheus_config.enable))
    if msg.prometheus_config.path:
        if not msg.prometheus_config.path.startswith("/"):
            raise UserError(
                f"{source}: prometheus_config.path must start with '/'. "
                f"Received: {msg.prometheus_config.path}"
            )
        cfg.prometheus_path = msg.prometheus_config.path
    return cfg
