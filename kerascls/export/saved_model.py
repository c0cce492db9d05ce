"""SavedModel export for TensorFlow Serving, with decoding, resizing and normalization in the graph.

``export_saved_model(run, out_dir)`` writes one SavedModel version that ``tensorflow_model_server``
(and :mod:`kerascls.serving.server`) loads unchanged, to ``MODELS_DIR/<model_name>/<version>/``.
The version is the next integer; the SavedModel is written to a hidden temporary directory beside
the versions and renamed into place, so a server polling the directory never sees half a version.

The signature contract (tests and users depend on these names):

``serving_default``
    input ``image_bytes``: DT_STRING [-1], encoded JPEG / PNG / BMP / GIF (first frame). Each image
    is decoded, converted to RGB, checked against :data:`MAX_IMAGE_PIXELS` *before* it is decoded
    (so a decompression bomb is refused with INVALID_ARGUMENT instead of exhausting memory),
    resized with :func:`kerascls.data.preprocess.resize_images` (the function training used) and
    fed to the model, whose first layer normalizes.
``predict_pixels``
    input ``pixels``: DT_FLOAT [-1, H, W, 3], RGB 0..255 at the model's input size.

Both return ``probabilities`` (float [-1, num_classes]), ``class_id`` (int64 [-1]), ``label``
(string [-1]) and ``score`` (float [-1], the top probability), plus any extra outputs the run
provides (the Bayesian models add ``entropy`` and ``mutual_information``).

Besides the graph, a version directory holds ``assets/labels.txt`` (one class name per line),
``assets/metadata.json`` (the run's manifest plus a ``serving`` section describing the
signatures) and ``assets.extra/tf_serving_warmup_requests`` (PredictionLog records built from the
run's own test images, which TF Serving replays before it marks the version AVAILABLE).

The hook for model families: the graph gets its probabilities from
``run.signature_outputs(pixels)``, which receives a float32 0..255 batch at the input size
inside ``tf.function`` and returns a dict of tensors holding at least ``probabilities``
[batch, num_classes]; every other entry (for example ``entropy`` and ``mutual_information`` of a
Monte Carlo predictor drawing its samples in the graph) becomes an extra output of both
signatures. The object ``run.model`` is attached to the exported module so that TensorFlow's
object tracking saves its variables: it must be trackable (a Keras or tf_keras model, a
``tf.Module``), or expose the trackable object holding its variables as ``.trackable``.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kerascls.data.preprocess import MAX_IMAGE_PIXELS, resize_images
from kerascls.errors import UserError
from kerascls.fileio import atomic_write_json, atomic_write_text

SERVING_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "predict_pixels"
IMAGE_INPUT = "image_bytes"
PIXELS_INPUT = "pixels"
BASE_OUTPUTS = ("probabilities", "class_id", "label", "score")
LABELS_FILE = "labels.txt"
MANIFEST_FILE = "metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_IMAGES = 4

_VERSION_RE = re.compile(r"^\d+$")


def versions_in(model_dir: Path) -> list[int]:
    """Integer version directories under ``model_dir``, sorted (TF Serving's rule: digits only)."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)
    )


# Formats the serving graph accepts; anything else is refused before decoding.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF (first frame)", "WebP (still)")
_UNKNOWN, _JPEG, _PNG, _GIF, _BMP, _WEBP = range(6)


