"""SavedModel export: layout, signatures, warmup records, fidelity to Keras, guards in the graph."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def png_bytes(array: np.ndarray, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **kw)
    return buf.getvalue()


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 30000) -> bytes:
    """A real decompression bomb: a valid 1-bit ``side`` x ``side`` PNG of about 100 KB."""
    import struct

    comp = zlib.compressobj(1)
    block = (b"\0" * (1 + (side + 7) // 8)) * 1000
    parts = [comp.compress(block) for _ in range(side // 1000)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no real image data."""
    import struct

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


def png_zero_size() -> bytes:
    """A PNG whose header says 0 x 0 pixels."""
    import struct

    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def digits_models(digits_run, tmp_path_factory):
    """Two exports of the digits run into one MODELS_DIR (versions 1 and 2)."""
    from kerascls.export.saved_model import export_saved_model
    from kerascls.runs import load_run

    run = load_run(digits_run)
    models_dir = tmp_path_factory.mktemp("models")
    first = export_saved_model(run, run.path, models_dir=models_dir)
    second = export_saved_model(run, run.path, models_dir=models_dir)
    return run, models_dir, first[0], second[0]


@pytest.fixture(scope="module")
def loaded(digits_models):
    import tensorflow as tf

    return tf.saved_model.load(str(digits_models[2]))


def test_versions_are_next_integers_renamed_into_place(digits_models):
    run, models_dir, first, second = digits_models
    model_dir = models_dir / run.metadata["model_name"]
    assert (first.name, second.name) == ("1", "2")
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2"]  # no temporary left behind
    for version in (first, second):
        assert (version / "saved_model.pb").is_file()
        assert (version / "variables" / "variables.index").is_file()


def test_assets_hold_labels_manifest_and_warmup(digits_models):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    run, _, version, _ = digits_models
    assert (version / "assets" / "labels.txt").read_text().splitlines() == run.labels
    manifest = json.loads((version / "assets" / "metadata.json").read_text())
    assert manifest["model_name"] == run.metadata["model_name"]
    assert manifest["input_shape"] == run.metadata["input_shape"]
    assert manifest["serving"]["signatures"]["serving_default"]["outputs"] == [
        "class_id",
        "label",
        "probabilities",
        "score",
    ]
    records = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(
            str(version / "assets.extra" / "tf_serving_warmup_requests")
        )
    ]
    assert 1 <= len(records) <= 1000
    signatures = {r.predict_log.request.model_spec.signature_name for r in records}
    assert signatures == {"serving_default", "predict_pixels"}
    images = [
        r for r in records if r.predict_log.request.model_spec.signature_name == "serving_default"
    ]
    blobs = tf.make_ndarray(images[-1].predict_log.request.inputs["image_bytes"])
    assert len(blobs) > 1
    for blob in blobs:  # real test images, PNG-encoded at the model's input size
        assert list(tf.io.decode_png(blob).shape) == run.metadata["input_shape"]


