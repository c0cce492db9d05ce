"""A TensorFlow-Serving-compatible model server, for machines without Docker and for tests.

Usage (the flags are ``tensorflow_model_server``'s, so the real binary is a drop-in swap)::

    python -m kerascls.serving.server --port=8500 --rest_api_port=8501 \\
        --model_name=clf --model_base_path=runs/x/models/seed_cnn
    python -m kerascls.serving.server --rest_api_port=8501 --model_config_file=models.config \\
        --enable_batching --batching_parameters_file=batching.config \\
        --monitoring_config_file=monitoring.config

REST (``--rest_api_port``; 0 disables REST, as in TF Serving):

* ``GET  /v1/models/{m}[/versions/{n} | /labels/{l}]``: version status;
* ``GET  /v1/models/{m}[/versions/{n} | /labels/{l}]/metadata``: signature defs;
* ``POST /v1/models/{m}[/versions/{n} | /labels/{l}]:predict``: row (``instances``) or columnar
  (``inputs``) JSON, ``{"b64": ...}`` for binary strings, optional ``signature_name``.

Errors are ``{"error": "..."}`` with TF Serving's HTTP status codes (400 for bad requests and
unknown signatures or labels, 404 for unknown models and versions, 413 for a body above
``--max_request_bytes``). gRPC (``--port``): ``PredictionService.Predict`` and
``GetModelMetadata``, ``ModelService.GetModelStatus``.

Beyond TF Serving: ``--host`` (default 127.0.0.1: nothing outside the machine can connect
unless asked), ``--max_request_bytes`` (REST body and gRPC message cap),
``--max_instances_per_request`` (rows or first-dimension entries per request, checked before any
conversion; gRPC tensors are also refused when their declared shape has more elements than the
message has bytes), ``--max_image_pixels`` (encoded images in string inputs are measured from
their headers and refused above the cap, before any decoding) and ``--max_request_pixels`` (the
same, summed over a request). REST runs on aiohttp (:mod:`kerascls.serving.rest`): bodies and
requests are bounded by ``--rest_api_timeout_in_ms`` and every error is JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from concurrent import futures
from pathlib import Path

from kerascls.cli import cli_main
from kerascls.errors import UserError
from kerascls.serving.configs import (
    BatchingConfig,
    MonitoringConfig,
    parse_batching,
    parse_monitoring,
)
from kerascls.serving.status import ServingError, invalid

log = logging.getLogger("kerascls.serving")

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000
# TF Serving's default max_batch_size (configs.BatchingConfig): rows per request.
DEFAULT_MAX_INSTANCES = 1000
DEFAULT_REST_TIMEOUT_MS = 30000
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC takes the message cap as a signed 32-bit int

_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1


def _message_dict(message, field_names: bool) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=field_names
    )


# ---------------------------------------------------------------------------------------------
# request handling shared by REST and gRPC


class Service:
    """The operations both front ends expose, with metrics."""

    def __init__(
        self,
        manager,
        metrics=None,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        max_elements: int = DEFAULT_MAX_REQUEST_BYTES,
    ):
        self.manager = manager
        self.metrics = metrics
        self.max_instances = max_instances
        self.max_elements = max_elements

    def observe(self, model: str, api: str, entrypoint: str, started: float, code: str) -> None:
        if self.metrics is not None:
            self.metrics.observe(model or "", api, entrypoint, code, time.perf_counter() - started)

    # -- REST ---------------------------------------------------------------------------------
    def rest(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        """Answer one REST request: ``(http_status, body, content_type)``."""
        from kerascls.serving.jsonwire import error_body

        started = time.perf_counter()
        model, api = "", "unknown"
        try:
            if method == "POST" and (m := _PREDICT_RE.fullmatch(path)):
                model, version, label, verb = self._route(m)
                api = verb.lower()
                payload = self._rest_predict(model, version, label, verb.lower(), body)
            elif method == "GET" and (m := _STATUS_RE.fullmatch(path)):
                model, version, label, sub = self._route(m)
                if not model:
                    raise invalid("Missing model name in request.")
                api = "metadata" if sub else "status"
                payload = (
                    self._rest_metadata(model, version, label)
                    if sub
                    else self._rest_status(model, version, label)
                )
            else:
                raise invalid(f"Malformed request: {method} {path}")
        except ServingError as exc:
            self.observe(model, api, "REST", started, exc.code)
            return exc.http_status, error_body(exc.message), "application/json"
        except Exception as exc:  # noqa: BLE001 - a failure is a 500 answer, never a dead server
            log.exception("REST %s %s failed", method, path)
            self.observe(model, api, "REST", started, "INTERNAL")
            return (
                500,
                error_body(f"Internal error: {type(exc).__name__}: {exc}"),
                "application/json",
            )
        self.observe(model, api, "REST", started, "OK")
        return 200, payload, "application/json"

    @staticmethod
    def _route(match):
        name, version, label, last = match.groups()
        name = urllib.parse.unquote(name) if name else ""
        if version is not None:
            if int(version) > _INT64_MAX:
                raise invalid(f"Failed to convert version: {version} to numeric.")
            version = int(version)
        label = urllib.parse.unquote(label) if label else None
        return name, version, label, last

    def _rest_predict(self, model, version, label, verb, body) -> bytes:
        from kerascls.serving.jsonwire import format_predict_response, parse_predict_body

        servable = self.manager.servable(model, version, label)

        def input_dtypes(signature_name):
            sig = servable.signature(signature_name)
            if verb != "predict":
                expected = f"tensorflow/serving/{verb}"
                if sig.method_name != expected:
                    kind = "classification" if verb == "classify" else "regression"
                    raise invalid(
                        f"Expected {kind} signature method_name to be {expected}. "
                        f"Was: {sig.method_name}"
                    )
                raise ServingError(
                    "UNIMPLEMENTED",
                    f"this server answers :predict only; signature '{sig.name}' needs :{verb}",
                )
            return {k: v[0] for k, v in sig.inputs.items()}

        parsed = parse_predict_body(body, input_dtypes, self.max_instances)
        _, outputs = self.manager.run(servable, parsed.signature_name, parsed.inputs)
        return format_predict_response(outputs, parsed.row_format)

    def _rest_status(self, model, version, label) -> bytes:
        import json

        response = self.manager.status(model, version, label)
        return (json.dumps(_message_dict(response, False), indent=1) + "\n").encode()

    def _rest_metadata(self, model, version, label) -> bytes:
        import json

        from tensorflow_serving.apis import get_model_metadata_pb2

        response = self.manager.metadata(model, version, label)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        doc = {
            "model_spec": _message_dict(response.model_spec, True),
            "metadata": {"signature_def": _message_dict(sig_map, True)},
        }
        return (json.dumps(doc, indent=1) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# gRPC front end


def _grpc_servicers(service: Service):
    import grpc
    from tensorflow_serving.apis import (
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from kerascls.serving.manager import numpy_to_tensor
    from kerascls.serving.tensors import to_numpy

    manager = service.manager

    def spec_args(spec):
        which = spec.WhichOneof("version_choice")
        version = spec.version.value if which == "version" else None
        label = spec.version_label if which == "version_label" else None
        return spec.name, version, label

    def call(context, api, model, fn):
        started = time.perf_counter()
        try:
            result = fn()
        except ServingError as exc:
            service.observe(model, api, "GRPC", started, exc.code)
            context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
        except Exception as exc:  # noqa: BLE001 - a failure is an INTERNAL status, never a crash
            log.exception("gRPC %s failed", api)
            service.observe(model, api, "GRPC", started, "INTERNAL")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        service.observe(model, api, "GRPC", started, "OK")
        return result

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 - gRPC method name
            name, version, label = spec_args(request.model_spec)

            def run():
                inputs = {
                    k: to_numpy(
                        v,
                        max_elements=service.max_elements,
                        max_batch=service.max_instances,
                        name=k,
                    )
                    for k, v in request.inputs.items()
                }
                servable, sig, outputs = manager.predict(
                    name,
                    version,
                    label,
                    request.model_spec.signature_name,
                    inputs,
                    list(request.output_filter),
                )
                response = predict_pb2.PredictResponse()
                response.model_spec.name = name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = sig.name
                for key, value in outputs.items():
                    response.outputs[key].CopyFrom(numpy_to_tensor(value))
                return response

            return call(context, "predict", name, run)

        def GetModelMetadata(self, request, context):  # noqa: N802 - gRPC method name
            name, version, label = spec_args(request.model_spec)
            return call(
                context,
                "metadata",
                name,
                lambda: manager.metadata(name, version, label, list(request.metadata_field)),
            )

        def Classify(self, request, context):  # noqa: N802 - gRPC method name
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server implements Predict only")

        def Regress(self, request, context):  # noqa: N802 - gRPC method name
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server implements Predict only")

        def MultiInference(self, request, context):  # noqa: N802 - gRPC method name
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server implements Predict only")

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):  # noqa: N802 - gRPC method name
            name, version, label = spec_args(request.model_spec)
            return call(context, "status", name, lambda: manager.status(name, version, label))

        def HandleReloadConfigRequest(self, request, context):  # noqa: N802 - gRPC method name
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "reload the config with --model_config_file_poll_wait_seconds",
            )

    return (
        Prediction(),
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
        Models(),
        model_service_pb2_grpc.add_ModelServiceServicer_to_server,
    )


# ---------------------------------------------------------------------------------------------
# the server


class ModelServer:
    """The local model server: a manager, a gRPC server and a REST server.

    Args:
        models: the :class:`kerascls.serving.manager.ModelSource` list to serve.
        host: the address both servers bind (127.0.0.1 keeps them private to the machine).
        grpc_port: gRPC port; 0 picks a free one, None disables gRPC.
        rest_port: REST port; 0 picks a free one, None disables REST.
        poll_seconds: how often base paths are scanned for new versions.
        max_request_bytes: REST body and gRPC message cap (at most 2**31 - 1, gRPC's limit).
        max_image_pixels: cap on width x height of encoded images in string inputs.
        max_request_pixels: cap on the pixels of all images of one request.
        max_instances: rows (or first-dimension entries) per request.
        rest_timeout: seconds to read a REST body, and seconds to answer it.
        batching: merge concurrent requests (``--enable_batching``) with these parameters.
        monitoring: Prometheus metrics settings.
        rest_threads: requests the REST side runs at once.
        grpc_threads: gRPC worker threads.
        config_file: the model config file, re-read every ``config_poll_seconds`` when positive.

    Example:
        >>> with ModelServer([ModelSource("clf", Path("models/clf"))], rest_port=0) as srv:
        ...     print(srv.rest_port)
    """

    def __init__(
        self,
        models,
        *,
        host: str = "127.0.0.1",
        grpc_port: int | None = 0,
        rest_port: int | None = 0,
        poll_seconds: float = 1.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        rest_timeout: float = DEFAULT_REST_TIMEOUT_MS / 1000.0,
        batching: BatchingConfig | None = None,
        monitoring: MonitoringConfig | None = None,
        rest_threads: int | None = None,
        grpc_threads: int | None = None,
        config_file: str | Path | None = None,
        config_poll_seconds: float = 0.0,
    ):
        from kerascls.serving.batching import Batcher
        from kerascls.serving.manager import ModelManager
        from kerascls.serving.metrics import Metrics

        for what, value in (
            ("max_request_bytes", max_request_bytes),
            ("max_image_pixels", max_image_pixels),
            ("max_request_pixels", max_request_pixels),
            ("max_instances", max_instances),
            ("rest_timeout", rest_timeout),
        ):
            if not value > 0:
                raise UserError(f"{what} must be positive. Received: {value}")
        if max_request_bytes > GRPC_MAX_MESSAGE_BYTES:
            raise UserError(
                f"max_request_bytes must be at most {GRPC_MAX_MESSAGE_BYTES} (gRPC's limit). "
                f"Received: {max_request_bytes}"
            )
        self.host = host
        self._grpc_port, self._rest_port = grpc_port, rest_port
        self.max_request_bytes = max_request_bytes
        self.rest_timeout = rest_timeout
        self.monitoring = monitoring or MonitoringConfig()
        cpus = os.cpu_count() or 1
        self.rest_threads = rest_threads or 4 * cpus
        self.grpc_threads = grpc_threads or 4 * cpus
        self.batcher = Batcher(batching) if batching is not None else None
        self.manager = ModelManager(
            models, poll_seconds, max_image_pixels, self.batcher, max_request_pixels
        )
        self.metrics = Metrics()
        self.service = Service(self.manager, self.metrics, max_instances, max_request_bytes)
        if config_file is not None and config_poll_seconds > 0:
            self.manager.config_reloader = _ConfigReloader(
                Path(config_file), config_poll_seconds, self.manager
            )
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc = None
        self._rest = None

    def render_metrics(self) -> str:
        snap = self.manager.snapshot()
        return self.metrics.render(
            {m: sum(s == "AVAILABLE" for s in v.values()) for m, v in snap.items()}
        )

    def start(self) -> ModelServer:
        """Load the models (first scan), then open the ports."""
        self.manager.start()
        try:
            if self._grpc_port is not None:
                self._start_grpc()
            if self._rest_port is not None:
                self._start_rest()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_grpc(self) -> None:
        import grpc

        options = [
            ("grpc.max_receive_message_length", self.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.grpc_threads, thread_name_prefix="grpc"),
            options=options,
        )
        pred, add_pred, models, add_models = _grpc_servicers(self.service)
        add_pred(pred, server)
        add_models(models, server)
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            port = server.add_insecure_port(f"{host}:{self._grpc_port}")
        except RuntimeError as exc:
            raise UserError(
                f"cannot listen for gRPC on {self.host}:{self._grpc_port}: {exc}"
            ) from None
        if not port:
            raise UserError(
                f"cannot listen for gRPC on {self.host}:{self._grpc_port} (port in use?)"
            )
        server.start()
        self._grpc, self.grpc_port = server, port
        log.info("Running gRPC ModelServer at %s:%d ...", self.host, port)

    def _start_rest(self) -> None:
        from kerascls.serving.rest import RestFrontEnd

        metrics_path = (
            self.monitoring.prometheus_path if self.monitoring.prometheus_enabled else None
        )
        front = RestFrontEnd(
            self.service,
            self.host,
            self._rest_port,
            self.max_request_bytes,
            self.rest_threads,
            self.rest_timeout,
            metrics_path,
            self.render_metrics,
        )
        self.rest_port = front.start()
        self._rest = front
        log.info("Exporting HTTP/REST API at:%s:%d ...", self.host, self.rest_port)

    def stop(self) -> None:
        """Close the ports, stop polling and batching."""
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
            self._grpc = None
        self.manager.stop()
        if self.batcher is not None:
            self.batcher.close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _ConfigReloader:
    """Re-reads the model config file when it changes.

    The ``--model_config_file_poll_wait_seconds`` of TF Serving.
    """

    def __init__(self, path: Path, every: float, manager):
        self.path, self.every, self.manager = path, every, manager
        self.last_check = time.monotonic()
        self.mtime = _mtime(path)

    def __call__(self) -> None:
        from kerascls.serving.manager import parse_model_config

        now = time.monotonic()
        if now - self.last_check < self.every:
            return
        self.last_check = now
        mtime = _mtime(self.path)
        if mtime == self.mtime:
            return
        self.mtime = mtime
        try:
            models = parse_model_config(self.path.read_text(), str(self.path))
        except (OSError, UserError) as exc:
            log.error("keeping the previous model config: %s", exc)
            return
        log.info(
            "model config %s changed: now serving %s", self.path, ", ".join(m.name for m in models)
        )
        self.manager.set_models(models)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# ---------------------------------------------------------------------------------------------
# command line


def _flag_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m kerascls.serving.server",
        allow_abbrev=False,
        description="TensorFlow-Serving-compatible model server (REST and gRPC).",
    )
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    p.add_argument(
        "--rest_api_port",
        type=int,
        default=0,
        help="REST port; 0 disables REST, as in TF Serving (default 0)",
    )
    p.add_argument("--model_name", default="default", help="model name (default 'default')")
    p.add_argument(
        "--model_base_path",
        default="",
        help="directory holding the model's integer version directories",
    )
    p.add_argument("--model_config_file", default="", help="ModelServerConfig text file")
    p.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=int,
        default=0,
        help="re-read the config file this often; 0 reads it once",
    )
    p.add_argument(
        "--allow_version_labels_for_unavailable_models",
        type=_flag_bool,
        nargs="?",
        const=True,
        default=False,
        help="accepted for compatibility: labels here may always name versions that "
        "are not loaded yet (requests through them answer 404 until they are)",
    )
    p.add_argument(
        "--file_system_poll_wait_seconds",
        type=int,
        default=1,
        help="seconds between scans of the base paths (default 1)",
    )
    p.add_argument(
        "--enable_batching",
        type=_flag_bool,
        nargs="?",
        const=True,
        default=False,
        help="merge concurrent requests into batches",
    )
    p.add_argument("--batching_parameters_file", default="", help="BatchingParameters text file")
    p.add_argument("--monitoring_config_file", default="", help="MonitoringConfig text file")
    p.add_argument(
        "--rest_api_num_threads",
        type=int,
        default=0,
        help="REST requests processed at once (default 4 x CPUs)",
    )
    p.add_argument(
        "--rest_api_timeout_in_ms",
        type=int,
        default=DEFAULT_REST_TIMEOUT_MS,
        help="most time to receive a REST body, and to answer it, in ms "
        f"(default {DEFAULT_REST_TIMEOUT_MS})",
    )
    p.add_argument(
        "--grpc_max_threads", type=int, default=0, help="gRPC worker threads (default 4 x CPUs)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; 0.0.0.0 to accept other machines (default 127.0.0.1)",
    )
    p.add_argument(
        "--max_request_bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help=f"largest REST body / gRPC message (default {DEFAULT_MAX_REQUEST_BYTES})",
    )
    p.add_argument(
        "--max_image_pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="largest encoded image, width x height, accepted in string inputs "
        f"(default {DEFAULT_MAX_IMAGE_PIXELS})",
    )
    p.add_argument(
        "--max_request_pixels",
        type=int,
        default=DEFAULT_MAX_REQUEST_PIXELS,
        help=f"most image pixels in one request, all images together "
        f"(default {DEFAULT_MAX_REQUEST_PIXELS})",
    )
    p.add_argument(
        "--max_instances_per_request",
        type=int,
        default=DEFAULT_MAX_INSTANCES,
        help="most rows (instances, or first-dimension entries) in one predict request "
        f"(default {DEFAULT_MAX_INSTANCES}, TF Serving's default batching limit)",
    )
    return p


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except OSError as exc:
        raise UserError(f"{flag} {path}: {exc.strerror or exc}") from None


def _check_flags(args: argparse.Namespace) -> None:
    """Every numeric flag in range, before anything is loaded."""
    for flag in ("port", "rest_api_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            raise UserError(f"--{flag} must be in 0..65535. Received: {getattr(args, flag)}")
    for flag in (
        "max_request_bytes",
        "max_image_pixels",
        "max_request_pixels",
        "max_instances_per_request",
        "file_system_poll_wait_seconds",
        "rest_api_timeout_in_ms",
    ):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag} must be positive. Received: {getattr(args, flag)}")
    for flag in ("rest_api_num_threads", "grpc_max_threads", "model_config_file_poll_wait_seconds"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} must be 0 or more. Received: {getattr(args, flag)}")
    if args.max_request_bytes > GRPC_MAX_MESSAGE_BYTES:
        raise UserError(
            f"--max_request_bytes must be at most {GRPC_MAX_MESSAGE_BYTES} (gRPC's message "
            f"limit). Received: {args.max_request_bytes}"
        )


def server_from_args(args: argparse.Namespace) -> ModelServer:
    """A :class:`ModelServer` configured from parsed command-line flags."""
    from kerascls.serving.manager import ModelSource, parse_model_config

    _check_flags(args)
    if args.model_config_file and args.model_base_path:
        raise UserError("give --model_config_file or --model_base_path, not both")
    if args.model_config_file:
        models = parse_model_config(
            _read(args.model_config_file, "--model_config_file"), args.model_config_file
        )
    elif args.model_base_path:
        models = [ModelSource(args.model_name, Path(args.model_base_path).expanduser())]
    else:
        raise UserError("give --model_base_path (with --model_name) or --model_config_file")
    for m in models:
        if not m.base_path.is_dir():
            raise UserError(f"model '{m.name}': base path {m.base_path} is not a directory")
    batching = None
    if args.batching_parameters_file and not args.enable_batching:
        raise UserError("--batching_parameters_file needs --enable_batching")
    if args.enable_batching:
        batching = (
            parse_batching(
                _read(args.batching_parameters_file, "--batching_parameters_file"),
                args.batching_parameters_file,
            )
            if args.batching_parameters_file
            else BatchingConfig()
        )
    monitoring = (
        parse_monitoring(
            _read(args.monitoring_config_file, "--monitoring_config_file"),
            args.monitoring_config_file,
        )
        if args.monitoring_config_file
        else None
    )
    return ModelServer(
        models,
        host=args.host,
        grpc_port=args.port,
        rest_port=args.rest_api_port or None,
        poll_seconds=args.file_system_poll_wait_seconds,
        max_request_bytes=args.max_request_bytes,
        max_image_pixels=args.max_image_pixels,
        max_request_pixels=args.max_request_pixels,
        max_instances=args.max_instances_per_request,
        rest_timeout=args.rest_api_timeout_in_ms / 1000.0,
        batching=batching,
        monitoring=monitoring,
        rest_threads=args.rest_api_num_threads or None,
        grpc_threads=args.grpc_max_threads or None,
        config_file=args.model_config_file or None,
        config_poll_seconds=args.model_config_file_poll_wait_seconds,
    )


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    server = server_from_args(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    log.info("shutting down")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
