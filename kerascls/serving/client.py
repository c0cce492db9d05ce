"""A TensorFlow Serving client (also for the local server): predict, status, metadata; REST or gRPC.

Python::

    from kerascls.serving.client import ServingClient
    client = ServingClient("clf", port=8501)                       # REST
    client = ServingClient("clf", port=8500, protocol="grpc")      # gRPC
    client = ServingClient("clf", port=8501, label="canary")       # or version=2
    for p in client.predict(["cat.png", open("dog.jpg", "rb").read()]):
        print(p.label, p.score, p.probabilities)

Command line::

    python -m kerascls.serving.client predict cat.png dog.jpg --model clf [--protocol grpc]
    python -m kerascls.serving.client status --model clf --label stable
    python -m kerascls.serving.client metadata --model clf

REST sends images as ``{"b64": ...}`` values of the ``image_bytes`` input (row format); gRPC
sends a DT_STRING TensorProto through ``PredictionService.Predict`` over ``grpcio``, with the
messages of :mod:`kerascls.serving.protos` and numpy conversion of :mod:`kerascls.serving.tensors`:
neither side imports TensorFlow, so both start like clients (REST needs only the standard library).
Non-finite floats in REST answers (``"NaN"``, ``"Infinity"``, ``"-Infinity"``) are read back as
floats.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import http.client
import json
import sys
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from kerascls.cli import cli_main
from kerascls.errors import UserError

PROTOCOLS = ("rest", "grpc")
DEFAULT_PORTS = {"rest": 8501, "grpc": 8500}
IMAGE_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "predict_pixels"


class ServingClientError(UserError):
    """A request the server refused or could not answer.

    Attributes:
        status: the HTTP status (REST) or the gRPC status code name (gRPC); None when the server
            could not be reached.
    """

    def __init__(self, message: str, status=None):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Prediction:
    """One image's answer: the label, its probability, the class index and all probabilities.

    ``extras`` holds any further per-image outputs (``entropy`` and ``mutual_information`` for
    the Bayesian models).
    """

    label: str
    score: float
    class_id: int
    probabilities: list[float]
    extras: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "score": self.score,
            "class_id": self.class_id,
            "probabilities": self.probabilities,
            **self.extras,
        }


def _as_bytes(image) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    path = Path(image).expanduser()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"image file not found: {image}") from None
    except IsADirectoryError:
        raise UserError(f"not an image file (a folder): {image}") from None
    except OSError as exc:
        raise UserError(f"cannot read image {image}: {exc.strerror or exc}") from None


def predictions_from_outputs(outputs: dict[str, np.ndarray]) -> list[Prediction]:
    """Per-image :class:`Prediction` objects from column outputs of a kerascls SavedModel."""
    if "probabilities" not in outputs:
        raise ServingClientError(
            "the response has no 'probabilities' output; is this a kerascls "
            f"SavedModel? Outputs: {', '.join(sorted(outputs))}"
        )
    probs = np.asarray(outputs["probabilities"], dtype=np.float64)
    n = probs.shape[0]
    class_id = np.asarray(outputs.get("class_id", probs.argmax(axis=-1))).astype(int)
    score = np.asarray(outputs.get("score", probs.max(axis=-1)), dtype=np.float64)
    labels = outputs.get("label", class_id.astype(str))
    extras = {
        k: np.asarray(v)
        for k, v in outputs.items()
        if k not in ("probabilities", "class_id", "score", "label")
    }
    result = []
    for i in range(n):
        label = labels[i]
        if isinstance(label, bytes):
            label = label.decode("utf-8", errors="replace")
        result.append(
            Prediction(
                str(label),
                float(score[i]),
                int(class_id[i]),
                [float(v) for v in probs[i]],
                {k: float(v[i]) for k, v in extras.items() if v.ndim == 1 and v.shape[0] == n},
            )
        )
    return result


class ServingClient:
    """Predict, status and metadata requests to one model on a TF Serving endpoint.

    Args:
        model: the model name on the server.
        host: server host.
        port: server port; default 8501 (REST) or 8500 (gRPC).
        protocol: ``rest`` or ``grpc``.
        version: ask for this version (exclusive with ``label``).
        label: ask for the version behind this label, e.g. ``stable`` or ``canary``.
        timeout: seconds per request.

    The client is safe to share between threads (one HTTP connection per thread).
    """

    def __init__(
        self,
        model: str = "default",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        protocol: str = "rest",
        version: int | None = None,
        label: str | None = None,
        timeout: float = 30.0,
    ):
        if protocol not in PROTOCOLS:
            raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}. Received: {protocol}")
        if version is not None and label:
            raise UserError("give a version or a label, not both")
        if version is not None and int(version) <= 0:
            raise UserError(f"version must be a positive integer. Received: {version}")
        self.model = model
        self.host = host
        self.port = int(port or DEFAULT_PORTS[protocol])
        self.protocol = protocol
        self.version = None if version is None else int(version)
        self.label = label or None
        self.timeout = timeout
        self._local = threading.local()
        self._channel = None
        self._stubs = None

    # -- public API -----------------------------------------------------------------------------
    def predict(self, images: Iterable | bytes | str | Path) -> list[Prediction]:
        """Classify encoded images (bytes or file paths) through ``serving_default``."""
        if isinstance(images, (bytes, bytearray, str, Path)):
            images = [images]
        blobs = [_as_bytes(im) for im in images]
        if not blobs:
            return []
        return predictions_from_outputs(self.predict_raw({"image_bytes": blobs}, IMAGE_SIGNATURE))

    def predict_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        """Classify float RGB 0..255 images at the model's input size through ``predict_pixels``."""
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim == 3:
            pixels = pixels[None]
        return predictions_from_outputs(self.predict_raw({"pixels": pixels}, PIXELS_SIGNATURE))

    def predict_raw(self, inputs: dict, signature: str = IMAGE_SIGNATURE) -> dict[str, np.ndarray]:
        """Run ``signature`` on named inputs (lists of bytes for string inputs, arrays otherwise).

        Returns the outputs as numpy arrays (strings as bytes objects).
        """
        if self.protocol == "grpc":
            return self._grpc_predict(inputs, signature)
        return self._rest_predict(inputs, signature)

    def status(self) -> dict:
        """The model's version states, in TF Serving's REST JSON shape (over either protocol)."""
        if self.protocol == "grpc":
            from kerascls.serving import protos

            request = protos.GetModelStatusRequest()
            self._fill_spec(request.model_spec)
            response = self._grpc_call("GetModelStatus", request)
            return _to_dict(response, field_names=False)
        return self._rest_json("GET", self._path(""))

    def metadata(self) -> dict:
        """The model's signature defs, in TF Serving's REST JSON shape (over either protocol)."""
        if self.protocol == "grpc":
            from kerascls.serving import protos

            request = protos.GetModelMetadataRequest(metadata_field=["signature_def"])
            self._fill_spec(request.model_spec)
            response = self._grpc_call("GetModelMetadata", request)
            sig_map = protos.SignatureDefMap.FromString(response.metadata["signature_def"].value)
            return {
                "model_spec": _to_dict(response.model_spec, field_names=True),
                "metadata": {"signature_def": _to_dict(sig_map, field_names=True)},
            }
        return self._rest_json("GET", self._path("/metadata"))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stubs = None

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- REST -----------------------------------------------------------------------------------
    def _path(self, suffix: str) -> str:
        path = f"/v1/models/{urllib.parse.quote(self.model, safe='')}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.label:
            path += f"/labels/{urllib.parse.quote(self.label, safe='')}"
        return path + suffix

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _rest_json(self, method: str, path: str, body: bytes | None = None) -> dict:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                # A kept-alive connection the server closed meanwhile: retry once on a new one.
                if attempt == 0 and isinstance(
                    exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                ):
                    continue
                raise ServingClientError(
                    f"cannot reach http://{self.host}:{self.port}: "
                    f"{getattr(exc, 'strerror', None) or exc}"
                ) from None
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            self._local.conn = None
        try:
            doc = json.loads(payload) if payload else {}
        except ValueError:
            raise ServingClientError(
                f"HTTP {response.status} from {path}: not JSON: {payload[:200]!r}", response.status
            ) from None
        if response.status != 200:
            message = (
                doc.get("error", payload[:200].decode("utf-8", "replace"))
                if isinstance(doc, dict)
                else str(doc)
            )
            raise ServingClientError(f"HTTP {response.status}: {message}", response.status)
        return doc

    def _rest_predict(self, inputs: dict, signature: str) -> dict[str, np.ndarray]:
        columns = {}
        for name, value in inputs.items():
            if isinstance(value, np.ndarray) and value.dtype != object:
                columns[name] = value.tolist()
            else:
                columns[name] = [
                    {"b64": base64.b64encode(_as_bytes(v)).decode("ascii")}
                    if isinstance(v, (bytes, bytearray, memoryview))
                    else v
                    for v in value
                ]
        doc = {
            "signature_name": signature,
            "inputs": next(iter(columns.values())) if len(columns) == 1 else columns,
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        answer = self._rest_json("POST", self._path(":predict"), body)
        outputs = answer.get("outputs")
        if not isinstance(outputs, dict):
            raise ServingClientError(
                "the response has a single unnamed output; expected the "
                "kerascls outputs (probabilities, class_id, label, score)"
            )
        return {k: _json_column(v) for k, v in outputs.items()}

    # -- gRPC -----------------------------------------------------------------------------------
    def _grpc(self):
        if self._stubs is None:
            try:
                import grpc
            except ImportError as exc:
                raise UserError(f"gRPC needs grpcio: pip install grpcio ({exc})") from None
            from kerascls.serving import protos

            options = [
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
            ]
            self._channel = grpc.insecure_channel(f"{self.host}:{self.port}", options=options)
            self._stubs = {
                method: self._channel.unary_unary(
                    path,
                    request_serializer=request_class.SerializeToString,
                    response_deserializer=response_class.FromString,
                )
                for method, (path, request_class, response_class) in protos.METHODS.items()
            }
        return self._stubs

    def _grpc_call(self, method: str, request):
        import grpc

        try:
            return self._grpc()[method](request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            if code == "UNAVAILABLE":
                raise ServingClientError(
                    f"cannot reach {self.host}:{self.port} over gRPC: {exc.details()}", code
                ) from None
            raise ServingClientError(f"gRPC {code}: {exc.details()}", code) from None

    def _fill_spec(self, spec, signature: str = "") -> None:
        spec.name = self.model
        if signature:
            spec.signature_name = signature
        if self.version is not None:
            spec.version.value = self.version
        elif self.label:
            spec.version_label = self.label

    def _grpc_predict(self, inputs: dict, signature: str) -> dict[str, np.ndarray]:
        from kerascls.serving import protos
        from kerascls.serving.tensors import from_numpy, to_numpy

        request = protos.PredictRequest()
        self._fill_spec(request.model_spec, signature)
        for name, value in inputs.items():
            if isinstance(value, np.ndarray) and value.dtype != object:
                proto = from_numpy(value, protos.TensorProto)
            else:
                blobs = np.empty(len(value), dtype=object)
                blobs[:] = [_as_bytes(v) if not isinstance(v, str) else v.encode() for v in value]
                proto = from_numpy(blobs, protos.TensorProto)
            request.inputs[name].CopyFrom(proto)
        response = self._grpc_call("Predict", request)
        try:
            return {name: to_numpy(proto, name=name) for name, proto in response.outputs.items()}
        except Exception as exc:  # noqa: BLE001 - a malformed answer is the server's fault
            raise ServingClientError(f"the server sent a malformed tensor: {exc}") from None


_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _json_column(value) -> np.ndarray:
    """A REST output column as numpy: ``{"b64"}`` objects decoded, strings as bytes."""

    def conv(v):
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict) and "b64" in v:
            return base64.b64decode(v["b64"])
        if isinstance(v, str):
            return _NON_FINITE.get(v) if v in _NON_FINITE else v.encode("utf-8")
        return v

    converted = conv(value)
    arr = np.asarray(converted, dtype=object if _has_bytes(converted) else None)
    return arr


def _has_bytes(value) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, bytes)


