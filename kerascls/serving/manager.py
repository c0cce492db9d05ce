"""The servable manager of the local server: which model versions are loaded, and running them.

It follows TensorFlow Serving's rules: a model's base path holds integer version directories
(``00000123`` is 123; other names are skipped) and is polled every
``--file_system_poll_wait_seconds``; the version policy (``latest { num_versions }`` by default,
``all {}``, ``specific { versions }``) says which versions to serve; a new version is loaded, and
its warmup requests (``assets.extra/tf_serving_warmup_requests``) replayed, before an old one is
unloaded; a version that fails to load ends in state END with its error in the status and is
retried with back-off (after one polling interval, then twice as long each time, at most
:data:`MAX_RETRY_SECONDS`), and at once when its files change, so a version copied in slowly goes
live once its last file lands. Version labels map names such as ``stable`` and ``canary`` to
versions.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from kerascls.errors import UserError
from kerascls.serving.status import ServingError, from_tf_error, invalid, not_found

log = logging.getLogger("kerascls.serving")

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
WARMUP_PATH = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000
_VERSION_DIR = re.compile(r"^\d+$")
MAX_RETRY_SECONDS = 60.0  # TF Serving's --load_retry_interval_micros default


# ---------------------------------------------------------------------------------------------
# configuration


@dataclasses.dataclass
class ModelSource:
    """One served model: its name, base path, version policy and version labels.

    Attributes:
        policy: ``("latest", n)``, ``("all",)`` or ``("specific", (v1, v2, ...))``.
    """

    name: str
    base_path: Path
    policy: tuple = ("latest", 1)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)

    def wanted(self, on_disk: list[int]) -> set[int]:
        """The versions among ``on_disk`` that the policy serves."""
        kind = self.policy[0]
        if kind == "all":
            return set(on_disk)
        if kind == "specific":
            return set(on_disk) & set(self.policy[1])
        return set(sorted(on_disk)[-int(self.policy[1]) :]) if on_disk else set()


def parse_model_config(text: str, source: str = "--model_config_file") -> list[ModelSource]:
    """ModelSources from a ``ModelServerConfig`` in protobuf text format."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise UserError(f"{source} is not a valid ModelServerConfig: {exc}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise UserError(f"{source} must hold a model_config_list")
    models = []
    for cfg in config.model_config_list.config:
        if not cfg.name:
            raise UserError(f"{source}: every config needs a name")
        if not cfg.base_path:
            raise UserError(f"{source}: model '{cfg.name}' needs a base_path")
        if cfg.model_platform not in ("", "tensorflow"):
            raise UserError(
                f"{source}: model '{cfg.name}' has model_platform "
                f"'{cfg.model_platform}'; this server serves 'tensorflow' SavedModels"
            )
        choice = cfg.model_version_policy.WhichOneof("policy_choice")
        if choice == "all":
            policy: tuple = ("all",)
        elif choice == "specific":
            versions = tuple(int(v) for v in cfg.model_version_policy.specific.versions)
            if not versions:
                raise UserError(f"{source}: model '{cfg.name}': specific {{}} needs versions")
            policy = ("specific", versions)
        else:
            policy = ("latest", max(1, int(cfg.model_version_policy.latest.num_versions or 1)))
        labels = {str(k): int(v) for k, v in cfg.version_labels.items()}
        models.append(ModelSource(cfg.name, Path(cfg.base_path).expanduser(), policy, labels))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError(f"{source}: model names must be unique; got {', '.join(names)}")
    return models


def versions_on_disk(base_path: Path) -> dict[int, Path]:
    """Integer version directories under ``base_path`` (digits only, like TF Serving)."""
    found: dict[int, Path] = {}
    try:
        entries = list(base_path.iterdir())
    except OSError:
        return found
    for entry in entries:
        if _VERSION_DIR.match(entry.name) and entry.is_dir():
            found.setdefault(int(entry.name), entry)
    return found


# ---------------------------------------------------------------------------------------------
# one loaded version


