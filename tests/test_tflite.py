"""TFLite export and the export report, on a real digits run (lenet at 32x32).

The run is trained once per session and exported through ``python -m kerascls.export``'s
``main`` in every format; ``tests/test_edge_runner.py`` reuses it through
:func:`exported_digits_run`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kerascls.errors import UserError
from kerascls.export import tflite as T
from kerascls.export.report import compare, to_markdown, tflite_predict

VARIANTS = ("float32", "dynamic", "float16", "int8")
FORMATS = "saved_model," + ",".join(f"tflite-{v}" for v in VARIANTS)
_CACHE: dict[str, Path] = {}


def exported_digits_run(tmp_path_factory) -> Path:
    """lenet on digits at 32x32, exported in every format with its report (once per session)."""
    if "run" not in _CACHE:
        from conftest import train_run

        from kerascls.export.__main__ import main

        root = tmp_path_factory.mktemp("edge-runs")
        run_dir = train_run(root, "--dataset", "digits", "--model", "lenet", "--image-size",
                            "32", "--epochs", "8", "--formats", "")
        assert main([str(run_dir), "--formats", FORMATS]) == 0
        _CACHE["run"] = Path(run_dir)
    return _CACHE["run"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return exported_digits_run(tmp_path_factory)


@pytest.fixture(scope="module")
def run(run_dir):
    from kerascls.runs import load_run

    return load_run(run_dir)


@pytest.fixture(scope="module")
def report(run_dir):
    return json.loads((run_dir / "export_report.json").read_text())


def _row(report, artifact):
    return next(r for r in report["rows"] if r["artifact"] == artifact)


# ---------------------------------------------------------------------------------------------
# artifacts and sidecars


def test_every_variant_has_a_sidecar(run, run_dir):
    for variant in VARIANTS:
        path = run_dir / "tflite" / f"lenet-{variant}.tflite"
        assert path.is_file() and path.read_bytes()[4:8] == b"TFL3"
        side = json.loads(path.with_suffix(".json").read_text())
        assert side["format"] == f"tflite-{variant}"
        assert side["model_name"] == "lenet"
        assert side["labels"] == [str(i) for i in range(10)]
        assert side["input_size"] == [32, 32]
        assert side["resize_method"] == "bilinear"
        assert side["metrics"] == run.metadata["metrics"]
        assert side["normalization"] == "inside the model"
        assert side["outputs"][0]["role"] == "probabilities"
        if variant == "int8":
            assert side["input_dtype"] == "uint8"
            assert side["input_quantization"] == {"scale": 1.0, "zero_point": 0}
            assert side["representative"]["images"] == 300
            assert sum(side["representative"]["per_class"].values()) == 300
        else:
            assert side["input_dtype"] == "float32"
            assert side["input_quantization"] is None


def test_int8_model_takes_raw_uint8_pixels(run_dir):
    it = T.interpreter(run_dir / "tflite" / "lenet-int8.tflite")
    inp = it.get_input_details()[0]
    assert inp["dtype"] == np.uint8 and inp["quantization"] == (1.0, 0)
    assert {o["op_name"] for o in it._get_ops_details()}.isdisjoint({"LOG", "DEQUANTIZE"})


def test_float32_agrees_with_keras_on_the_whole_test_split(run, report):
    row = _row(report, "tflite-float32")
    assert row["top1_agreement"] == 1.0
    assert row["max_abs_prob_diff"] <= 1e-4
    splits = run.dataset()
    probs = tflite_predict(run.path / "tflite" / "lenet-float32.tflite", splits.x_test)
    reference = run.deployable().predict(splits.x_test, verbose=0)
    assert (probs.argmax(1) == reference.argmax(1)).all()
    assert np.abs(probs - reference).max() <= 1e-4


def test_int8_accuracy_and_size(report, run_dir):
    keras_row, int8 = _row(report, "keras"), _row(report, "tflite-int8")
    assert abs(int8["accuracy"] - keras_row["accuracy"]) * 100 <= 1.0
    assert int8["top1_agreement"] >= 0.98
    size8 = (run_dir / "tflite" / "lenet-int8.tflite").stat().st_size
    size32 = (run_dir / "tflite" / "lenet-float32.tflite").stat().st_size
    assert size8 <= 0.3 * size32
    assert int8["size_vs_tflite_float32"] == pytest.approx(size8 / size32, abs=1e-4)


def test_temperature_is_folded_into_the_logits(run):
    x = run.dataset().x_test[:64]
    folded = T.conversion_model(run).predict(x, verbose=0)
    np.testing.assert_allclose(folded, run.deployable().predict(x, verbose=0), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the report


def test_report_has_one_row_per_artifact(report, run_dir):
    names = [r["artifact"] for r in report["rows"]]
    assert names == ["keras", "saved_model"] + [f"tflite-{v}" for v in VARIANTS]
    for row in report["rows"]:
        assert row["size_bytes"] > 0
        assert 0.9 <= row["accuracy"] <= 1.0 and 0.9 <= row["macro_f1"] <= 1.0
        assert 0.0 <= row["mean_abs_prob_diff"] <= row["max_abs_prob_diff"]
        for threads in ("1", "2"):
            lat = row["latency"][threads]
            assert 0 < lat["p50_ms"] <= lat["p90_ms"]
        assert isinstance(row["recall_drops"], list)
    saved = _row(report, "saved_model")
    assert saved["top1_agreement"] == 1.0 and saved["max_abs_prob_diff"] <= 1e-4
    md = (run_dir / "export_report.md").read_text()
    assert md.count("| tflite-") == 4 and "| saved_model |" in md
    assert (run_dir / "export_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recall_drops_are_flagged_loudly():
    labels = ["a", "b", "c"]
    y = np.repeat([0, 1, 2], 20)
    reference = np.eye(3, dtype=np.float32)[y]
    worse = reference.copy()
    worse[20:23] = np.eye(3, dtype=np.float32)[0]  # 3 of 20 "b" images now read as "a"
    from kerascls.metrics import classification_metrics

    ref_metrics = classification_metrics(y, reference, labels)
    row = compare(reference, worse, y, labels, ref_metrics)
    assert [d["class"] for d in row["recall_drops"]] == ["b"]
    assert row["recall_drops"][0]["drop_points"] == pytest.approx(15.0)
    assert row["top1_agreement"] == pytest.approx(57 / 60)
    small = reference.copy()
    small[20] = np.eye(3, dtype=np.float32)[0]  # 5 points exactly: not flagged
    assert compare(reference, small, y, labels, ref_metrics)["recall_drops"] == []
    lat = {"1": {"p50_ms": 1.0, "p90_ms": 2.0}}
    report = {"model_name": "m", "run": "r", "test_examples": 60, "reference": "keras",
              "recall_drop_threshold_points": 5.0,
              "latency": {"batch": 1, "runs": 5, "threads": [1], "what": "invoke"},
              "rows": [{"artifact": "tflite-int8", "size_bytes": 10, "latency": lat, **row}],
              "warnings": ["tflite-int8: recall of class b dropped by 15.0 points"]}
    md = to_markdown(report)
    assert md.index("WARNING") < md.index("| artifact")
    assert "**b (-15.0)**" in md


# ---------------------------------------------------------------------------------------------
# the representative dataset


def _images(n, classes=3, seed=0, size=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    return x, y


def test_representative_sample_is_class_stratified_and_deterministic():
    x, y = _images(1000, classes=4)
    y[:700] = 0  # 70% class 0
    xs, ys = T.representative_sample(x, y, 300)
    assert len(xs) == 300
    counts = np.bincount(ys, minlength=4)
    expected = np.bincount(y, minlength=4) / len(y) * 300
    assert np.all(np.abs(counts - expected) <= 1)
    xs2, _ = T.representative_sample(x, y, 300)
    np.testing.assert_array_equal(xs, xs2)
    xs_all, _ = T.representative_sample(x[:150], y[:150], 300)
    assert len(xs_all) == 150


def test_representative_sample_of_a_small_split_uses_every_image_with_a_warning(capsys):
    x, y = _images(60)
    xs, ys = T.representative_sample(x, y, 300)
    assert len(xs) == 60 and sorted(ys.tolist()) == sorted(y.tolist())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: int8 calibration on all 60 training")


@pytest.mark.parametrize("case, message", [
    ("empty", "training split is empty"),
    ("size_too_small", "representative_size must be at least 100"),
    ("uint8", "must be float32"),
    ("float64", "must be float32"),
    ("above_255", "must lie in 0..255"),
    ("negative", "must lie in 0..255"),
    ("unit_range", "look scaled to 0..1"),
    ("nan", "NaN"),
    ("gray", "shape (N, height, width, 3)"),
])
def test_representative_sample_refuses_bad_images(case, message):
    x, y = _images(400)
    size = 300
    if case == "empty":
        x, y = x[:0], y[:0]
    elif case == "size_too_small":
        size = 20
    elif case == "uint8":
        x = x.astype(np.uint8)
    elif case == "float64":
        x = x.astype(np.float64)
    elif case == "above_255":
        x[3, 0, 0, 0] = 300.0
    elif case == "negative":
        x[3, 0, 0, 0] = -1.0
    elif case == "unit_range":
        x = x / 255.0
    elif case == "nan":
        x[0, 0, 0, 0] = np.nan
    elif case == "gray":
        x = x[..., :1]
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        T.representative_sample(x, y, size)


@pytest.mark.parametrize("first_layer", ["normalization", "rescaling"])
def test_int8_input_is_pinned_to_0_255_when_calibration_images_are_narrower(first_layer):
    """Calibration images in 40..200 still give an input of scale 1, and nothing is lost.

    A Normalization layer becomes SUB and MUL ops; a Rescaling layer is folded into the first
    convolution, whose bias must then be re-expressed at the new input scale.
    """
    import keras

    from kerascls.layers import preprocessing_layer

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="pixels")
    if first_layer == "normalization":
        h = preprocessing_layer("imagenet")(inputs)
    else:
        h = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    h = keras.layers.Conv2D(8, 3, activation="relu")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))
    rng = np.random.default_rng(1)
    calib = rng.uniform(40, 200, (120, 8, 8, 3)).astype(np.float32)  # never 0, never 255
    content = T.convert(model, (8, 8, 3), "int8", calib)
    it = T.interpreter(model_content=content)
    assert it.get_input_details()[0]["quantization"] == (1.0, 0)
    x = np.floor(rng.uniform(40, 200, (64, 8, 8, 3))).astype(np.float32)
    diff = np.abs(T.predict(it, x) - model.predict(x, verbose=0))
    assert diff.mean() < 0.005 and diff.max() < 0.03


def test_constant_int8_output_is_refused():
    reference = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    constant = np.tile(np.float32([0.2, 0.5, 0.3]), (4, 1))
    with pytest.raises(UserError, match="constant output"):
        T._check_not_constant(constant, reference, "int8")
    T._check_not_constant(reference, reference, "int8")


def test_options_a_variant_does_not_take_are_refused(run, tmp_path):
    with pytest.raises(UserError, match="takes no option representative_size"):
        T.export_tflite_float32(run, tmp_path, representative_size=300)
    with pytest.raises(UserError, match="representative_size must be at least"):
        T.export_tflite_int8(run, tmp_path, representative_size=5)
    assert not list(tmp_path.iterdir())


def test_cli_refuses_a_too_small_representative_size_in_one_line(run_dir, capsys):
    from kerascls.export.__main__ import main

    code = main([str(run_dir), "--formats", "tflite-int8", "--representative-size", "10",
                 "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: representative_size must be at least 100 images for a sound int8 "
                   "calibration. Received: 10"]
