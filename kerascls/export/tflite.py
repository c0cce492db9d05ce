"""TFLite export: float32, dynamic-range, float16 and full-integer int8 models with sidecars.

Every variant converts :meth:`kerascls.runs.Run.deployable` (the trained model with its fitted
temperature, folded into the logits by :func:`conversion_model`), so normalization and
calibration live inside the ``.tflite`` file. Files go to
``RUN_DIR/tflite/<model_name>-<variant>.tflite`` with a ``.json`` sidecar beside each, which
``edge/run_tflite.py`` reads.

* ``tflite-float32``: no optimization; input float32 RGB pixels in 0..255.
* ``tflite-dynamic``: int8 weights, float activations; input float32 0..255.
* ``tflite-float16``: float16 weights; input float32 0..255.
* ``tflite-int8``: full-integer. Weights and activations are int8, calibrated on a
  class-stratified sample of training images that went through exactly the training
  preprocessing (:func:`representative_sample`). The input is uint8 RGB pixels with scale 1 and
  zero point 0, so a device feeds decoded pixels unchanged; the output is uint8 probabilities
  (scale 1/256).

Example:
    >>> from kerascls.runs import load_run
    >>> from kerascls.export.tflite import export_tflite_int8
    >>> export_tflite_int8(load_run("runs/lenet-digits"), Path("runs/lenet-digits/tflite"))
"""

from __future__ import annotations

import datetime
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from kerascls.errors import UserError
from kerascls.fileio import atomic_path, atomic_write_json

log = logging.getLogger("kerascls.export")

DEFAULT_REPRESENTATIVE_SIZE = 300
MIN_REPRESENTATIVE_SIZE = 100
REPRESENTATIVE_SEED = 0
RESIZE_METHOD = "bilinear"

# variant -> what the converter does, in words (also written to the sidecar)
VARIANTS = {
    "float32": "float32 weights and activations",
    "dynamic": "int8 weights (dynamic range), float32 activations",
    "float16": "float16 weights, float32 activations",
    "int8": "int8 weights and activations (full integer), uint8 input and output",
}


# ---------------------------------------------------------------------------------------------
# paths and runtime


def tflite_path(run, out_dir: Path, variant: str) -> Path:
    """``out_dir/<model_name>-<variant>.tflite``."""
    return Path(out_dir) / f"{run.name}-{variant}.tflite"


def sidecar_path(tflite_file: Path) -> Path:
    """The sidecar of a ``.tflite`` file: the same name with ``.json``."""
    return Path(tflite_file).with_suffix(".json")


def interpreter(model_path=None, model_content: bytes | None = None, threads: int = 1):
    """A TFLite interpreter from ``ai_edge_litert`` (the runtime devices use), else TensorFlow."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - ai-edge-litert is in the edge extra
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    kwargs = {"num_threads": threads}
    if model_content is not None:
        kwargs["model_content"] = model_content
    else:
        kwargs["model_path"] = str(model_path)
    it = Interpreter(**kwargs)
    it.allocate_tensors()
    return it


# ---------------------------------------------------------------------------------------------
# inputs


def quantize_pixels(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """Float 0..255 pixels as the input tensor ``dtype`` wants them.

    Quantized inputs get ``round(x / scale) + zero_point`` (half away from zero, like the
    TFLite ``QUANTIZE`` kernel), clipped to the dtype; float inputs are cast.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if scale:
            q = np.floor(np.asarray(x, np.float32) / np.float32(scale) + np.float32(0.5))
            q = q + zero_point
        else:
            q = np.floor(np.asarray(x, np.float32) + np.float32(0.5))
        return np.clip(q, info.min, info.max).astype(dtype)
    return np.asarray(x, dtype=dtype)