@dataclasses.dataclass
class Signature:
    """A signature of a loaded SavedModel: dtypes (``"DT_FLOAT"``) and shapes (-1 unknown)."""

    name: str
    method_name: str
    inputs: dict[str, tuple[str, tuple | None]]
    outputs: dict[str, tuple[str, tuple | None]]
    fn: object = None


def _tensor_info(info) -> tuple[str, tuple | None]:
    from tensorflow.core.framework import types_pb2

    dtype = types_pb2.DataType.Name(info.dtype)
    if info.tensor_shape.unknown_rank:
        return dtype, None
    return dtype, tuple(int(d.size) for d in info.tensor_shape.dim)


def _shape_text(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from an encoded image's header, or None if Pillow does not know it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError:
        return (1 << 31, 1)
    except Exception:  # noqa: BLE001 - not an image: the model reports it
        return None


class Servable:
    """One loaded SavedModel version."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        max_image_pixels: int,
        max_request_pixels: int | None = None,
    ):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.name = name
        self.version = version
        self.path = path
        self.max_image_pixels = max_image_pixels
        self.max_request_pixels = max_request_pixels
        pb = path / "saved_model.pb"
        if not pb.is_file():
            raise ServingError("NOT_FOUND", f"SavedModel file does not exist at: {path}")
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString(pb.read_bytes())
        graphs = [g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags]
        if not graphs:
            raise ServingError("NOT_FOUND", f"no MetaGraphDef with the tag 'serve' in {path}")
        self.signature_defs = graphs[0].signature_def
        try:
            self.loaded = tf.saved_model.load(str(path), tags=["serve"])
        except tf.errors.OpError as exc:
            raise from_tf_error(exc) from None
        self.signatures: dict[str, Signature] = {}
        for key, sdef in self.signature_defs.items():
            if key.startswith("__"):
                continue
            self.signatures[key] = Signature(
                key,
                sdef.method_name,
                {k: _tensor_info(v) for k, v in sdef.inputs.items()},
                {k: _tensor_info(v) for k, v in sdef.outputs.items()},
                self.loaded.signatures.get(key),
            )

    def signature(self, name: str) -> Signature:
        key = name or DEFAULT_SIGNATURE
        sig = self.signatures.get(key)
        if sig is None or sig.fn is None:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        return sig

    def check_inputs(self, sig: Signature, inputs: dict[str, np.ndarray]) -> None:
        """Names, dtypes and shapes against the signature; image sizes against the pixel limit."""
        sent, wanted = set(inputs), set(sig.inputs)
        if sent != wanted:
            extra = ", ".join(sorted(sent - wanted))
            missing = ", ".join(sorted(wanted - sent))
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{', '.join(sorted(sent))}}}) != len({{{', '.join(sorted(wanted))}}})"
                f". Sent extra: {{{extra}}}. Missing but required: {{{missing}}}."
            )
        for name, (dtype, shape) in sig.inputs.items():
            arr = inputs[name]
            got = _dtype_name(arr)
            if got != dtype:
                raise invalid(f"input '{name}' must be {dtype}; received {got}")
            if shape is not None and (
                arr.ndim != len(shape)
                or any(
                    want >= 0 and want != have for want, have in zip(shape, arr.shape, strict=True)
                )
            ):
                raise invalid(
                    f"input '{name}' has shape {_shape_text(arr.shape)}; signature "
                    f"'{sig.name}' expects {_shape_text(shape)}"
                )
            if dtype == "DT_STRING":
                self._check_images(name, arr)

    def _check_images(self, name: str, arr: np.ndarray) -> None:
        total = 0
        for i, value in enumerate(arr.ravel()):
            size = image_size(value) if isinstance(value, bytes) and value else None
            if not size:
                continue
            w, h = size
            if w * h > self.max_image_pixels:
                shown = f"{w}x{h} pixels" if w < (1 << 31) else "too many pixels"
                raise invalid(
                    f"image {i} of input '{name}' has {shown}; the limit is "
                    f"{self.max_image_pixels} pixels (--max_image_pixels)"
                )
            total += w * h
            if self.max_request_pixels is not None and total > self.max_request_pixels:
                raise invalid(
                    f"the images of input '{name}' up to image {i} have {total} pixels; the "
                    f"limit is {self.max_request_pixels} per request (--max_request_pixels)"
                )

    def run(self, sig: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on checked inputs; TensorFlow errors become ServingErrors."""
        import tensorflow as tf

        feed = {}
        for name, arr in inputs.items():
            dtype = sig.inputs[name][0]
            feed[name] = (
                tf.constant(arr, dtype=tf.string) if dtype == "DT_STRING" else tf.constant(arr)
            )
        try:
            out = sig.fn(**feed)
        except tf.errors.OpError as exc:
            raise from_tf_error(exc) from None
        except (TypeError, ValueError) as exc:
            raise invalid(str(exc).strip().splitlines()[0]) from None
        return {k: v.numpy() for k, v in out.items()}

    def warmup(self) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests``; returns the number of records."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        path = self.path / WARMUP_PATH
        if not path.is_file():
            return 0
        count = 0
        try:
            for raw in tf.data.TFRecordDataset(str(path)):
                count += 1
                if count > MAX_WARMUP_RECORDS:
                    raise invalid(
                        f"Number of warmup records exceeds the maximum "
                        f"({MAX_WARMUP_RECORDS}) at {path}"
                    )
                record = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
                if record.WhichOneof("log_type") != "predict_log":
                    log.warning(
                        "%s: skipping a %s warmup record (this server runs Predict)",
                        path,
                        record.WhichOneof("log_type"),
                    )
                    continue
                request = record.predict_log.request
                sig = self.signature(request.model_spec.signature_name)
                inputs = {k: tensor_to_numpy(v, name=k) for k, v in request.inputs.items()}
                self.check_inputs(sig, inputs)
                self.run(sig, inputs)
        except tf.errors.OpError as exc:
            raise from_tf_error(exc) from None
        except ServingError as exc:
            raise ServingError(exc.code, f"Failed to warm up {path}: {exc.message}") from None
        return count


def _dtype_name(arr: np.ndarray) -> str:
    from kerascls.serving.jsonwire import NUMPY_DTYPES

    if arr.dtype == object or arr.dtype.kind in "SU":
        return "DT_STRING"
    for name, dt in NUMPY_DTYPES.items():
        if dt is not object and arr.dtype == np.dtype(dt):
            return name
    return f"numpy {arr.dtype}"


def tensor_to_numpy(proto, **limits) -> np.ndarray:
    """A TensorProto as numpy (DT_STRING as an object array of bytes), sizes checked first.

    ``limits`` are :func:`kerascls.serving.tensors.to_numpy`'s keyword arguments.
    """
    from kerascls.serving.tensors import to_numpy

    return to_numpy(proto, **limits)


def numpy_to_tensor(arr: np.ndarray):
    """A numpy array (object arrays of bytes are DT_STRING) as TensorFlow's TensorProto."""
    from tensorflow.core.framework import tensor_pb2

    from kerascls.serving.tensors import from_numpy

    return from_numpy(arr, tensor_pb2.TensorProto)


# ---------------------------------------------------------------------------------------------
# the manager


@dataclasses.dataclass
class VersionState:
    state: str
    error_code: str = "OK"
    error_message: str = ""
    servable: Servable | None = None
    fingerprint: tuple = ()
    attempts: int = 0  # failed loads so far
    retry_at: float = 0.0  # time.monotonic() of the next retry after a failure


class ModelManager:
    """Loads, serves and unloads versions of the configured models.

    Args:
        models: the served models.
        poll_seconds: how often the base paths are scanned (0: only by :meth:`poll`).
        max_image_pixels: largest image (width x height) accepted in a DT_STRING input.
        batcher: an optional :class:`kerascls.serving.batching.Batcher` that merges requests.
        max_request_pixels: most image pixels in one request, all images together.
    """

    def __init__(
        self,
        models: list[ModelSource],
        poll_seconds: float = 1.0,
        max_image_pixels: int = 40_000_000,
        batcher=None,
        max_request_pixels: int | None = None,
    ):
        self.poll_seconds = poll_seconds
        self.max_image_pixels = max_image_pixels
        self.max_request_pixels = max_request_pixels
        self.batcher = batcher
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._models: dict[str, ModelSource] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.config_reloader = None
        self.set_models(models)

    # -- configuration and polling --------------------------------------------------------------
    def set_models(self, models: list[ModelSource]) -> None:
        """Replace the model list (a config reload); models no longer listed are unloaded."""
        with self._lock:
            self._models = {m.name: m for m in models}
            for name in list(self._states):
                if name not in self._models:
                    for state in self._states[name].values():
                        if state.state == "AVAILABLE":
                            state.state, state.servable = "END", None
            for name in self._models:
                self._states.setdefault(name, {})

    @property
    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def poll(self) -> None:
        """Scan every base path once: load wanted versions, then unload unwanted ones."""
        with self._poll_lock:
            if self.config_reloader is not None:
                self.config_reloader()
            with self._lock:
                models = list(self._models.values())
            for model in models:
                self._poll_model(model)

    def _poll_model(self, model: ModelSource) -> None:
        on_disk = versions_on_disk(model.base_path)
        wanted = model.wanted(sorted(on_disk))
        states = self._states.setdefault(model.name, {})
        for version in sorted(wanted, reverse=True):
            state = states.get(version)
            path = on_disk[version]
            if state is not None and state.state in ("LOADING", "AVAILABLE"):
                continue
            fingerprint = _fingerprint(path)
            attempts = 0
            if state is not None and state.state == "END" and state.error_code != "OK":
                if state.fingerprint == fingerprint and time.monotonic() < state.retry_at:
                    continue  # failed before, unchanged since, and its back-off not over
                attempts = state.attempts if state.fingerprint == fingerprint else 0
            self._load(model.name, version, path, fingerprint, attempts)
        available_wanted = [v for v in wanted if states.get(v) and states[v].state == "AVAILABLE"]
        for version, state in list(states.items()):
            if state.state != "AVAILABLE" or version in wanted:
                continue
            if version in on_disk and not available_wanted:
                continue  # keep serving until a wanted version is available
            log.info("unloading %s version %d", model.name, version)
            with self._lock:
                state.state = "UNLOADING"
            if self.batcher is not None:
                self.batcher.forget(state.servable)
            with self._lock:
                state.state, state.servable = "END", None

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed load (1, 2, 4, ... polls, capped)."""
        base = self.poll_seconds if self.poll_seconds > 0 else 1.0
        return min(MAX_RETRY_SECONDS, base * 2.0 ** max(0, attempts - 1))

    def _load(
        self, name: str, version: int, path: Path, fingerprint: tuple, attempts: int = 0
    ) -> None:
        with self._lock:
            self._states[name][version] = VersionState(
                "LOADING", fingerprint=fingerprint, attempts=attempts
            )
        log.info("loading %s version %d from %s", name, version, path)
        started = time.perf_counter()
        try:
            servable = Servable(name, version, path, self.max_image_pixels, self.max_request_pixels)
            records = servable.warmup()
        except Exception as exc:  # noqa: BLE001 - any load failure ends in the status, not a crash
            if isinstance(exc, ServingError):
                code, message = exc.code, exc.message
            else:
                text = str(exc).strip()
                code = "UNKNOWN"
                message = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
            attempts += 1
            delay = self.retry_delay(attempts)
            log.error(
                "loading %s version %d failed (attempt %d; retrying in %.1f s or when its files "
                "change): %s",
                name,
                version,
                attempts,
                delay,
                message,
            )
            with self._lock:
                self._states[name][version] = VersionState(
                    "END",
                    code,
                    message,
                    None,
                    fingerprint,
                    attempts,
                    time.monotonic() + delay,
                )
            return
        with self._lock:
            self._states[name][version] = VersionState(
                "AVAILABLE", servable=servable, fingerprint=fingerprint
            )
        log.info(
            "%s version %d is AVAILABLE (%.1fs, %d warmup records)",
            name,
            version,
            time.perf_counter() - started,
            records,
        )

    def start(self) -> None:
        """Poll in a background thread every ``poll_seconds`` (after a first poll right now)."""
        self.poll()
        if self.poll_seconds > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="kerascls-poll", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the poller must survive one bad scan
                log.exception("polling the model base paths failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # -- lookups ----------------------------------------------------------------------------------
    def resolve_version(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> int | None:
        with self._lock:
            model = self._models.get(name)
            if label:
                if model is None or label not in model.labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                return model.labels[label]
        return version

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a request: a version, a label, or the latest available version."""
        version = self.resolve_version(name, version, label)
        with self._lock:
            states = self._states.get(name) if name in self._models else None
            if version is None:
                available = [v for v, s in (states or {}).items() if s.state == "AVAILABLE"]
                if not available:
                    raise not_found(f"Servable not found for request: Latest({name})")
                return states[max(available)].servable
            state = (states or {}).get(version)
            if state is None or state.state != "AVAILABLE":
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return state.servable

    def predict(
        self,
        name: str,
        version: int | None,
        label: str | None,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_filter=(),
    ):
        """Run a predict request; returns ``(servable, signature, outputs)``."""
        servable = self.servable(name, version, label)
        sig, outputs = self.run(servable, signature, inputs, output_filter)
        return servable, sig, outputs

    def run(
        self, servable: Servable, signature: str, inputs: dict[str, np.ndarray], output_filter=()
    ):
        """Run ``signature`` of a resolved servable; returns ``(signature, outputs)``."""
        sig = servable.signature(signature)
        if sig.method_name != PREDICT_METHOD:
            raise invalid(
                f"Expected prediction signature method_name to be {PREDICT_METHOD}. "
                f"Was: {sig.method_name}"
            )
        servable.check_inputs(sig, inputs)
        if self.batcher is not None:
            outputs = self.batcher.run(servable, sig, inputs)
        else:
            outputs = servable.run(sig, inputs)
        if output_filter:
            unknown = sorted(set(output_filter) - set(outputs))
            if unknown:
                raise invalid(
                    f"output tensor alias not found in signature: {unknown[0]} Outputs "
                    f"expected to be in the set {{{','.join(sorted(outputs))}}}."
                )
            outputs = {k: outputs[k] for k in output_filter}
        return sig, outputs

    # -- status and metadata protos ---------------------------------------------------------------
    def status(self, name: str, version: int | None = None, label: str | None = None):
        """A ``GetModelStatusResponse``."""
        from tensorflow_serving.apis import get_model_status_pb2

        from kerascls.serving.status import CODES

        version = self.resolve_version(name, version, label)
        with self._lock:
            states = dict(self._states.get(name, {})) if name in self._models else {}
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(states, reverse=True):
            s = states[v]
            entry = response.model_version_status.add()
            entry.version = v
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(s.state)
            entry.status.error_code = CODES[s.error_code]
            entry.status.error_message = s.error_message
        return response

    def metadata(
        self,
        name: str,
        version: int | None = None,
        label: str | None = None,
        fields=("signature_def",),
    ):
        """A ``GetModelMetadataResponse`` with the ``signature_def`` field."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported")
        servable = self.servable(name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = servable.version
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sdef in servable.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sdef)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def failed_loads(self, name: str, version: int) -> int:
        """How many times in a row loading this version has failed (0 once it is AVAILABLE)."""
        with self._lock:
            state = self._states.get(name, {}).get(version)
            return 0 if state is None or state.state == "AVAILABLE" else state.attempts

    def snapshot(self) -> dict[str, dict[int, str]]:
        """``{model: {version: state}}`` for logs and the metrics page."""
        with self._lock:
            return {
                n: {v: s.state for v, s in states.items()} for n, states in self._states.items()
            }


def _fingerprint(path: Path) -> tuple:
    """(name, size, mtime) of every file of a version directory: changes when any file lands."""
    entries = []
    try:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                try:
                    st = os.stat(os.path.join(root, name))
                except OSError:
                    continue
                entries.append(
                    (os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns)
                )
    except OSError:
        pass
    return tuple(entries)