def _gif_first_frame(b, n):
    """Walk a GIF's blocks to the end of its first image, in the graph.

    ``b`` is the file as int64 bytes, ``n`` its length. Returns ``(end, frame)``: the offset just
    past the first image's data (0 when the file has no complete image) and that image's
    ``[left, top, width, height]``. Only block headers and sub-block lengths are read, one
    sub-block per loop step; nothing is decompressed.
    """
    import tensorflow as tf

    last = tf.maximum(n - 1, tf.constant(0, tf.int64))

    def at(i):
        i = tf.cast(i, tf.int64)
        return tf.gather(b, tf.clip_by_value(i, tf.constant(0, tf.int64), last))

    def le16(i):
        return at(i) + at(i + 1) * 256

    zero, one, two = (tf.constant(v, tf.int64) for v in (0, 1, 2))

    def table(packed):  # size of a colour table announced by a packed byte
        return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(two, packed % 8), zero)

    start = 13 + table(at(10))
    # mode 0: at a block; 1: in an extension's sub-blocks; 2: in the image's sub-blocks
    init = (start, zero, zero, tf.zeros([4], tf.int64), tf.constant(False))

    def cond(pos, mode, end, frame, done):
        return tf.logical_and(tf.logical_not(done), pos < n)

    def body(pos, mode, end, frame, done):
        byte = at(pos)
        at_block = tf.equal(mode, 0)
        is_ext = at_block & tf.equal(byte, 0x21)
        is_img = at_block & tf.equal(byte, 0x2C)
        img_frame = tf.stack([le16(pos + 1), le16(pos + 3), le16(pos + 5), le16(pos + 7)])
        img_skip = 10 + table(at(pos + 9)) + 1
        sub_end = tf.logical_not(at_block) & tf.equal(byte, 0)
        image_done = sub_end & tf.equal(mode, 2)
        new_pos = tf.where(
            is_ext,
            pos + 2,
            tf.where(is_img, pos + img_skip, tf.where(at_block, pos, pos + byte + 1)),
        )
        new_mode = tf.where(is_ext, one, tf.where(is_img, two, tf.where(sub_end, zero, mode)))
        stop = (at_block & ~is_ext & ~is_img) | image_done
        new_end = tf.where(image_done, pos + 1, end)
        return (
            new_pos,
            new_mode,
            new_end,
            tf.where(is_img, img_frame, frame),
            stop,
        )

    _, _, end, frame, _ = tf.while_loop(cond, body, init, parallel_iterations=1)
    return end, frame