def check_images(x: np.ndarray, what: str = "representative images") -> None:
    """Refuse images that did not go through the training preprocessing.

    The training preprocessing gives float32 (N, H, W, 3) RGB arrays in 0..255.

    Raises:
        UserError: naming the dtype, shape or range that is wrong.
    """
    if not isinstance(x, np.ndarray):
        raise UserError(f"{what} must be a numpy array. Received: {type(x).__name__}")
    if x.dtype != np.float32:
        raise UserError(f"{what} must be float32 RGB pixels in 0..255 (the training "
                        f"preprocessing). Received dtype {x.dtype}")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(f"{what} must have shape (N, height, width, 3). Received {x.shape}")
    if not np.isfinite(x).all():
        raise UserError(f"{what} hold NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 255.0:
        raise UserError(f"{what} must lie in 0..255. Received values in [{lo:g}, {hi:g}]")
    if hi <= 1.0:
        raise UserError(f"{what} lie in [{lo:g}, {hi:g}]: they look scaled to 0..1, but the "
                        "model takes pixels in 0..255 (normalization is inside the model)")


def representative_sample(x: np.ndarray, y: np.ndarray, size: int = DEFAULT_REPRESENTATIVE_SIZE,
                          seed: int = REPRESENTATIVE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A class-stratified sample of up to ``size`` training images for int8 calibration.

    Each class gets a share proportional to its frequency (at least one image); the sample is
    deterministic for a given ``seed``. ``size`` is an upper bound: a training split smaller
    than ``size`` is used whole.

    Args:
        x: training images, float32 (N, H, W, 3) in 0..255, i.e. after the training
            preprocessing (decode, bilinear resize).
        y: integer labels (N,).
        size: how many images to sample (at least :data:`MIN_REPRESENTATIVE_SIZE`).
        seed: sampling seed.

    Returns:
        ``(images, labels)`` of the sample.

    Raises:
        UserError: for a ``size`` below the minimum, an empty training split, or images of
            the wrong dtype, shape or range. A training split smaller than the minimum is used
            whole, with a warning on stderr.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise UserError(f"representative_size must be an integer. Received: {size!r}")
    if size < MIN_REPRESENTATIVE_SIZE:
        raise UserError(f"representative_size must be at least {MIN_REPRESENTATIVE_SIZE} "
                        f"images for a sound int8 calibration. Received: {size}")
    if isinstance(x, np.ndarray) and len(x) == 0:
        raise UserError("int8 calibration needs training images; the training split is empty")
    check_images(x)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(y) != len(x):
        raise UserError(f"representative images and labels differ in length: {len(x)} images, "
                        f"{len(y)} labels")
    if len(x) < MIN_REPRESENTATIVE_SIZE:
        # A small dataset still gets its int8 model: calibrated on every training image, with
        # a warning, rather than an error after the whole training run.
        print(f"warning: int8 calibration on all {len(x)} training images, fewer than the "
              f"{MIN_REPRESENTATIVE_SIZE} a sound calibration wants; check the int8 accuracy "
              "in export_report.md", file=sys.stderr, flush=True)
    take = min(int(size), len(x))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.maximum(1, np.floor(counts / len(y) * take)).astype(int)
    quota = np.minimum(quota, counts)
    # hand out what rounding left over to the classes with the largest remainders
    remainder = counts / len(y) * take - np.floor(counts / len(y) * take)
    for i in np.argsort(-remainder, kind="stable"):
        if quota.sum() >= take:
            break
        if quota[i] < counts[i]:
            quota[i] += 1
    while quota.sum() > take:
        quota[int(np.argmax(quota))] -= 1
    picked = [rng.choice(np.flatnonzero(y == c), size=q, replace=False)
              for c, q in zip(classes, quota)]
    index = np.sort(np.concatenate(picked))
    return x[index], y[index]


# ---------------------------------------------------------------------------------------------
# conversion


def conversion_model(run):
    """The deployable model in the form TFLite converts best: temperature folded into logits.

    :meth:`kerascls.runs.Run.deployable` applies the temperature after the softmax,
    ``softmax(log(p) / T)`` with ``p = softmax(z)``. Because ``log(softmax(z))`` is ``z`` minus
    a per-image constant, that equals ``softmax(z / T)``: the same function without a ``LOG``
    of quantized probabilities, which costs int8 precision and needs a newer runtime (``LOG``
    on int8 is missing from ``tflite-runtime`` 2.14). Models whose output is not a softmax layer
    named ``predictions`` are converted as :meth:`deployable` returns them.
    """
    import keras

    deployable = run.deployable()
    if abs(run.temperature - 1.0) < 1e-9:
        return deployable
    base = run.model
    try:
        softmax = base.get_layer("predictions")
    except ValueError:
        return deployable
    if (getattr(getattr(softmax, "activation", None), "__name__", "") != "softmax"
            or len(base.outputs) != 1 or base.outputs[0] is not softmax.output):
        return deployable
    scaled = keras.layers.Rescaling(1.0 / run.temperature, name="temperature")(softmax.input)
    probs = keras.layers.Activation("softmax", dtype="float32", name="calibrated")(scaled)
    return keras.Model(base.inputs, probs, name=f"{base.name}_calibrated")


def _saved_model_for_conversion(model, input_shape, directory: Path) -> None:
    """Write ``model`` as a SavedModel whose signature takes ``pixels``, gives ``probabilities``."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec((None, *input_shape), tf.float32, name="pixels")
    archive.add_endpoint("serving_default",
                         lambda pixels: {"probabilities": model(pixels, training=False)},
                         input_signature=[spec])
    archive.write_out(str(directory), verbose=False)


def convert(model, input_shape, variant: str, representative: np.ndarray | None = None) -> bytes:
    """Convert a Keras model (RGB float32 0..255 in, probabilities out) to TFLite bytes.

    Args:
        model: the deployable Keras model.
        input_shape: ``(H, W, 3)``.
        variant: a key of :data:`VARIANTS`.
        representative: calibration images for ``int8`` (see :func:`representative_sample`).
    """
    import tensorflow as tf

    if variant not in VARIANTS:
        raise UserError(f"TFLite variant must be one of {', '.join(VARIANTS)}. "
                        f"Received: {variant}")
    if variant == "int8" and representative is None:
        raise UserError("the int8 variant needs representative images")
    with tempfile.TemporaryDirectory(prefix="kerascls-tflite-") as tmp:
        _saved_model_for_conversion(model, tuple(input_shape), Path(tmp))
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if variant != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if variant == "int8":
            def samples():
                for image in representative:
                    yield [image[None].astype(np.float32)]

            converter.representative_dataset = samples
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        content = converter.convert()
    if variant == "int8":
        content = pin_input_quantization(content)
    return content


# ops that read the pinned int8 input: those with an int32 bias stored at the input scale times
# the weight scale, and those whose kernels take every scale from the tensors when prepared
_PIN_BIAS_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_PIN_SCALE_OPS = ("ADD", "SUB", "MUL")


def pin_input_quantization(content: bytes) -> bytes:
    """Give the uint8 input of a full-integer model scale 1 and zero point 0.

    The converter calibrates the input range from the representative images. When their
    brightest pixel is below 255 the input scale is not 1, and a device would have to rescale
    pixels in float (and pixels brighter than the calibration would clip). This widens the
    range to exactly 0..255: the uint8 input and the int8 tensor that the first ``QUANTIZE``
    op makes from it get scale 1. The ops reading that tensor stay exact. ``ADD``, ``SUB`` and
    ``MUL`` take their scales from the tensors when the interpreter prepares them. For
    ``CONV_2D``, ``DEPTHWISE_CONV_2D`` and ``FULLY_CONNECTED`` the int32 bias is stored at
    input scale times weight scale, so it is re-expressed at the new input scale. Graphs whose
    first ops are of another kind are returned unchanged (their sidecar then records the
    calibrated input scale, which ``edge/run_tflite.py`` applies).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    subgraph = model.subgraphs[0]
    tensors, ops = subgraph.tensors, subgraph.operators
    names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in ops]
    if len(subgraph.inputs) != 1:
        return content
    input_index = int(subgraph.inputs[0])
    q = tensors[input_index].quantization
    if q is None or q.scale is None or len(q.scale) != 1 or int(q.zeroPoint[0]) != 0:
        return content
    old = float(q.scale[0])
    if old == 1.0:
        return content
    readers = [(op, name) for op, name in zip(ops, names) if input_index in list(op.inputs)]
    if len(readers) != 1 or readers[0][1] != "QUANTIZE":
        return content
    int8_index = int(readers[0][0].outputs[0])
    q8 = tensors[int8_index].quantization
    if len(q8.scale) != 1 or abs(float(q8.scale[0]) - old) > 1e-12 * old:
        return content
    consumers = [(op, name) for op, name in zip(ops, names) if int8_index in list(op.inputs)]
    if not consumers or any(name not in _PIN_BIAS_OPS + _PIN_SCALE_OPS for _, name in consumers):
        return content
    buffer_users: dict[int, int] = {}
    for t in tensors:
        buffer_users[t.buffer] = buffer_users.get(t.buffer, 0) + 1
    rescaled = []
    for op, name in consumers:
        if name not in _PIN_BIAS_OPS:
            continue
        inputs = list(op.inputs)
        if inputs[0] != int8_index or int8_index in inputs[1:]:
            return content
        if len(inputs) < 3 or inputs[2] < 0:
            continue
        bias = tensors[inputs[2]]
        data = model.buffers[bias.buffer].data
        if bias.quantization is None or data is None or buffer_users[bias.buffer] != 1:
            return content
        values = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype="<i4")
        new = np.round(values.astype(np.float64) * old)
        if np.abs(new).max(initial=0) >= 2**31:
            return content
        rescaled.append((bias, new.astype("<i4")))
    for bias, values in rescaled:
        model.buffers[bias.buffer].data = np.frombuffer(values.tobytes(), dtype=np.uint8)
        bias.quantization.scale = [float(s) / old for s in bias.quantization.scale]
        bias.quantization.min = bias.quantization.max = None
    q.scale, q.min, q.max = [1.0], [0.0], [255.0]
    q8.scale, q8.min, q8.max = [1.0], [0.0], [255.0]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# ---------------------------------------------------------------------------------------------
