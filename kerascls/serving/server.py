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
unless asked), ``--max_request_bytes`` (REST body and gRPC message cap) and
``--max_image_pixels`` (encoded images in string inputs are measured from their headers and
refused above the cap, before any decoding).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kerascls.errors import UserError, cli_main
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

    def __init__(self, manager, metrics=None):
        self.manager = manager
        self.metrics = metrics

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

        parsed = parse_predict_body(body, input_dtypes)
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
# REST front end


class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kerascls-model-server"
    timeout = 60
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms ACK stall

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("REST %s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        from kerascls.serving.jsonwire import error_body

        if close:
            self.close_connection = True
        self._send(status, error_body(message))

    def _read_body(self) -> bytes | None:
        cap = self.server.max_request_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self._error(400, "malformed chunked request body", close=True)
                    return None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > cap:
                    self._error(
                        413,
                        f"request body is larger than the limit of {cap} bytes "
                        "(--max_request_bytes)",
                        close=True,
                    )
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self._error(400, f"invalid Content-Length: {raw}", close=True)
            return None
        if length > cap:
            self._drain(length)
            self._error(
                413,
                f"request body of {length} bytes is larger than the limit of {cap} "
                "bytes (--max_request_bytes)",
                close=True,
            )
            return None
        return self.rfile.read(length) if length else b""

    def _drain(self, length: int) -> None:
        """Read and drop a refused body of moderate size, so the client sees the 413 answer."""
        if length > 4 * self.server.max_request_bytes + (1 << 20):
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                return
            length -= len(chunk)

    def _handle(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = urllib.parse.urlsplit(self.path).path
        srv = self.server
        if srv.metrics_path and path == srv.metrics_path and self.command == "GET":
            self._send(200, srv.render_metrics().encode(), "text/plain; version=0.0.4")
            return
        if not path.lower().startswith("/v1/"):
            self._error(404, f"Not found: {self.command} {path}. The API lives under /v1/models/")
            return
        with srv.slots:
            status, payload, ctype = srv.service.rest(self.command, path, body)
        self._send(status, payload, ctype)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _RestServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self,
        address,
        service: Service,
        max_request_bytes: int,
        threads: int,
        metrics_path: str | None,
        render_metrics,
    ):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _RestHandler)
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.slots = threading.BoundedSemaphore(threads)
        self.metrics_path = metrics_path
        self.render_metrics = render_metrics


# ---------------------------------------------------------------------------------------------
# gRPC front end


def _grpc_servicers(service: Service):
    import grpc
    from tensorflow_serving.apis import (
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from kerascls.serving.manager import numpy_to_tensor, tensor_to_numpy

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
                inputs = {k: tensor_to_numpy(v) for k, v in request.inputs.items()}
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
        max_request_bytes: REST body and gRPC message cap.
        max_image_pixels: cap on width x height of encoded images in string inputs.
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

        self.host = host
        self._grpc_port, self._rest_port = grpc_port, rest_port
        self.max_request_bytes = max_request_bytes
        self.monitoring = monitoring or MonitoringConfig()
        cpus = os.cpu_count() or 1
        self.rest_threads = rest_threads or 4 * cpus
        self.grpc_threads = grpc_threads or 4 * cpus
        self.batcher = Batcher(batching) if batching is not None else None
        self.manager = ModelManager(models, poll_seconds, max_image_pixels, self.batcher)
        self.metrics = Metrics()
        self.service = Service(self.manager, self.metrics)
        if config_file is not None and config_poll_seconds > 0:
            self.manager.config_reloader = _ConfigReloader(
                Path(config_file), config_poll_seconds, self.manager
            )
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc = None
        self._rest = None
        self._rest_thread = None

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
        metrics_path = (
            self.monitoring.prometheus_path if self.monitoring.prometheus_enabled else None
        )
        try:
            server = _RestServer(
                (self.host, self._rest_port),
                self.service,
                self.max_request_bytes,
                self.rest_threads,
                metrics_path,
                self.render_metrics,
            )
        except OSError as exc:
            raise UserError(
                f"cannot listen for REST on {self.host}:{self._rest_port}: {exc.strerror or exc}"
            ) from None
        self._rest, self.rest_port = server, server.server_address[1]
        self._rest_thread = threading.Thread(
            target=server.serve_forever, name="rest", kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._rest_thread.start()
        log.info("Exporting HTTP/REST API at:%s:%d ...", self.host, self.rest_port)

    def stop(self) -> None:
        """Close the ports, stop polling and batching."""
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
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
        default=30000,
        help="socket timeout of a REST connection in ms (default 30000)",
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
    return p


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except OSError as exc:
        raise UserError(f"{flag} {path}: {exc.strerror or exc}") from None


def server_from_args(args: argparse.Namespace) -> ModelServer:
    """A :class:`ModelServer` configured from parsed command-line flags."""
    from kerascls.serving.manager import ModelSource, parse_model_config

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
    for flag in ("port", "rest_api_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            raise UserError(f"--{flag} must be in 0..65535. Received: {getattr(args, flag)}")
    for flag in ("max_request_bytes", "max_image_pixels", "file_system_poll_wait_seconds"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag} must be positive. Received: {getattr(args, flag)}")
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
    _RestHandler.timeout = max(1.0, args.rest_api_timeout_in_ms / 1000.0)
    return ModelServer(
        models,
        host=args.host,
        grpc_port=args.port,
        rest_port=args.rest_api_port or None,
        poll_seconds=args.file_system_poll_wait_seconds,
        max_request_bytes=args.max_request_bytes,
        max_image_pixels=args.max_image_pixels,
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