def _read_header(data):
    """``(kind, [height, width], data_to_decode, problem)`` of an encoded image, without decoding.

    PNG (IHDR), BMP and WebP (VP8, VP8L, VP8X) sizes come from their fixed header fields, JPEG's
    from ``tf.image.extract_jpeg_shape`` (markers only). A GIF's blocks are walked to the end of
    its first frame: the size checked is its screen, the first frame must lie inside the screen,
    and only that frame is handed to the decoder (the file is cut after it), so later frames are
    never decompressed. ``problem`` is a non-empty message for files refused outright: unknown
    formats, animated WebP, a GIF without a complete first frame or with a frame larger than its
    screen, a PNG whose first chunk is not IHDR.
    """
    import tensorflow as tf

    head = tf.strings.substr(data, 0, 32)
    head = tf.strings.substr(tf.strings.join([head, tf.constant(b"\0" * 32)]), 0, 32)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def be32(i):
        return b[i] * 16777216 + b[i + 1] * 65536 + b[i + 2] * 256 + b[i + 3]

    def le16(i):
        return b[i] + b[i + 1] * 256

    def le24(i):
        return b[i] + b[i + 1] * 256 + b[i + 2] * 65536

    def le32s(i):
        v = b[i] + b[i + 1] * 256 + b[i + 2] * 65536 + b[i + 3] * 16777216
        return tf.abs(tf.where(v >= 2147483648, v - 4294967296, v))

    def starts(offset, text):
        return tf.reduce_all(
            tf.equal(b[offset : offset + len(text)], tf.constant(list(text), tf.int64))
        )

    is_png = starts(0, b"\x89PNG")
    is_gif = starts(0, b"GIF8")
    is_bmp = starts(0, b"BM")
    is_jpeg = starts(0, b"\xff\xd8")
    is_webp = starts(0, b"RIFF") & starts(8, b"WEBP")
    kind = tf.case(
        [
            (is_png, lambda: tf.constant(_PNG, tf.int64)),
            (is_gif, lambda: tf.constant(_GIF, tf.int64)),
            (is_bmp, lambda: tf.constant(_BMP, tf.int64)),
            (is_jpeg, lambda: tf.constant(_JPEG, tf.int64)),
            (is_webp, lambda: tf.constant(_WEBP, tf.int64)),
        ],
        default=lambda: tf.constant(_UNKNOWN, tf.int64),
        exclusive=False,
    )
    ok = tf.constant("")

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return tf.stack([shape[0], shape[1]]), data, ok

    def png():
        problem = tf.where(starts(12, b"IHDR"), ok, "a PNG whose first chunk is not IHDR")
        return tf.stack([be32(20), be32(16)]), data, problem

    def bmp():
        return tf.stack([le32s(22), le32s(18)]), data, ok

    def webp():
        lossy = starts(12, b"VP8 ")
        lossless = starts(12, b"VP8L")
        extended = starts(12, b"VP8X")
        lossless_bits = b[21] + b[22] * 256 + b[23] * 65536 + b[24] * 16777216
        hw = tf.case(
            [
                (lossy, lambda: tf.stack([le16(28) % 16384, le16(26) % 16384])),
                (
                    lossless,
                    lambda: tf.stack(
                        [(lossless_bits // 16384) % 16384 + 1, lossless_bits % 16384 + 1]
                    ),
                ),
                (extended, lambda: tf.stack([le24(27) + 1, le24(24) + 1])),
            ],
            default=lambda: tf.zeros([2], tf.int64),
            exclusive=False,
        )
        animated = extended & tf.equal(tf.bitwise.bitwise_and(b[20], 2), 2)
        problem = tf.where(
            animated,
            "an animated WebP",
            tf.where(lossy | lossless | extended, ok, "a WebP of an unknown kind"),
        )
        return hw, data, problem

    def gif():
        whole = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64)
        end, frame = _gif_first_frame(whole, tf.size(whole, out_type=tf.int64))
        screen = tf.stack([le16(8), le16(6)])  # height, width
        inside = (frame[0] + frame[2] <= screen[1]) & (frame[1] + frame[3] <= screen[0])
        problem = tf.where(
            end <= 0,
            "a GIF without a complete first frame",
            tf.where(inside, ok, "a GIF whose first frame is larger than its screen"),
        )
        first = tf.strings.join(
            [tf.strings.substr(data, tf.constant(0, tf.int64), tf.maximum(end, 1)), b";"]
        )
        return screen, first, problem

    def unknown():
        return tf.zeros([2], tf.int64), data, tf.constant("not a JPEG, PNG, BMP, GIF or WebP image")

    hw, to_decode, problem = tf.switch_case(
        tf.cast(kind, tf.int32),
        [unknown, jpeg, png, gif, bmp, webp],
    )
    return kind, hw, to_decode, problem


def decode_images(image_bytes, size: tuple[int, int], max_pixels: int = MAX_IMAGE_PIXELS):
    """Encoded images (string [N]) to float32 0..255 RGB [N, H, W, 3], resized as training did.

    Accepted formats: :data:`ACCEPTED_FORMATS`. Decoding matches
    :func:`kerascls.data.preprocess.read_image` (Pillow, which reads folder datasets): PNG, BMP,
    GIF and lossless WebP are lossless, and JPEG uses the accurate integer IDCT.

    Raises InvalidArgumentError (at run time) for bytes that are not an accepted image, truncated
    or empty images, and images with more than ``max_pixels`` pixels. Sizes are read from the
    header before anything is decoded (see :func:`_read_header`), so a decompression bomb costs a
    header read, not its decoded size.
    """
    import tensorflow as tf

    height, width = int(size[0]), int(size[1])

    def one(data):
        kind, hw, to_decode, problem = _read_header(data)
        refused = tf.debugging.Assert(
            tf.equal(problem, ""), ["image refused before decoding:", problem]
        )
        # Each side first, so that the product of two huge header fields cannot overflow.
        fits = tf.reduce_all(hw <= max_pixels) & (hw[0] * hw[1] <= max_pixels)
        too_big = tf.debugging.Assert(
            fits,
            [f"image too large: the limit is {max_pixels} pixels; height and width:", hw],
        )
        with tf.control_dependencies([refused, too_big]):
            # JPEG with the accurate integer IDCT decodes exactly as Pillow (the training reader).
            image = tf.cond(
                tf.equal(kind, _JPEG),
                lambda: tf.io.decode_jpeg(to_decode, channels=3, dct_method="INTEGER_ACCURATE"),
                lambda: tf.io.decode_image(
                    to_decode, channels=3, expand_animations=False, dtype=tf.uint8
                ),
            )
        image.set_shape([None, None, 3])
        shape = tf.shape(image)
        empty = tf.debugging.Assert(
            tf.reduce_all(shape[:2] > 0), ["image has no pixels; height and width:", shape[:2]]
        )
        with tf.control_dependencies([empty]):
            return resize_images(image[None], (height, width))[0]

    return tf.map_fn(
        one, image_bytes, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32)
    )