def test_saved_model_cli_lists_both_signatures(digits_models):
    version = digits_models[2]
    cli = Path(sys.executable).with_name("saved_model_cli")
    cmd = (
        [str(cli)]
        if cli.exists()
        else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    )
    out = subprocess.run(
        cmd + ["show", "--all", "--dir", str(version)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    default = text.split("signature_def['serving_default']")[1]
    pixels = text.split("signature_def['predict_pixels']")[1].split("signature_def[")[0]
    assert (
        "inputs['image_bytes']" in default and "DT_STRING" in default and "shape: (-1)" in default
    )
    h, w, _ = digits_models[0].metadata["input_shape"]
    assert "inputs['pixels']" in pixels and f"shape: (-1, {h}, {w}, 3)" in pixels
    for section in (default, pixels):
        for name, dtype in (
            ("probabilities", "DT_FLOAT"),
            ("class_id", "DT_INT64"),
            ("label", "DT_STRING"),
            ("score", "DT_FLOAT"),
        ):
            block = section.split(f"outputs['{name}']")[1].split("name:")[0]
            assert dtype in block, (name, block)
        assert "shape: (-1, 10)" in section.split("outputs['probabilities']")[1].split("name:")[0]
        assert "tensorflow/serving/predict" in section


def test_fidelity_over_the_whole_digits_test_split(digits_models, loaded, tmp_path):
    """PNG and JPEG files of every test image: SavedModel == the Keras model on the same pixels."""
    import tensorflow as tf

    from kerascls.data import load_dataset
    from kerascls.data.preprocess import read_image, resize_images

    run = digits_models[0]
    d = run.config.data
    native = load_dataset(
        "digits",
        8,
        seed=run.config.train.seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
    )
    test_x = run.dataset().x_test
    assert len(native.x_test) == len(test_x) > 300
    keras_model = run.deployable()
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg")):
        folder = tmp_path / ext
        folder.mkdir()
        paths = []
        for i, image in enumerate(native.x_test.astype(np.uint8)):
            paths.append(folder / f"{i:04d}.{ext}")
            paths[-1].write_bytes(encode(image, fmt, **({"quality": 90} if fmt == "JPEG" else {})))
        blobs = [p.read_bytes() for p in paths]
        decoded = np.stack([read_image(p) for p in paths]).astype(np.float32)
        pixels = np.asarray(resize_images(decoded, run.image_size))
        if fmt == "PNG":  # lossless: the files give back exactly the pixels training used
            np.testing.assert_array_equal(pixels, test_x)
        reference = keras_model.predict(pixels, batch_size=128, verbose=0)
        via_bytes = np.concatenate(
            [
                loaded.signatures["serving_default"](image_bytes=tf.constant(blobs[i : i + 128]))[
                    "probabilities"
                ].numpy()
                for i in range(0, len(blobs), 128)
            ]
        )
        via_pixels = loaded.signatures["predict_pixels"](pixels=tf.constant(pixels))
        assert np.abs(via_bytes - reference).max() <= 1e-5, fmt
        assert np.abs(via_pixels["probabilities"].numpy() - reference).max() <= 1e-5, fmt
        np.testing.assert_array_equal(via_pixels["class_id"].numpy(), reference.argmax(-1))
        np.testing.assert_allclose(via_pixels["score"].numpy(), reference.max(-1), atol=1e-6)
        labels = [v.decode() for v in via_pixels["label"].numpy()]
        assert labels == [run.labels[i] for i in reference.argmax(-1)]
        np.testing.assert_allclose(run.predict_proba(pixels), reference, atol=1e-5)


def test_other_formats_are_converted_to_rgb(digits_models, loaded):
    """Gray, RGBA and palette PNGs, BMP and (animated) GIF decode like Pillow's convert('RGB')."""
    import tensorflow as tf
    from PIL import Image

    from kerascls.data.preprocess import resize_images

    rng = np.random.default_rng(0)
    rgb = (rng.random((11, 13, 3)) * 255).astype(np.uint8)
    frames = [Image.fromarray(rgb).convert("P"), Image.fromarray(255 - rgb).convert("P")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    blobs = [
        png_bytes(rgb[..., 0]),
        png_bytes(np.dstack([rgb, rgb[..., :1]])),
        encode(np.asarray(Image.fromarray(rgb).convert("P").convert("RGB")), "PNG"),
        encode(rgb, "BMP"),
        gif.getvalue(),
    ]
    expected = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as im:
            expected.append(np.asarray(im.convert("RGB"), dtype=np.float32))
    size = digits_models[0].image_size
    pixels = np.concatenate([np.asarray(resize_images(e[None], size)) for e in expected])
    reference = digits_models[0].deployable().predict(pixels, verbose=0)
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(blobs))["probabilities"]
    assert np.abs(got.numpy() - reference).max() <= 1e-5


@pytest.mark.parametrize(
    "case",
    ["not_an_image", "truncated_png", "zero_size_png", "png_bomb", "png_huge_header", "empty"],
)
def test_bad_images_fail_in_the_graph_with_invalid_argument(loaded, case):
    """The SavedModel itself refuses bad bytes (what the real TF Serving answers with 400)."""
    import tensorflow as tf

    good = png_bytes((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    data = {
        "not_an_image": b"this is not an image",
        "truncated_png": good[: len(good) // 2],
        "zero_size_png": png_zero_size(),
        "png_bomb": png_bomb(),
        "png_huge_header": png_header_only(0xFFFFFFFF, 0xFFFFFFFF),
        "empty": b"",
    }[case]
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        loaded.signatures["serving_default"](image_bytes=tf.constant([data]))
    if case.startswith("png_"):
        assert "image too large" in err.value.message


def test_explicit_version_is_never_overwritten(digits_models):
    from kerascls.errors import UserError
    from kerascls.export.saved_model import export_saved_model

    run, models_dir, _, _ = digits_models
    with pytest.raises(UserError, match="already exists"):
        export_saved_model(run, run.path, models_dir=models_dir, version=1)
    with pytest.raises(UserError, match="positive integer"):
        export_saved_model(run, run.path, models_dir=models_dir, version=0)


def test_export_cli_writes_a_version(digits_models, tmp_path, capsys):
    from kerascls.export.__main__ import main

    run = digits_models[0]
    code = main(
        [str(run.path), "--formats", "saved_model", "--models-dir", str(tmp_path), "--no-report"]
    )
    assert code == 0
    version = tmp_path / run.metadata["model_name"] / "1"
    assert capsys.readouterr().out.strip().endswith(str(version))
    assert (version / "saved_model.pb").is_file()
    assert main([str(tmp_path / "missing-run"), "--formats", "saved_model"]) == 2
