#!/usr/bin/env python3
"""Classify images, or detect objects in them, with a kerascls TFLite model on a Raspberry Pi
(or any other computer).

This file stands alone: copy it to the device together with ``requirements.txt``, the
``.tflite`` model and its ``.json`` sidecar. It imports only the standard library, numpy,
Pillow and the first TFLite runtime it finds of ``ai_edge_litert``, ``tflite_runtime`` and
``tensorflow.lite``; nothing from kerascls or TensorFlow is needed.

Usage::

    python run_tflite.py MODEL.tflite IMAGE_OR_DIR... [--top-k K] [--threads N] [--json]
                         [--benchmark N] [--prefetch N] [--convert | --strict]
    python run_tflite.py --task detect MODEL.tflite IMAGE_OR_DIR... [--json] [--draw OUT.png]
                         [--score-threshold S] [--iou-threshold T]

The sidecar (``MODEL.json``, written by ``python -m kerascls.export``) gives the labels, the
input size, the resize method and the input dtype and quantization. Images are decoded with
Pillow and resized exactly as kerascls training resizes them: bilinear interpolation with
half-pixel centers and no antialiasing (TensorFlow's ``tf.image.resize``), computed in float32.
Float models take float32 pixels in 0..255; the int8 model takes uint8 pixels, so an image that
already has the model's input size goes in without any float arithmetic. Normalization lives
inside every model.

Images are 8-bit RGB. Grayscale and palette images are converted to the model's three
channels the way kerascls training converts them (Pillow ``convert("RGB")``); ``--strict``
refuses them instead. RGBA, CMYK and 16-bit images are refused with one line naming the mode;
``--convert`` converts them too (16-bit images scaled by their maximum). Images over
40 megapixels are refused before they are decoded.

Detection (``--task detect``) runs a YOLO file from ``python -m kerascls.detect export``. Its
sidecar gives, per head, the output's grid, stride and anchors; the runner resizes each image with
Pillow's bilinear filter (as ``kerascls.detect`` does), decodes the heads
(``xy = (sigmoid(t_xy) + cell) / grid``, ``wh = exp(t_wh) * anchor / input size``, score =
objectness x class probability), applies class-aware greedy NMS in NumPy, and reports boxes
``x1, y1, x2, y2`` in pixels of the original image; ``--draw`` writes the image with the boxes.

Exit status: 0 when every image was classified, 1 when some inputs could not be read (the
others are still classified), 2 on bad usage, a bad model or sidecar, or a missing runtime.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path

__version__ = "1.0"

RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")
INSTALL_HINT = (
    "no TFLite runtime found: pip install ai-edge-litert numpy Pillow "
    "(Raspberry Pi OS Bookworm, Python 3.11), or pip install tflite-runtime 'numpy<2' Pillow "
    "on older images; see edge/README.md"
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MAX_IMAGE_PIXELS = 40_000_000
# More interpreter threads than this only oversubscribes the CPU; far more (100,000) exhausts
# the process's threads and crashes the native runtime.
MAX_THREADS = max(64, 2 * (os.cpu_count() or 1))
# Modes converted to RGB by default: grayscale and palette images carry no more than RGB does.
GRAY_AND_PALETTE_MODES = ("L", "LA", "1", "P", "PA")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
EXIT_OK, EXIT_SOME_FAILED, EXIT_FATAL = 0, 1, 2


class Fatal(Exception):
    """An error that stops the whole run (bad model, sidecar, usage or runtime)."""


class BadInput(Exception):
    """One input that cannot be classified; the other inputs go on."""


# ---------------------------------------------------------------------------------------------
# dependencies


def _import_numpy_pillow():
    try:
        import warnings

        import numpy
        from PIL import Image
        # read_rgb refuses images over MAX_IMAGE_PIXELS itself, in one line; Pillow's warning
        # for images between its limit and twice that would only add a second, vaguer one.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    except ImportError as exc:
        raise Fatal(f"{exc.name or 'numpy/Pillow'} is missing: pip install -r requirements.txt "
                    "(numpy, Pillow and a TFLite runtime)") from None
    return numpy, Image


def check_tflite_runtime_numpy(package) -> None:
    """Refuse ``tflite_runtime`` with NumPy 2.

    Every ``tflite-runtime`` release (the last is 2.14) was compiled against the NumPy 1.x
    API, and its wheels do not cap NumPy, so ``pip install tflite-runtime`` pulls in NumPy 2;
    the interpreter then fails with "A module that was compiled using NumPy 1.x cannot be run
    in NumPy 2" and a SystemError. Say so in one line, with the fix.
    """
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        version = getattr(package, "__version__", "")
        raise Fatal(f"tflite_runtime {version} was built for NumPy 1.x and cannot run with "
                    f"NumPy {numpy.__version__}: pip install 'numpy<2' (or use ai-edge-litert, "
                    "which supports NumPy 2; see edge/README.md)")


def load_runtime(name: str = "auto"):
    """Return ``(Interpreter class, runtime name)`` for the first runtime that imports.

    Args:
        name: ``auto`` tries ``ai_edge_litert``, ``tflite_runtime`` and ``tensorflow`` in that
            order; any of those names asks for that one only.

    Raises:
        Fatal: with an install hint when no runtime can be imported.
    """
    candidates = RUNTIMES if name == "auto" else (name,)
    for runtime in candidates:
        try:
            if runtime == "tensorflow":
                module = importlib.import_module("tensorflow")
                return module.lite.Interpreter, runtime
            if runtime == "tflite_runtime":
                check_tflite_runtime_numpy(importlib.import_module("tflite_runtime"))
            module = importlib.import_module(f"{runtime}.interpreter")
            return module.Interpreter, runtime
        except ImportError:
            continue
    if name == "auto":
        raise Fatal(INSTALL_HINT)
    raise Fatal(f"--runtime {name} is not installed; {INSTALL_HINT.split(': ', 1)[1]}")


# ---------------------------------------------------------------------------------------------
# model and sidecar


def sidecar_path(model_path: Path) -> Path:
    """The sidecar that belongs to ``model_path``: same name, ``.json`` suffix."""
    return model_path.with_suffix(".json")


def read_sidecar(model_path: Path, task: str = "classify") -> dict:
    """Read and check the sidecar beside ``model_path`` for ``task`` (classify or detect).

    Raises:
        Fatal: when it is missing, unreadable, not JSON, belongs to the other task, or lacks the
            labels, the input size or (detection) the heads.
    """
    path = sidecar_path(model_path)
    if not path.is_file():
        raise Fatal(f"no sidecar {path.name} beside {model_path.name} (it holds the labels and "
                    "the input size): copy it from RUN_DIR/tflite/, or pass --no-sidecar to use "
                    "the model's own input details and class indices as labels")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise Fatal(f"cannot read sidecar {path}: {exc.__class__.__name__}") from None
    except json.JSONDecodeError as exc:
        raise Fatal(f"sidecar {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(meta, dict):
        raise Fatal(f"sidecar {path} must hold a JSON object")
    if task == "classify" and meta.get("task") == "detect":
        raise Fatal(f"{model_path.name} is a detection model (its sidecar says task detect); "
                    "run with --task detect")
    if task == "detect" and meta.get("task") != "detect":
        raise Fatal(f"{model_path.name} is a classification model, not a detection model "
                    "(its sidecar has no task detect); run without --task detect")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels:
        raise Fatal(f"sidecar {path} has no 'labels' list")
    size = meta.get("input_size")
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and v > 0 for v in size)):
        raise Fatal(f"sidecar {path} has no valid 'input_size' [height, width]; "
                    f"received {size!r}")
    if task == "detect":
        return _check_detect_sidecar(path, meta)
    method = meta.get("resize_method", "bilinear")
    if method != "bilinear":
        raise Fatal(f"sidecar {path}: resize_method must be bilinear. Received: {method}")
    return meta


def _check_detect_sidecar(path: Path, meta: dict) -> dict:
    heads = meta.get("heads")
    if not isinstance(heads, list) or not heads:
        raise Fatal(f"sidecar {path} has no 'heads' list (grid, stride and anchors per output); "
                    "export again with python -m kerascls.detect export RUN_DIR")
    for i, head in enumerate(heads):
        ok = (isinstance(head, dict) and isinstance(head.get("grid"), list)
              and len(head["grid"]) == 2 and all(isinstance(v, int) and v > 0
                                                 for v in head["grid"])
              and isinstance(head.get("anchors"), list) and head["anchors"]
              and all(isinstance(a, list) and len(a) == 2
                      and all(isinstance(v, (int, float)) and v > 0 for v in a)
                      for a in head["anchors"]))
        if not ok:
            raise Fatal(f"sidecar {path}: heads[{i}] needs 'grid' [h, w] and 'anchors' "
                        f"[[w, h], ...] in input pixels; received {head!r}"[:300])
    method = meta.get("resize_method")
    if method != "pillow_bilinear":
        raise Fatal(f"sidecar {path}: resize_method must be pillow_bilinear for detection. "
                    f"Received: {method}")
    for key, low, high in (("score_threshold", 0.0, 1.0), ("iou_threshold", 0.0, 1.0)):
        value = meta.get(key, 0.25 if key == "score_threshold" else 0.45)
        if not isinstance(value, (int, float)) or not low <= value <= high:
            raise Fatal(f"sidecar {path}: {key} must be a number in [0, 1]. Received: {value!r}")
    return meta


class _QuietStderr:
    """Silence the runtime's native log lines ("INFO: Created TensorFlow Lite XNNPACK delegate")
    while a model loads, so that output stays one line per result or error."""

    def __enter__(self):
        self.saved = None
        if os.environ.get("RUN_TFLITE_DEBUG"):
            return self
        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)
        return False


def load_interpreter(model_path: Path, interpreter_cls, threads: int):
    """Open ``model_path`` with the runtime; Fatal with one line if it is not a usable model."""
    if not model_path.exists():
        raise Fatal(f"model not found: {model_path}")
    if not model_path.is_file():
        raise Fatal(f"model is not a file: {model_path}")
    try:
        with open(model_path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise Fatal(f"cannot read model {model_path}: {exc.strerror or exc}") from None
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise Fatal(f"{model_path} is not a TFLite model (no TFL3 identifier); export one with "
                    "python -m kerascls.export RUN_DIR --formats tflite-float32")
    try:
        with _QuietStderr():
            interpreter = interpreter_cls(model_path=str(model_path), num_threads=threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Didn't find op" in first or "older version of this builtin" in first:
            raise Fatal(f"{model_path} needs a newer TFLite runtime than this one ({first[:160]});"
                        " pip install -U ai-edge-litert") from None
        raise Fatal(f"{model_path} is corrupt or truncated; the runtime cannot load it "
                    f"({first[:160]})") from None
    return interpreter


class Model:
    """A loaded model with the preprocessing and the output handling its sidecar describes.

    Attributes:
        interpreter: the runtime's interpreter.
        labels: class names in output order.
        height, width: the input size.
        input_dtype: numpy dtype of the input tensor.
        input_scale, input_zero_point: input quantization (scale 0 means not quantized).
        members: number of ensemble members (0 for an ordinary classifier).
    """

    def __init__(self, model_path: Path, interpreter_cls, threads: int, use_sidecar: bool):
        np, _ = _import_numpy_pillow()
        self.np = np
        self.path = model_path
        if model_path.is_file() and use_sidecar:
            self.meta = read_sidecar(model_path)
        else:
            self.meta = {}
        self.interpreter = load_interpreter(model_path, interpreter_cls, threads)
        self.input = self.interpreter.get_input_details()[0]
        shape = [int(v) for v in self.input["shape"]]
        if len(shape) != 4 or shape[-1] != 3:
            raise Fatal(f"{model_path} takes input shape {shape}; the runner needs "
                        "[batch, height, width, 3] RGB images")
        outputs = self.interpreter.get_output_details()
        if any(len(o["shape"]) == 5 for o in outputs):
            raise Fatal(f"{model_path.name} has YOLO detection heads, not class probabilities; "
                        "run with --task detect")
        if self.meta:
            self.height, self.width = self.meta["input_size"]
            if [self.height, self.width] != shape[1:3]:
                raise Fatal(f"sidecar {sidecar_path(model_path).name} says input size "
                            f"{self.meta['input_size']} but the model takes {shape[1:3]}; "
                            "they do not belong together")
            self.labels = [str(v) for v in self.meta["labels"]]
        else:
            self.height, self.width = shape[1:3]
            self.labels = []
        self.input_dtype = np.dtype(self.input["dtype"])
        self.input_scale, self.input_zero_point = (float(self.input["quantization"][0]),
                                                   int(self.input["quantization"][1]))
        self.members = int(self.meta.get("ensemble_members", 0) or 0)
        self.output = self._pick_output(outputs)
        classes = int(self.output["shape"][-1])
        if not self.labels:
            self.labels = [str(i) for i in range(classes)]
        if len(self.labels) != classes:
            raise Fatal(f"sidecar lists {len(self.labels)} labels but the model outputs "
                        f"{classes} classes")

    def _pick_output(self, outputs):
        """The output holding probabilities (or, for ensembles, the member probabilities)."""
        role = "member_probabilities" if self.members else "probabilities"
        listed = [o for o in self.meta.get("outputs", []) if isinstance(o, dict)]
        for entry in listed:
            if entry.get("role") != role:
                continue
            for out in outputs:
                if entry.get("name") and out["name"] == entry["name"]:
                    return out
            index = entry.get("index")
            if isinstance(index, int) and 0 <= index < len(outputs):
                return outputs[index]
            raise Fatal(f"sidecar output {entry!r} matches no output of {self.path.name}")
        if self.members:
            raise Fatal(f"sidecar says ensemble_members={self.members} but its 'outputs' list "
                        "has no entry with role member_probabilities")
        return outputs[0]

    def prepare(self, rgb):
        """A (1, H, W, 3) input tensor from a uint8 RGB (h, w, 3) image."""
        np = self.np
        same_size = rgb.shape[:2] == (self.height, self.width)
        quantized = self.input_dtype in (np.uint8, np.int8) and self.input_scale > 0
        if same_size and self.input_dtype == np.uint8 and \
                (not quantized or (self.input_scale == 1.0 and self.input_zero_point == 0)):
            return rgb[None]
        pixels = rgb.astype(np.float32) if same_size else resize_bilinear(
            np, rgb, self.height, self.width)
        if quantized:
            info = np.iinfo(self.input_dtype)
            q = np.floor(pixels / np.float32(self.input_scale) + np.float32(0.5)) \
                + self.input_zero_point
            return np.clip(q, info.min, info.max).astype(self.input_dtype)[None]
        if self.input_dtype == np.uint8:
            return np.clip(np.floor(pixels + 0.5), 0, 255).astype(np.uint8)[None]
        return pixels.astype(self.input_dtype)[None]

    def invoke(self, tensor):
        """Run the model on one prepared input; return the raw output array."""
        self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def probabilities(self, raw):
        """Dequantized float probabilities: (C,) or, for an ensemble, (members, C)."""
        np = self.np
        out = raw.astype(np.float32)
        scale, zero_point = self.output["quantization"]
        if scale:
            out = (out - np.float32(zero_point)) * np.float32(scale)
        out = out.reshape(-1, out.shape[-1])
        return out if self.members else out[0]


# ---------------------------------------------------------------------------------------------
# images


def resize_bilinear(np, image, height: int, width: int):
    """Bilinear resize of an (h, w, 3) image to float32 (height, width, 3).

    The same arithmetic as TensorFlow's ``tf.image.resize(method="bilinear",
    antialias=False)``, which kerascls training uses: half-pixel centers, edges clamped,
    float32 throughout.
    """
    src = image.astype(np.float32)
    in_h, in_w = src.shape[:2]

    def axis(in_size, out_size):
        scale = np.float32(in_size) / np.float32(out_size)
        pos = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        floor = np.floor(pos)
        lower = np.maximum(floor, 0).astype(np.intp)
        upper = np.minimum(np.ceil(pos), in_size - 1).astype(np.intp)
        return lower, upper, (pos - floor).astype(np.float32)

    y0, y1, ylerp = axis(in_h, height)
    x0, x1, xlerp = axis(in_w, width)
    xlerp = xlerp[None, :, None]
    top_left, top_right = src[y0][:, x0], src[y0][:, x1]
    bottom_left, bottom_right = src[y1][:, x0], src[y1][:, x1]
    top = top_left + (top_right - top_left) * xlerp
    bottom = bottom_left + (bottom_right - bottom_left) * xlerp
    return top + (bottom - top) * ylerp[:, None, None]


def _is_sixteen_bit(im) -> bool:
    if im.mode in SIXTEEN_BIT_MODES:
        return True
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def read_rgb(np, Image, path: Path, convert: bool, strict: bool = False):
    """Decode ``path`` to a uint8 (h, w, 3) RGB array.

    Grayscale and palette images are converted to RGB unless ``strict``; other modes (RGBA,
    CMYK, 16-bit) only with ``convert``.

    Raises:
        BadInput: for files that are not images, images over :data:`MAX_IMAGE_PIXELS` (before
            decoding), truncated images, and images of a mode that is not converted.
    """
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise BadInput(f"image of {width}x{height} pixels ({width * height / 1e6:.1f} "
                               f"megapixels) is over the {MAX_IMAGE_PIXELS / 1e6:g}-megapixel "
                               "limit; downscale it first")
            sixteen = _is_sixteen_bit(im)
            mode = im.mode
            im.load()
            if mode == "RGB" and not sixteen:
                return np.asarray(im, dtype=np.uint8)
            if mode in GRAY_AND_PALETTE_MODES and not sixteen and not strict:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
            kind = "16-bit" if sixteen else {"L": "grayscale", "LA": "grayscale with alpha",
                                             "1": "1-bit", "RGBA": "RGBA", "P": "palette",
                                             "CMYK": "CMYK", "YCbCr": "YCbCr"}.get(mode, mode)
            if not convert or (strict and mode in GRAY_AND_PALETTE_MODES):
                how = ("run without --strict" if mode in GRAY_AND_PALETTE_MODES
                       else "pass --convert")
                raise BadInput(f"{kind} image (mode {mode}); the model takes 8-bit RGB. Convert "
                               f"it to RGB, or {how} to convert it the way kerascls training "
                               "does")
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                arr = arr / max(arr.max(), 1) * 255.0 if arr.max() > 255 else arr
                return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=-1)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except BadInput:
        raise
    except FileNotFoundError:
        raise BadInput("no such file") from None
    except IsADirectoryError:
        raise BadInput("is a directory") from None
    except PermissionError:
        raise BadInput("permission denied") from None
    except Image.DecompressionBombError:
        raise BadInput(f"image larger than {MAX_IMAGE_PIXELS} pixels") from None
    except Image.UnidentifiedImageError:
        raise BadInput("not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"truncated or corrupt image ({str(exc).strip()[:80] or type(exc).__name__})"
                       ) from None


def expand_inputs(paths):
    """Yield ``(path, problem)`` for every input; a directory yields its image files.

    ``problem`` is None for a file to classify, or a one-line reason when the path itself cannot
    be used (missing, unreadable directory).
    """
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            try:
                entries = sorted(os.scandir(p), key=lambda e: e.name)
            except PermissionError:
                yield p, "directory is not readable (permission denied)"
                continue
            except OSError as exc:
                yield p, f"directory is not readable ({exc.strerror or exc})"
                continue
            images, others = [], 0
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_file = entry.is_file()
                except OSError:
                    is_file = False
                if is_file and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    images.append(Path(entry.path))
                elif is_file:
                    others += 1
            if others:
                print(f"note: {p}: skipped {others} file(s) without an image extension "
                      f"({' '.join(IMAGE_EXTENSIONS)})", file=sys.stderr)
            if not images:
                yield p, f"directory holds no images ({' '.join(IMAGE_EXTENSIONS)})"
            yield from ((img, None) for img in images)
        elif p.exists() or p.is_symlink():
            yield p, None
        else:
            yield p, "no such file or directory"


def load_and_prepare(model: Model, Image, path: Path, convert: bool, strict: bool = False):
    """Decode ``path`` and turn it into the model's input tensor (raises BadInput)."""
    return model.prepare(read_rgb(model.np, Image, path, convert, strict))