# checks and sidecar


def _outputs_by_name(it) -> dict[str, int]:
    """Output name -> position in ``get_output_details()``: the signature's output names when
    the file has a ``serving_default`` signature, and ``probabilities`` for the only output of a
    single-output model."""
    details = it.get_output_details()
    names: dict[str, int] = {}
    signatures = it.get_signature_list() if hasattr(it, "get_signature_list") else {}
    if "serving_default" in signatures:
        position = {d["index"]: i for i, d in enumerate(details)}
        runner = it.get_signature_runner("serving_default")
        for key, detail in runner.get_output_details().items():
            if detail["index"] in position:
                names[key] = position[detail["index"]]
    if "probabilities" not in names and len(details) == 1:
        names["probabilities"] = 0
    return names


def run_tflite(source, x: np.ndarray, *, batch_size: int = 64, threads: int = 1,
               outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Run a ``.tflite`` model on float32 0..255 images, as a device does; every output, by name.

    The one way kerascls runs a TFLite file (export checks, the export report, compare, the
    Bayesian ensembles). Inputs are quantized the way a device does it
    (:func:`quantize_pixels`) and quantized outputs are dequantized to float32. Models with a
    dynamic batch dimension run ``batch_size`` images per invoke, others one at a time.

    Args:
        source: a path, the file's bytes, or an allocated interpreter (see :func:`interpreter`).
        x: float32 (N, H, W, 3) images in 0..255 at the model's input size.
        batch_size: images per invoke for dynamic-batch models.
        threads: interpreter threads (when ``source`` is a path or bytes).
        outputs: the output names to return (default: all); ``probabilities`` is the class
            probabilities of every kerascls model.

    Returns:
        ``{name: (N, ...) float32}``.
    """
    if isinstance(source, (bytes, bytearray)):
        it = interpreter(model_content=bytes(source), threads=threads)
    elif isinstance(source, (str, Path)):
        it = interpreter(source, threads=threads)
    else:
        it = source
    names = _outputs_by_name(it)
    wanted = tuple(names) if outputs is None else tuple(outputs)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise UserError(f"the TFLite model has no output {', '.join(missing)}; it has "
                        f"{', '.join(names) or 'unnamed outputs'}")
    inp = it.get_input_details()[0]
    dynamic = int(inp["shape_signature"][0]) == -1
    step = batch_size if dynamic else 1
    scale, zero_point = inp["quantization"]
    current = int(inp["shape"][0])
    x = np.asarray(x, np.float32)
    results: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
    for start in range(0, len(x), step):
        chunk = quantize_pixels(x[start:start + step], inp["dtype"], scale, zero_point)
        if len(chunk) != current:
            it.resize_tensor_input(inp["index"], [len(chunk), *inp["shape"][1:]])
            it.allocate_tensors()
            current = len(chunk)
        it.set_tensor(inp["index"], chunk)
        it.invoke()
        details = it.get_output_details()
        for name in wanted:
            out = details[names[name]]
            y = it.get_tensor(out["index"]).astype(np.float32)
            oscale, ozero = out["quantization"]
            if oscale:
                y = (y - np.float32(ozero)) * np.float32(oscale)
            results[name].append(y)
    return {n: np.concatenate(v) if v else np.zeros((0,), np.float32)
            for n, v in results.items()}


def single_image_call(path, image: np.ndarray, threads: int = 1):
    """A zero-argument call running ``path`` on one prepared image: ``set_tensor``, ``invoke``
    and ``get_tensor`` of the probabilities, as a device classifies one image. For latency
    measurements (:mod:`kerascls.timing`)."""
    it = interpreter(path, threads=threads)
    inp = it.get_input_details()[0]
    if int(inp["shape"][0]) != 1:
        it.resize_tensor_input(inp["index"], [1, *inp["shape"][1:]])
        it.allocate_tensors()
        inp = it.get_input_details()[0]
    out_index = it.get_output_details()[_outputs_by_name(it).get("probabilities", 0)]["index"]
    tensor = quantize_pixels(np.asarray(image, np.float32)[None], inp["dtype"],
                             *inp["quantization"])

    def call():
        it.set_tensor(inp["index"], tensor)
        it.invoke()
        return it.get_tensor(out_index)

    return call


def predict(source, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """``(N, C)`` float32 class probabilities of a TFLite model (see :func:`run_tflite`)."""
    probs = run_tflite(source, x, batch_size=batch_size, outputs=("probabilities",))
    return probs["probabilities"].reshape(len(x), -1)


def _check_not_constant(probs: np.ndarray, reference: np.ndarray, variant: str) -> None:
    """Refuse a converted model whose predictions collapsed to one class or one output."""
    ref_classes = np.unique(reference.argmax(axis=1))
    classes = np.unique(probs.argmax(axis=1))
    if len(ref_classes) > 1 and (len(classes) == 1 or float(probs.std(axis=0).max()) < 1e-6):
        raise UserError(
            f"tflite-{variant} conversion produced a constant output (every calibration image "
            f"gets class {int(classes[0])}, while the Keras model predicts {len(ref_classes)} "
            "classes); the model is not exported. Check that the training images are float32 "
            "in 0..255 and that the run trained properly")


def tensor_entry(detail: dict) -> dict:
    """One tensor of an interpreter as the sidecar lists it: name, dtype, shape, quantization."""
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(v) for v in detail["shape_signature"]],
        "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
    }


def build_sidecar(run, tflite_file: Path, variant: str, extra: dict | None = None) -> dict:
    """The manifest that travels with one ``.tflite`` file (what ``edge/run_tflite.py`` reads)."""
    import tensorflow as tf

    import kerascls

    it = interpreter(tflite_file)
    inp = tensor_entry(it.get_input_details()[0])
    outputs = []
    for i, detail in enumerate(it.get_output_details()):
        entry = tensor_entry(detail)
        entry.update(index=i, role="probabilities" if i == 0 else "output")
        outputs.append(entry)
    height, width = (int(v) for v in run.metadata["input_shape"][:2])
    meta = run.metadata
    sidecar = {
        "format": f"tflite-{variant}",
        "file": tflite_file.name,
        "model_name": run.name,
        "labels": list(run.labels),
        "num_classes": len(run.labels),
        "input_size": [height, width],
        "resize_method": meta.get("resize_method", RESIZE_METHOD),
        "resize_half_pixel_centers": True,
        "resize_antialias": False,
        "input_name": inp["name"],
        "input_dtype": inp["dtype"],
        "input_range": [0, 255],
        "input_quantization": inp["quantization"],
        "input_color": "RGB",
        "normalize": meta.get("normalize"),
        "normalization": "inside the model",
        "outputs": outputs,
        "quantization": VARIANTS[variant],
        "temperature": float(meta.get("temperature", 1.0)),
        "dataset": meta.get("dataset"),
        "metrics": meta.get("metrics", {}),
        "source_run": str(Path(run.path).resolve()),
        "versions": {"kerascls": kerascls.__version__, "tensorflow": tf.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    sidecar.update(extra or {})
    return sidecar


# ---------------------------------------------------------------------------------------------
# the exporters (kerascls.export.FORMATS)


def _export(run, out_dir: Path, variant: str, representative_size: int | None = None):
    if run.is_bayesian:
        raise UserError("Bayesian runs export a posterior-sample ensemble through their engine "
                        "(kerascls.export.montecarlo), not this converter")
    model = conversion_model(run)
    input_shape = tuple(int(v) for v in run.metadata["input_shape"])
    extra: dict = {}
    reference_x = None
    representative = None
    if variant == "int8":
        splits = run.dataset()
        size = DEFAULT_REPRESENTATIVE_SIZE if representative_size is None else representative_size
        representative, rep_y = representative_sample(splits.x_train, splits.y_train, size)
        if representative.shape[1:] != input_shape:
            raise UserError(f"representative images have shape {representative.shape[1:]} but "
                            f"the model takes {input_shape}")
        reference_x = representative
        extra["representative"] = {
            "images": int(len(representative)), "requested": int(size),
            "source": "training split, class-stratified", "seed": REPRESENTATIVE_SEED,
            "per_class": {run.labels[int(c)]: int(n)
                          for c, n in zip(*np.unique(rep_y, return_counts=True))},
        }
        log.info("int8: calibrating on %d training images", len(representative))
    print(f"converting {run.name} to tflite-{variant} ...", flush=True)
    content = convert(model, input_shape, variant, representative)
    if reference_x is not None:
        probs = predict(content, reference_x)
        reference = np.asarray(run.deployable().predict(reference_x, verbose=0,
                                                        batch_size=64))
        _check_not_constant(probs, reference, variant)
        extra["representative"]["agreement_with_keras"] = float(
            (probs.argmax(1) == reference.argmax(1)).mean())
    path = tflite_path(run, out_dir, variant)
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
    atomic_write_json(sidecar_path(path), build_sidecar(run, path, variant, extra))
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB) and {sidecar_path(path).name}",
          flush=True)
    return [path, sidecar_path(path)]


def _refuse(options: dict, fmt: str, allowed: tuple[str, ...] = ()) -> None:
    if options:
        raise UserError(f"{fmt} takes no option {', '.join(sorted(options))}. Allowed: "
                        f"{', '.join(allowed) or 'none'}")


def export_tflite_float32(run, out_dir: Path, **options) -> list[Path]:
    """``tflite-float32``: the deployable model unchanged (float32 in, float32 out)."""
    _refuse(options, "tflite-float32")
    return _export(run, Path(out_dir), "float32")


def export_tflite_dynamic(run, out_dir: Path, **options) -> list[Path]:
    """``tflite-dynamic``: dynamic-range quantization (int8 weights, float activations)."""
    _refuse(options, "tflite-dynamic")
    return _export(run, Path(out_dir), "dynamic")


def export_tflite_float16(run, out_dir: Path, **options) -> list[Path]:
    """``tflite-float16``: float16 weights (half the size), float32 input and output."""
    _refuse(options, "tflite-float16")
    return _export(run, Path(out_dir), "float16")


def export_tflite_int8(run, out_dir: Path, representative_size: int | None = None,
                       **options) -> list[Path]:
    """``tflite-int8``: full-integer model, uint8 pixels in, uint8 probabilities out.

    Args:
        run: the trained run.
        out_dir: where the ``.tflite`` file and its sidecar go.
        representative_size: how many class-stratified training images calibrate the
            quantization (default :data:`DEFAULT_REPRESENTATIVE_SIZE`; at most the training
            split, at least :data:`MIN_REPRESENTATIVE_SIZE`).
    """
    _refuse(options, "tflite-int8", ("representative_size",))
    return _export(run, Path(out_dir), "int8", representative_size=representative_size)