def _to_dict(message, field_names: bool) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=field_names
    )


# ---------------------------------------------------------------------------------------------
# command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="default", help="model name (default 'default')")
    common.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    common.add_argument(
        "--port", type=int, default=None, help="server port (default 8501 for rest, 8500 for grpc)"
    )
    common.add_argument("--protocol", default="rest", help="rest or grpc (default rest)")
    target = common.add_mutually_exclusive_group()
    target.add_argument("--version", type=int, default=None, help="ask for this model version")
    target.add_argument("--label", default=None, help="ask for the version behind this label")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser = _Parser(
        prog="python -m kerascls.serving.client",
        allow_abbrev=False,
        description="Query TensorFlow Serving or the kerascls local server.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{predict,status,metadata}")
    sub.required = True
    p = sub.add_parser("predict", parents=[common], help="classify image files")
    p.add_argument("images", nargs="+", help="JPEG / PNG / BMP / GIF files")
    p.add_argument("--batch-size", type=int, default=32, help="images per request (default 32)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    sub.add_parser("status", parents=[common], help="version states (JSON)")
    sub.add_parser("metadata", parents=[common], help="signature defs (JSON)")
    for action in sub.choices.values():
        action.error = parser.error
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.protocol not in PROTOCOLS:
        raise UserError(
            f"--protocol must be one of {', '.join(PROTOCOLS)}. Received: {args.protocol}"
        )
    client = ServingClient(
        args.model,
        host=args.host,
        port=args.port,
        protocol=args.protocol,
        version=args.version,
        label=args.label,
        timeout=args.timeout,
    )
    try:
        if args.command == "status":
            print(json.dumps(client.status(), indent=2))
        elif args.command == "metadata":
            print(json.dumps(client.metadata(), indent=2))
        else:
            if args.batch_size <= 0:
                raise UserError(
                    f"--batch-size must be a positive integer. Received: {args.batch_size}"
                )
            blobs = [(path, _as_bytes(path)) for path in args.images]
            width = max(len(p) for p, _ in blobs)
            for start in range(0, len(blobs), args.batch_size):
                chunk = blobs[start : start + args.batch_size]
                for (path, _), pred in zip(
                    chunk, client.predict([b for _, b in chunk]), strict=True
                ):
                    if args.json:
                        print(json.dumps({"image": path, **pred.to_dict()}))
                    else:
                        extra = "".join(f"  {k}={v:.4f}" for k, v in pred.extras.items())
                        print(f"{path:<{width}}  {pred.label}  {pred.score:.4f}{extra}")
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