def prepared_inputs(model: Model, Image, items, convert: bool, prefetch: int,
                    strict: bool = False):
    """Yield ``(path, tensor, problem)`` for ``(path, problem)`` items, in order.

    With ``prefetch`` > 0 a worker thread decodes and resizes up to ``prefetch`` images ahead
    while the caller runs the interpreter on the current one: Pillow's decoders and the TFLite
    interpreter both release the GIL, so reading files costs (almost) no time per image once
    the pipeline is full. ``tensor`` is None when ``problem`` says why the input was skipped.
    """
    def work(path, problem):
        if problem is not None:
            return path, None, problem
        try:
            return path, load_and_prepare(model, Image, path, convert, strict), None
        except BadInput as exc:
            return path, None, str(exc)

    if prefetch < 1:
        for path, problem in items:
            yield work(path, problem)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(work, *item))
                if len(pending) > prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# ---------------------------------------------------------------------------------------------
# results


def top_k(np, probs, labels, k: int):
    """The ``k`` most probable classes as ``[(label, index, probability), ...]``."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(labels[i], int(i), float(probs[i])) for i in order]


def classify(model: Model, rgb, k: int) -> dict:
    """Classify one decoded image; the result dict is what ``--json`` prints."""
    return classify_prepared(model, model.prepare(rgb), k)


def classify_prepared(model: Model, tensor, k: int) -> dict:
    """Classify one input tensor made by ``Model.prepare``."""
    np = model.np
    probs = model.probabilities(model.invoke(tensor))
    result: dict = {}
    if model.members:
        mean, spread = probs.mean(axis=0), probs.std(axis=0)
        best = int(np.argmax(mean))
        result.update(label=model.labels[best], index=best, score=float(mean[best]),
                      members=model.members, member_mean=float(mean[best]),
                      member_std=float(spread[best]),
                      member_min=float(probs[:, best].min()),
                      member_max=float(probs[:, best].max()),
                      member_agreement=float(np.mean(np.argmax(probs, axis=1) == best)))
        probs = mean
    else:
        best = int(np.argmax(probs))
        result.update(label=model.labels[best], index=best, score=float(probs[best]))
    result["top_k"] = [{"label": lab, "index": i, "score": round(s, 6)}
                       for lab, i, s in top_k(np, probs, model.labels, k)]
    return result


def format_result(path: Path, result: dict) -> str:
    """One human-readable line for one image."""
    line = f"{path}: {result['label']} ({result['score']:.3f})"
    if "members" in result:
        line += (f" mean of {result['members']} members, spread {result['member_std']:.3f} "
                 f"(min {result['member_min']:.3f}, max {result['member_max']:.3f}, "
                 f"{result['member_agreement']:.0%} agree)")
    line += "  top-{}: ".format(len(result["top_k"]))
    line += ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["top_k"])
    return line


def percentile(values, q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation, like numpy's default."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def benchmark(model: Model, Image, files, runs: int, convert: bool, prefetch: int,
              strict: bool = False) -> dict:
    """Time ``runs`` predictions cycling over ``files``.

    * ``per_image`` is what classifying a folder costs per image: the interval between
      consecutive results of the runner's own loop (decode and resize on the prefetch thread,
      invoke, dequantize, top-k), after the pipeline has filled.
    * ``end_to_end`` is one image at a time with nothing overlapped: read and decode the file,
      resize, quantize, invoke, dequantize, top-k. This is the latency of a single image.
    * ``invoke`` is ``interpreter.invoke()`` alone on an already prepared input.
    """
    prepared = load_and_prepare(model, Image, files[0], convert, strict)
    for _ in range(min(10, runs)):
        model.invoke(prepared)
    k = min(5, len(model.labels))
    cycle = [(files[i % len(files)], None) for i in range(runs + 1)]
    intervals, last = [], None
    start = time.perf_counter()
    for _, tensor, problem in prepared_inputs(model, Image, cycle, convert, prefetch, strict):
        if problem is not None:
            raise Fatal(f"benchmark: {problem}")
        classify_prepared(model, tensor, k)
        now = time.perf_counter()
        if last is not None:
            intervals.append(now - last)
        last = now
    folder_s = last - start
    e2e, bare = [], []
    for i in range(runs):
        path = files[i % len(files)]
        t0 = time.perf_counter()
        classify_prepared(model, load_and_prepare(model, Image, path, convert, strict), k)
        e2e.append(time.perf_counter() - t0)
    model.interpreter.set_tensor(model.input["index"], prepared)
    for _ in range(runs):
        t0 = time.perf_counter()
        model.interpreter.invoke()
        bare.append(time.perf_counter() - t0)
    invoke_p50 = percentile(bare, 50)
    per_image_p50 = percentile(intervals, 50)
    return {
        "runs": runs,
        "prefetch": prefetch,
        "per_image_p50_ms": round(per_image_p50 * 1e3, 4),
        "per_image_p90_ms": round(percentile(intervals, 90) * 1e3, 4),
        "overhead_vs_invoke": round(per_image_p50 / invoke_p50 - 1, 4) if invoke_p50 else None,
        "end_to_end_p50_ms": round(percentile(e2e, 50) * 1e3, 4),
        "end_to_end_p90_ms": round(percentile(e2e, 90) * 1e3, 4),
        "invoke_p50_ms": round(invoke_p50 * 1e3, 4),
        "invoke_p90_ms": round(percentile(bare, 90) * 1e3, 4),
        "throughput_images_per_s": round((runs + 1) / folder_s, 2) if folder_s > 0
        else float("inf"),
    }


# ---------------------------------------------------------------------------------------------
# detection


class DetectModel:
    """A YOLO model from ``python -m kerascls.detect export`` with its sidecar's heads.

    Attributes:
        labels: class names.
        height, width: the input size.
        heads: per head ``(output details, grid_h, grid_w, anchors (A, 2) in input pixels)``.
        score_threshold, iou_threshold, max_detections: post-processing, from the sidecar.
    """

    def __init__(self, model_path: Path, interpreter_cls, threads: int):
        np, _ = _import_numpy_pillow()
        self.np = np
        self.path = model_path
        if model_path.is_file():
            self.meta = read_sidecar(model_path, task="detect")
        self.interpreter = load_interpreter(model_path, interpreter_cls, threads)
        self.input = self.interpreter.get_input_details()[0]
        shape = [int(v) for v in self.input["shape"]]
        self.height, self.width = self.meta["input_size"]
        if len(shape) != 4 or shape[1:] != [self.height, self.width, 3]:
            raise Fatal(f"{model_path.name} takes input shape {shape} but its sidecar says "
                        f"{self.meta['input_size']} RGB; they do not belong together")
        self.labels = [str(v) for v in self.meta["labels"]]
        self.input_dtype = np.dtype(self.input["dtype"])
        self.input_scale, self.input_zero_point = (float(self.input["quantization"][0]),
                                                   int(self.input["quantization"][1]))
        outputs = self.interpreter.get_output_details()
        self.heads, used = [], set()
        for entry in self.meta["heads"]:
            gh, gw = entry["grid"]
            anchors = np.asarray(entry["anchors"], np.float32)
            want = [gh, gw, len(anchors), 5 + len(self.labels)]
            match = [o for o in outputs if o["index"] not in used
                     and [int(v) for v in o["shape"][1:]] == want]
            if not match:
                found = [[int(v) for v in o["shape"]] for o in outputs]
                raise Fatal(f"sidecar head {entry.get('name', len(self.heads))} (grid {gh}x{gw}, "
                            f"{len(anchors)} anchors, {len(self.labels)} classes) matches no "
                            f"output of {model_path.name} (outputs {found})")
            used.add(match[0]["index"])
            self.heads.append((match[0], gh, gw, anchors))
        self.score_threshold = float(self.meta.get("score_threshold", 0.25))
        self.iou_threshold = float(self.meta.get("iou_threshold", 0.45))
        self.max_detections = int(self.meta.get("max_detections", 100))

    def prepare(self, rgb):
        """A (1, H, W, 3) input from a uint8 RGB image: Pillow bilinear resize, as training."""
        np = self.np
        if rgb.shape[:2] != (self.height, self.width):
            _, Image = _import_numpy_pillow()
            rgb = np.asarray(Image.fromarray(rgb).resize((self.width, self.height),
                                                         Image.BILINEAR), np.uint8)
        pixels = rgb.astype(np.float32)
        if self.input_dtype in (np.uint8, np.int8) and self.input_scale > 0:
            info = np.iinfo(self.input_dtype)
            q = np.floor(pixels / np.float32(self.input_scale) + np.float32(0.5)) \
                + self.input_zero_point
            return np.clip(q, info.min, info.max).astype(self.input_dtype)[None]
        return pixels.astype(self.input_dtype)[None]

    def raw_heads(self, tensor):
        """Run the model; return each head's float32 (grid_h, grid_w, A, 5 + C) logits."""
        np = self.np
        self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        out = []
        for detail, *_ in self.heads:
            raw = self.interpreter.get_tensor(detail["index"]).astype(np.float32)
            scale, zero_point = detail["quantization"]
            if scale:
                raw = (raw - np.float32(zero_point)) * np.float32(scale)
            out.append(raw[0])
        return out

    def detect(self, tensor, score_threshold: float, iou_threshold: float):
        """``(boxes (n, 4) x1 y1 x2 y2 in 0..1, scores (n,), classes (n,))``, best first."""
        boxes, scores = decode_heads(self.np, self.raw_heads(tensor),
                                     [h[3] for h in self.heads], self.height, self.width)
        return postprocess(self.np, boxes, scores, score_threshold, iou_threshold,
                           self.max_detections)