def _trackable(run):
    return run.predictor.trackable


def build_serving_module(run, max_pixels: int = MAX_IMAGE_PIXELS):
    """A ``tf.Module`` with the run's model and the serving functions ``serve`` and ``pixels``."""
    import tensorflow as tf

    h, w, c = (int(v) for v in run.metadata["input_shape"])
    if c != 3:
        raise UserError(
            f"SavedModel export needs RGB models (input_shape [H, W, 3]); "
            f"run {run.path} has input_shape {run.metadata['input_shape']}"
        )
    labels = [str(v) for v in run.metadata["labels"]]

    module = tf.Module(name="kerascls_serving")
    module.model = _trackable(run)
    module.labels = tf.constant(labels, dtype=tf.string)

    def outputs(pixels):
        out = dict(run.signature_outputs(pixels))
        if "probabilities" not in out:
            raise UserError("run.signature_outputs() must return 'probabilities'")
        clash = sorted(set(out) & set(BASE_OUTPUTS[1:]))
        if clash:
            raise UserError(
                f"run.signature_outputs() may not return {', '.join(clash)}: the "
                "exporter derives them from 'probabilities'"
            )
        probs = tf.cast(out.pop("probabilities"), tf.float32)
        class_id = tf.argmax(probs, axis=-1, output_type=tf.int64)
        result = {
            "probabilities": probs,
            "class_id": class_id,
            "label": tf.gather(module.labels, class_id),
            "score": tf.reduce_max(probs, axis=-1),
        }
        result.update(
            {k: tf.cast(v, tf.float32) if v.dtype.is_floating else v for k, v in out.items()}
        )
        return result

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_INPUT)])
    def serve(image_bytes):
        return outputs(decode_images(image_bytes, (h, w), max_pixels))

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name=PIXELS_INPUT)])
    def pixels(pixels):
        return outputs(pixels)

    module.serve = serve
    module.pixels = pixels
    return module


