"""The Bayesian CNN on kerascls' Keras 3 Flipout layers, through the engine seam, end to end.

On the tensorflow backend ``--bnn-impl keras`` trains the Keras 3 twin of the TFP model; on jax
and torch it is what ``bnn_cnn`` is. Every artifact carries the uncertainty: the SavedModel's
Monte Carlo signature (``entropy``, ``mutual_information``) and the TFLite posterior ensemble.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FORMATS = "saved_model,tflite-float32,tflite-int8"  # the training default


@pytest.fixture(scope="module")
def keras_bnn_run(tmp_path_factory):
    from kerascls.config import make_parser, resolve
    from kerascls.train import train

    root = tmp_path_factory.mktemp("bnn_keras")
    cfg = resolve(make_parser("train", "").parse_args([
        "--model", "bnn_cnn", "--bnn-impl", "keras", "--image-size", "16", "--epochs", "3",
        "--mc-samples", "8", "--ensemble-members", "4", "--verbose", "0",
        "--output-dir", str(root)]))
    return train(cfg)


def test_manifest_and_monte_carlo_metrics(keras_bnn_run):
    from kerascls.runs import load_run

    meta = json.loads((keras_bnn_run / "metadata.json").read_text())
    assert meta["engine"] == "keras" and meta["backend"] == "tensorflow"
    assert (keras_bnn_run / "model.keras").is_file()
    assert not (keras_bnn_run / "bnn.weights.h5").exists()
    metrics = json.loads((keras_bnn_run / "metrics.json").read_text())
    assert metrics["prediction"] == "monte_carlo" and metrics["accuracy"] > 0.5
    assert metrics["uncertainty"]["mean_predictive_entropy"] >= \
        metrics["uncertainty"]["mean_mutual_information"] >= 0
    run = load_run(keras_bnn_run)
    assert run.is_bayesian and run.predictor.mc_samples == 8
    x = run.dataset().x_test[:5]
    mc = run.predictor.predict_mc(x, 4)
    assert mc.shape == (4, 5, 10) and np.abs(mc[0] - mc[1]).max() > 0


def test_ood_report_on_the_keras_bnn(keras_bnn_run):
    from kerascls.evaluate import evaluate_run
    from kerascls.runs import load_run

    metrics = evaluate_run(load_run(keras_bnn_run), ood="noise")
    aurocs = metrics["ood"]["auroc"]
    assert {"max_softmax", "entropy", "mutual_information"} <= set(aurocs)
    assert all(0.0 <= v <= 1.0 for v in aurocs.values())


def test_saved_model_signature_samples_in_the_graph(keras_bnn_run):
    import tensorflow as tf

    from kerascls.runs import load_run

    versions = sorted((keras_bnn_run / "models").glob("*/*"))
    assert versions, "the default formats export a SavedModel"
    fn = tf.saved_model.load(str(versions[-1])).signatures["predict_pixels"]
    x = load_run(keras_bnn_run).dataset().x_test[:6]
    out = {k: v.numpy() for k, v in fn(pixels=tf.constant(x)).items()}
    assert {"probabilities", "entropy", "mutual_information"} <= set(out)
    assert (out["entropy"] >= out["mutual_information"] - 1e-6).all()
    again = fn(pixels=tf.constant(x))["probabilities"].numpy()
    assert np.abs(again - out["probabilities"]).max() > 0  # fresh samples per request


def test_tflite_posterior_ensemble_builtin_ops(keras_bnn_run):
    from kerascls.export.montecarlo import ensemble_predict
    from kerascls.runs import load_run

    tflite = keras_bnn_run / "tflite"
    for variant in ("float32", "int8"):
        sidecar = json.loads((tflite / f"bnn_cnn-{variant}.json").read_text())
        assert sidecar["ensemble_members"] == 4
        assert {o["role"] for o in sidecar["outputs"]} == {
            "probabilities", "std", "member_probabilities"}
    run = load_run(keras_bnn_run)
    x = run.dataset().x_test[:40]
    out = ensemble_predict(tflite / "bnn_cnn-float32.tflite", x)
    assert out["member_probabilities"].shape == (40, 4, 10)
    np.testing.assert_allclose(out["probabilities"], out["member_probabilities"].mean(1),
                               atol=1e-5)
    agree = (out["probabilities"].argmax(1) == run.predict_proba(x).argmax(1)).mean()
    assert agree >= 0.8, agree


@pytest.mark.backends
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_bnn_trains_evaluates_and_exports_on_backend(backend, tmp_path):
    """The README's default command with ``--model bnn_cnn`` on jax and torch: default formats."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    proc = subprocess.run(
        [sys.executable, "-m", "kerascls.train", "--model", "bnn_cnn", "--image-size", "16",
         "--epochs", "1", "--mc-samples", "4", "--ensemble-members", "2", "--verbose", "0",
         "--output-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "bnn_cnn-digits"
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["engine"] == "keras" and meta["backend"] == backend
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["prediction"] == "monte_carlo" and "mutual_information" in str(metrics)
    assert (run_dir / "tflite" / "bnn_cnn-int8.tflite").is_file()
    assert sorted((run_dir / "models").glob("*/*/saved_model.pb"))
    report = json.loads((run_dir / "export_report.json").read_text())
    assert report