def _sigmoid(np, x):
    return 1.0 / (1.0 + np.exp(-x))


def decode_heads(np, heads, anchors, height: int, width: int):
    """Candidate boxes ``(N, 4)`` (x1, y1, x2, y2 in 0..1) and scores ``(N, C)`` of one image."""
    all_boxes, all_scores = [], []
    for raw, anchor in zip(heads, anchors):
        gh, gw, a = raw.shape[:3]
        gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grid = np.stack([gx, gy], -1)[:, :, None, :]
        xy = (_sigmoid(np, raw[..., 0:2]) + grid) / np.array([gw, gh], np.float32)
        wh = np.exp(np.clip(raw[..., 2:4], -10, 6)) * (
            anchor / np.array([width, height], np.float32))
        all_boxes.append(np.concatenate([xy - wh / 2, xy + wh / 2], -1).reshape(-1, 4))
        all_scores.append((_sigmoid(np, raw[..., 4:5]) * _sigmoid(np, raw[..., 5:]))
                          .reshape(gh * gw * a, -1))
    return np.concatenate(all_boxes), np.concatenate(all_scores)


def nms(np, boxes, scores, iou_threshold: float):
    """Indices kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    area = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 0), axis=1)
    while len(order):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.maximum(rb - lt, 0), axis=1)
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(keep, np.int64)


def postprocess(np, boxes, scores, score_threshold: float, iou_threshold: float,
                max_detections: int = 100):
    """Score threshold, then class-aware NMS: boxes of different classes never suppress each
    other. Returns ``(boxes, scores, classes)`` best first, at most ``max_detections``."""
    cand, cls = np.nonzero(scores >= score_threshold)
    if not len(cand):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    b = np.clip(boxes[cand], 0, 1)
    s = scores[cand, cls]
    kept = []
    for c in np.unique(cls):
        idx = np.nonzero(cls == c)[0]
        kept.extend(idx[nms(np, b[idx], s[idx], iou_threshold)])
    kept = np.array(kept)[np.argsort(-s[kept], kind="stable")][:max_detections]
    return b[kept].astype(np.float32), s[kept].astype(np.float32), cls[kept].astype(np.int64)


def detections_in_pixels(model: DetectModel, found, height: int, width: int) -> list:
    """``[{label, class_id, score, box: [x1, y1, x2, y2]}]`` in pixels of the original image."""
    boxes, scores, classes = found
    return [{"label": model.labels[int(c)], "class_id": int(c), "score": round(float(s), 6),
             "box": [round(float(b[0]) * width, 2), round(float(b[1]) * height, 2),
                     round(float(b[2]) * width, 2), round(float(b[3]) * height, 2)]}
            for b, s, c in zip(boxes, scores, classes)]


COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
          (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))


def draw_boxes(Image, rgb, detections: list, out: Path) -> None:
    """Write ``rgb`` with its detections drawn (scaled up to at least 256 px) to ``out``, a PNG,
    through a temporary file in the same folder, so a failed write leaves nothing half-written."""
    from PIL import ImageDraw

    h, w = rgb.shape[:2]
    scale = max(1, 256 // max(h, w))
    im = Image.fromarray(rgb)
    if scale > 1:
        im = im.resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    for d in detections:
        color = COLORS[d["class_id"] % len(COLORS)]
        x1, y1, x2, y2 = (v * scale for v in d["box"])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        text = f"{d['label']} {d['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, ty, x1 + right - left + 2, ty + bottom - top + 2], fill=color)
        draw.text((x1 + 1, ty), text, fill=(255, 255, 255))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        im.save(tmp, format="PNG")
        os.replace(tmp, out)
    except OSError as exc:
        raise Fatal(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def draw_target(draw: str | None, path: Path, several: bool) -> Path | None:
    """Where ``--draw`` puts the drawing of ``path``: the file itself for one image, else
    ``DIR/NAME_detections.png``."""
    if not draw:
        return None
    target = Path(draw)
    if not several and target.suffix.lower() == ".png":
        return target
    return target / f"{path.stem}_detections.png"


def run_detect(args) -> int:
    """``--task detect``: detect in every input, print the boxes, draw them if asked."""
    np, Image = _import_numpy_pillow()
    if args.top_k is not None or args.benchmark:
        flag = "--top-k" if args.top_k is not None else "--benchmark"
        raise Fatal(f"{flag} is for classification; --task detect does not take it")
    if args.no_sidecar:
        raise Fatal("--task detect needs the sidecar (heads, anchors, labels); it cannot run "
                    "with --no-sidecar")
    interpreter_cls, _ = load_runtime(args.runtime)
    model = DetectModel(Path(args.model), interpreter_cls, args.threads)
    score = model.score_threshold if args.score_threshold is None else args.score_threshold
    iou = model.iou_threshold if args.iou_threshold is None else args.iou_threshold
    items = list(expand_inputs(args.inputs))
    several = len(items) > 1
    if args.draw:
        target = Path(args.draw)
        if several and target.suffix.lower() == ".png":
            raise Fatal(f"--draw {args.draw} names one PNG but there are {len(items)} inputs; "
                        "pass a folder")
        folder = target if several or target.suffix.lower() != ".png" else target.parent
        if not folder.is_dir():
            if folder.exists():
                raise Fatal(f"--draw: {folder} is not a folder")
            try:
                folder.mkdir(parents=True)
            except OSError as exc:
                raise Fatal(f"--draw: cannot create {folder}: {exc.strerror or exc}") from None
    failed, done = 0, 0
    for path, problem in items:
        if problem is None:
            try:
                rgb = read_rgb(np, Image, path, args.convert, args.strict)
            except BadInput as exc:
                problem = str(exc)
        if problem is not None:
            failed += 1
            print(f"error: {path}: {problem}", file=sys.stderr)
            continue
        found = model.detect(model.prepare(rgb), score, iou)
        detections = detections_in_pixels(model, found, *rgb.shape[:2])
        out = draw_target(args.draw, path, several)
        if out is not None:
            draw_boxes(Image, rgb, detections, out)
        done += 1
        if args.json:
            result = {"path": str(path), "width": int(rgb.shape[1]),
                      "height": int(rgb.shape[0]), "detections": detections}
            if out is not None:
                result["output"] = str(out)
            print(json.dumps(result), flush=True)
        else:
            drawn = f" -> {out}" if out is not None else ""
            print(f"{path}: {len(detections)} object(s){drawn}", flush=True)
            for d in detections:
                x1, y1, x2, y2 = d["box"]
                print(f"  {d['label']:<12} {d['score']:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, "
                      f"{y2:.1f}]", flush=True)
    if failed:
        if done:
            print(f"error: {failed} of {failed + done} input(s) could not be read",
                  file=sys.stderr)
        return EXIT_SOME_FAILED if done else EXIT_FATAL
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_FATAL)


def _int_at_least(name: str, minimum: int, wording: str, maximum: int | None = None):
    """An argparse type: an integer in ``minimum..maximum``, else "NAME must be WORDING.
    Received: X"."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{name} must be {wording}. Received: {text}")
        return value
    return parse