def _sample_images(run, count: int) -> np.ndarray:
    """``count`` test images of the run as uint8, spread over the classes."""
    splits = run.dataset()
    x, y = splits.x_test, splits.y_test
    order = np.argsort(np.asarray(y), kind="stable")
    picks = order[np.linspace(0, len(order) - 1, num=min(count, len(order))).astype(int)]
    return np.clip(np.round(x[picks]), 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 RGB (H, W, 3) image."""
    import tensorflow as tf

    return bytes(tf.io.encode_png(np.asarray(image, dtype=np.uint8)).numpy())


def warmup_records(model_name: str, images: np.ndarray) -> list[bytes]:
    """Serialized PredictionLog records for ``assets.extra/tf_serving_warmup_requests``.

    One request of a single image and one of all ``images`` through ``serving_default``, and one
    through ``predict_pixels``, so both signatures and two batch sizes are traced before the first
    real request.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    encoded = [encode_png(im) for im in images]

    def record(signature, name, value):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        return log.SerializeToString()

    return [
        record(SERVING_SIGNATURE, IMAGE_INPUT, np.array(encoded[:1], dtype=object)),
        record(SERVING_SIGNATURE, IMAGE_INPUT, np.array(encoded, dtype=object)),
        record(PIXELS_SIGNATURE, PIXELS_INPUT, images[:1].astype(np.float32)),
    ]


def _manifest(run, model_name: str, max_pixels: int, outputs: list[str]) -> dict:
    h, w, _ = (int(v) for v in run.metadata["input_shape"])
    return {
        **run.metadata,
        "serving": {
            "model_name": model_name,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "run_dir": str(Path(run.path).resolve()),
            "max_image_pixels": max_pixels,
            "signatures": {
                SERVING_SIGNATURE: {
                    "inputs": {IMAGE_INPUT: {"dtype": "DT_STRING", "shape": [-1]}},
                    "outputs": outputs,
                },
                PIXELS_SIGNATURE: {
                    "inputs": {PIXELS_INPUT: {"dtype": "DT_FLOAT", "shape": [-1, h, w, 3]}},
                    "outputs": outputs,
                },
            },
        },
    }


def _next_version(model_dir: Path) -> int:
    found = versions_in(model_dir)
    return (found[-1] + 1) if found else 1


def export_saved_model(
    run,
    out_dir: Path,
    *,
    models_dir: str | Path | None = None,
    version: int | None = None,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    warmup_images: int = WARMUP_IMAGES,
) -> list[Path]:
    """Export ``run`` as SavedModel version ``MODELS_DIR/<model_name>/<version>/``.

    Args:
        run: a :class:`kerascls.runs.Run`.
        out_dir: the run's output directory; ``MODELS_DIR`` defaults to ``out_dir / "models"``.
        models_dir: the directory holding one folder per model (the parent of the base path).
        version: the version number; default the next integer after the highest one present.
            An existing version is never overwritten.
        max_image_pixels: largest image (height x width) the ``serving_default`` graph decodes.
        warmup_images: test images per warmup request.

    Returns:
        ``[version_dir]``.
    """
    import tensorflow as tf

    model_name = str(run.metadata["model_name"])
    base = Path(models_dir).expanduser() if models_dir else Path(out_dir) / "models"
    model_dir = base / model_name
    if version is not None:
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise UserError(f"--version must be a positive integer. Received: {version}") from None
        if version <= 0:
            raise UserError(f"--version must be a positive integer. Received: {version}")
        if (model_dir / str(version)).exists():
            raise UserError(
                f"version {version} already exists in {model_dir}; "
                f"omit --version to write version {_next_version(model_dir)}"
            )
    model_dir.mkdir(parents=True, exist_ok=True)

    module = build_serving_module(run, max_image_pixels)
    images = _sample_images(run, warmup_images)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    try:
        staging = tmp / "staging"
        staging.mkdir()
        final_version = version or _next_version(model_dir)
        signatures = {
            SERVING_SIGNATURE: module.serve.get_concrete_function(),
            PIXELS_SIGNATURE: module.pixels.get_concrete_function(),
        }
        outputs = sorted(signatures[SERVING_SIGNATURE].structured_outputs)
        atomic_write_text(staging / LABELS_FILE, "".join(f"{name}\n" for name in run.labels))
        atomic_write_json(
            staging / MANIFEST_FILE, _manifest(run, model_name, max_image_pixels, outputs)
        )
        module.labels_file = tf.saved_model.Asset(str(staging / LABELS_FILE))
        module.manifest_file = tf.saved_model.Asset(str(staging / MANIFEST_FILE))
        saved = tmp / "saved_model"
        tf.saved_model.save(module, str(saved), signatures=signatures)
        extra = saved / "assets.extra"
        extra.mkdir()
        with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as writer:
            for rec in warmup_records(model_name, images):
                writer.write(rec)
        return [_publish(saved, model_dir, final_version, explicit=version is not None)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(saved: Path, model_dir: Path, version: int, explicit: bool) -> Path:
    """Rename the finished SavedModel to ``model_dir/<version>``; auto versions move on if taken."""
    while True:
        target = model_dir / str(version)
        try:
            os.rename(saved, target)
            return target
        except OSError:
            if explicit or not target.exists():
                raise
            version = _next_version(model_dir)