def _positive(name):
    return _int_at_least(name, 1, "a positive integer")


def _non_negative(name):
    return _int_at_least(name, 0, "an integer >= 0")


def _fraction(name):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [0, 1]. "
                                             f"Received: {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="run_tflite.py", description=__doc__.split("\n\n")[0],
                     allow_abbrev=False)
    parser.add_argument("model", help="the .tflite model (its .json sidecar must lie beside it)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                        help="image files, or folders whose jpg/png/bmp/gif files are classified")
    parser.add_argument("--task", choices=("classify", "detect"), default="classify",
                        help="classify (default), or detect objects with a YOLO model from "
                             "python -m kerascls.detect export")
    parser.add_argument("--top-k", type=_positive("--top-k"), default=None,
                        help="how many classes to list per image (default: 3)")
    parser.add_argument("--threads", default=1, metavar="N",
                        type=_int_at_least("--threads", 1, f"an integer from 1 to {MAX_THREADS}",
                                           MAX_THREADS),
                        help=f"interpreter threads, 1 to {MAX_THREADS} (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--benchmark", type=_positive("--benchmark"), metavar="N",
                        help="also time N predictions: p50/p90 latency and throughput")
    parser.add_argument("--prefetch", type=_non_negative("--prefetch"), default=4, metavar="N",
                        help="decode up to N images ahead on a second thread while the model "
                             "runs (default: 4; 0 decodes on the main thread)")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--convert", action="store_true",
                       help="also convert RGBA, CMYK and 16-bit images to RGB the way training "
                            "does, instead of refusing them")
    modes.add_argument("--strict", action="store_true",
                       help="refuse every image that is not 8-bit RGB, grayscale and palette "
                            "images included (by default they are converted to RGB)")
    parser.add_argument("--draw", metavar="OUT.png",
                        help="detect: write the image with its boxes drawn to OUT.png (one "
                             "input), or NAME_detections.png files into the folder OUT")
    parser.add_argument("--score-threshold", type=_fraction("--score-threshold"), default=None,
                        metavar="S", help="detect: lowest score reported (default: the "
                                          "sidecar's, 0.25)")
    parser.add_argument("--iou-threshold", type=_fraction("--iou-threshold"), default=None,
                        metavar="T", help="detect: NMS IoU threshold (default: the sidecar's, "
                                          "0.45)")
    parser.add_argument("--no-sidecar", action="store_true",
                        help="run without the sidecar: class indices as labels, the model's "
                             "own input size")
    parser.add_argument("--runtime", choices=("auto",) + RUNTIMES, default="auto",
                        help="TFLite runtime (default: the first found of "
                             f"{', '.join(RUNTIMES)})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def run(argv=None) -> int:
    """Parse ``argv``, classify every input, print the results; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.task == "detect":
        return run_detect(args)
    for flag in ("draw", "score_threshold", "iou_threshold"):
        if getattr(args, flag) is not None:
            raise Fatal(f"--{flag.replace('_', '-')} is for --task detect; classification does "
                        "not take it")
    if args.top_k is None:
        args.top_k = 3
    _, Image = _import_numpy_pillow()
    interpreter_cls, runtime = load_runtime(args.runtime)
    t_start = time.perf_counter()
    model = Model(Path(args.model), interpreter_cls, args.threads, not args.no_sidecar)
    k = min(args.top_k, len(model.labels))
    failed, done = 0, []
    inputs = prepared_inputs(model, Image, expand_inputs(args.inputs), args.convert,
                             args.prefetch, args.strict)
    for path, tensor, problem in inputs:
        if problem is not None:
            failed += 1
            print(f"error: {path}: {problem}", file=sys.stderr)
            continue
        result = classify_prepared(model, tensor, k)
        if not done:
            result_first_s = time.perf_counter() - t_start
        done.append(path)
        if args.json:
            print(json.dumps({"path": str(path), **result}), flush=True)
        else:
            print(format_result(path, result), flush=True)
    if args.benchmark and done:
        stats = benchmark(model, Image, done, args.benchmark, args.convert, args.prefetch,
                          args.strict)
        stats.update(runtime=runtime, threads=args.threads, model=str(model.path),
                     first_prediction_s=round(result_first_s, 4))
        if args.json:
            print(json.dumps({"benchmark": stats}), flush=True)
        else:
            print(f"benchmark: {stats['runs']} runs, {runtime}, {args.threads} thread(s): "
                  f"per image in a folder p50 {stats['per_image_p50_ms']:.3f} ms "
                  f"({stats['overhead_vs_invoke']:+.1%} over invoke), "
                  f"single image end-to-end p50 {stats['end_to_end_p50_ms']:.3f} ms, "
                  f"p90 {stats['end_to_end_p90_ms']:.3f} ms, "
                  f"{stats['throughput_images_per_s']:.1f} images/s; "
                  f"invoke p50 {stats['invoke_p50_ms']:.3f} ms, "
                  f"p90 {stats['invoke_p90_ms']:.3f} ms", flush=True)
    if failed:
        if done:
            print(f"error: {failed} of {failed + len(done)} input(s) could not be classified",
                  file=sys.stderr)
        return EXIT_SOME_FAILED if done else EXIT_FATAL
    return EXIT_OK


def main(argv=None) -> int:
    """Entry point: every failure is one line on stderr and a non-zero exit, never a traceback."""
    try:
        return run(argv)
    except Fatal as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        if os.environ.get("RUN_TFLITE_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: run_tflite.py failed: {type(exc).__name__}: {first} "
              "(set RUN_TFLITE_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
