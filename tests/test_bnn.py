"""The Bayesian CNN: building, the ELBO's KL term, saving, Monte Carlo prediction, the SavedModel
and TFLite exports (agreement with the Keras Monte Carlo estimates), evaluation and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kerascls import build_model, get_spec, list_models
from kerascls.errors import UserError
from kerascls.engines import tfp as B
from kerascls.export import montecarlo as MC

REPO = Path(__file__).resolve().parents[1]
MC_SAMPLES = 20  # the fixture run's eval.mc_samples: what the SavedModel draws
MEMBERS = 16


def build_tfp(name, input_shape, num_classes, **overrides):
    """The TFP (tf_keras) twin of ``build_model(name, ...)``."""
    return B.build_from_spec({"model_name": name, "input_shape": list(input_shape),
                              "num_classes": num_classes, "overrides": overrides})


def _images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def _train(root, *flags):
    from kerascls.config import make_parser, resolve
    from kerascls.train import train

    cfg = resolve(make_parser("train", "").parse_args(
        ["--output-dir", str(root), "--verbose", "0", *flags]))
    return train(cfg)


@pytest.fixture(scope="module")
def bnn_run(tmp_path_factory):
    """bnn_cnn on the sentiment images at 16x16, through the real training entry point."""
    root = tmp_path_factory.mktemp("bnn")
    return _train(root, "--dataset", "sentiment", "--model", "bnn_cnn", "--image-size", "16",
                  "--epochs", "4", "--mc-samples", str(MC_SAMPLES), "--formats", "")


@pytest.fixture(scope="module")
def fixed_images(bnn_run):
    """Eight fixed test images of the run (both classes), float32 0..255."""
    from kerascls.runs import load_run

    splits = load_run(bnn_run).dataset()
    order = np.argsort(splits.y_test, kind="stable")
    return splits.x_test[order[np.linspace(0, len(order) - 1, 8).astype(int)]]


def _estimator_spread(predictor, x, n, reps=40):
    """Mean and standard deviation over ``reps`` repetitions of the ``n``-sample estimates."""
    from kerascls.uncertainty import MCPrediction

    big = predictor.predict_mc(x, n * reps)
    preds = [MCPrediction.from_samples(big[i * n:(i + 1) * n]) for i in range(reps)]
    out = {}
    for key, attr in (("probabilities", "mean"), ("std", "std"),
                      ("entropy", "predictive_entropy"),
                      ("mutual_information", "mutual_information")):
        values = np.stack([getattr(p, attr) for p in preds])
        out[key] = (values.mean(axis=0), values.std(axis=0))
    return out


def _within_sampling_error(got, reference, key, sigmas=5.0, floor=2e-3):
    mean, spread = reference[key]
    np.testing.assert_array_less(np.abs(np.asarray(got) - mean), sigmas * spread + floor,
                                 err_msg=f"{key} outside {sigmas} standard errors")


# --------------------------------------------------------------------------------------------
# building


def test_registered_with_both_engines_tfp_first():
    assert {"bnn_mlp", "bnn_cnn"} <= set(list_models("bnn*"))
    for name in ("bnn_mlp", "bnn_cnn"):
        spec = get_spec(name)
        assert spec.engines == ("tfp", "keras") and spec.family == "bayesian"
        assert "Flipout" in spec.paper


def test_tfp_and_tf_keras_live_in_one_module():
    pattern = re.compile(r"^\s*(import|from)\s+(tensorflow_probability|tf_keras)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "kerascls").rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == [str(Path("kerascls") / "engines" / "tfp.py")]


@pytest.mark.parametrize("name,size", [("bnn_mlp", 8), ("bnn_cnn", 16)])
def test_build_and_forward(name, size):
    model = build_tfp(name, (size, size, 3), 3, normalize="unit", num_train_examples=50)
    assert type(model).__module__.startswith("tf_keras")
    assert model.layers[0].name == "pixels" and model.get_layer("normalize") is not None
    assert model.layers[-1].name == "predictions"
    probs = np.asarray(model(_images(4, size)))
    assert probs.shape == (4, 3) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_trunk_option_and_bad_arguments():
    flip = build_tfp("bnn_cnn", (16, 16, 3), 2, trunk="flipout")
    det = build_tfp("bnn_cnn", (16, 16, 3), 2, trunk="deterministic")
    assert type(flip.get_layer("conv1")).__name__ == "Conv2DFlipout"
    assert type(det.get_layer("conv1")).__name__ == "Conv2D"
    assert len(B.variational_layers(flip)) == 5 and len(B.variational_layers(det)) == 3
    with pytest.raises(UserError, match="--bnn-trunk must be one of flipout, deterministic"):
        build_tfp("bnn_cnn", (16, 16, 3), 2, trunk="bayes")
    with pytest.raises(UserError, match="bnn_mlp has no convolutions"):
        build_tfp("bnn_mlp", (8, 8, 3), 2, trunk="deterministic")
    with pytest.raises(UserError, match="--prior-scale must be positive"):
        build_tfp("bnn_cnn", (16, 16, 3), 2, prior_scale=0.0)
    with pytest.raises(ValueError, match="normalize must be one of"):
        build_tfp("bnn_cnn", (16, 16, 3), 2, normalize="zscore")


def test_kl_term_uses_prior_scale_and_is_divided_by_num_train_examples():
    import tensorflow as tf

    sigma, n = 0.5, 40
    model = build_tfp("bnn_mlp", (4, 4, 3), 2, prior_scale=sigma, num_train_examples=n)
    expected = 0.0
    for layer in B.variational_layers(model):
        d = layer.kernel_posterior.distribution
        mu, s = d.loc.numpy().astype(np.float64), d.scale.numpy().astype(np.float64)
        # KL(N(mu, s^2) || N(0, sigma^2)), summed over the weights
        expected += np.sum(np.log(sigma / s) + (s ** 2 + mu ** 2) / (2 * sigma ** 2) - 0.5)
    assert B.kl_per_example(model) == pytest.approx(expected / n, rel=1e-4)
    # the term the model adds to the cross-entropy during training: loss = -ELBO / N
    model(_images(2, 4))
    assert float(tf.add_n(model.losses)) == pytest.approx(expected / n, rel=1e-4)


def test_save_load_round_trip(tmp_path):
    spec = {"model_name": "bnn_cnn", "input_shape": [16, 16, 3], "num_classes": 3,
            "overrides": {"normalize": "unit", "prior_scale": 0.7, "num_train_examples": 30,
                          "trunk": "flipout"}}
    model = B.build_from_spec(spec)
    B.save_model(model, tmp_path, spec)
    loaded, spec2 = B.load_model(tmp_path)
    assert spec2 == spec
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert B.kl_per_example(loaded) == pytest.approx(B.kl_per_example(model), rel=1e-6)
    x = _images(6, 16)
    mean_net = B.posterior_ensemble(model, 1, sample=False)
    mean_net2 = B.posterior_ensemble(loaded, 1, sample=False)
    np.testing.assert_allclose(np.asarray(mean_net(x)), np.asarray(mean_net2(x)), atol=1e-7)
    with pytest.raises(UserError, match="holds no Bayesian model"):
        B.load_model(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# training, the run directory, Monte Carlo prediction


def test_run_directory_and_metrics(bnn_run):
    names = {p.name for p in bnn_run.iterdir()}
    for f in ("bnn.json", "bnn.weights.h5", "config.yaml", "metadata.json", "history.csv",
              "training_curves.png", "metrics.json", "reliability.png", "confusion_matrix.png"):
        assert f in names, f
    assert "backup" not in names
    meta = json.loads((bnn_run / "metadata.json").read_text())
    assert meta["engine"] == "tfp" and meta["temperature"] == 1.0
    assert len((bnn_run / "history.csv").read_text().strip().splitlines()) == 4 + 1
    metrics = json.loads((bnn_run / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.9 and metrics["prediction"] == "monte_carlo"
    assert metrics["ece_bins"] == 15 and 0 <= metrics["ece"] <= 1 and metrics["nll"] > 0
    u = metrics["uncertainty"]
    assert u["mc_samples"] == MC_SAMPLES
    assert u["mean_predictive_entropy"] >= u["mean_mutual_information"] >= 0
    spec = json.loads((bnn_run / "bnn.json").read_text())
    assert spec["overrides"]["num_train_examples"] == meta["num_train_examples"]
    assert spec["overrides"]["prior_scale"] == 1.0


def test_predictor_monte_carlo(bnn_run, fixed_images):
    from kerascls.runs import load_run

    run = load_run(bnn_run)
    predictor = run.predictor
    assert isinstance(predictor, B.BayesianPredictor) and predictor.mc_samples == MC_SAMPLES
    mc = predictor.predict_mc(fixed_images, 7)
    assert mc.shape == (7, len(fixed_images), 2) and mc.dtype == np.float32
    np.testing.assert_allclose(mc.sum(axis=-1), 1.0, atol=1e-5)
    assert np.abs(mc[0] - mc[1]).max() > 0  # fresh weights each pass
    probs = run.predict_proba(fixed_images)
    assert probs.shape == (len(fixed_images), 2)
    pred = predictor.predict_uncertainty(fixed_images, 9)
    assert pred.samples == 9 and pred.mutual_information.shape == (len(fixed_images),)
    with pytest.raises(UserError, match="--mc-samples must be a positive integer"):
        predictor.predict_mc(fixed_images, 0)


def test_resume_after_interruption(tmp_path, monkeypatch):
    from kerascls.config import Config
    from kerascls.data import load_dataset

    cfg = Config()
    cfg.model.model = "bnn_mlp"
    cfg.train.epochs = 2
    cfg.train.verbose = 0
    splits = load_dataset("sentiment", 8, num_examples=60)
    real = B.nan_stop

    def interrupting(base):
        cb = real(base)

        def stop(epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

        cb.on_epoch_begin = stop
        return cb

    monkeypatch.setattr(B, "nan_stop", interrupting)
    with pytest.raises(KeyboardInterrupt):
        B.fit_run(cfg, splits, tmp_path)
    assert B.backup_epochs(tmp_path / "backup") == 1
    monkeypatch.setattr(B, "nan_stop", real)
    history = B.fit_run(cfg, splits, tmp_path)
    assert len(history["loss"]) == 2 and len(history["val_loss"]) == 2
    assert not (tmp_path / "backup").exists()
    assert B.load_predictor(tmp_path).predict_mc(splits.x_test[:2], 2).shape == (2, 2, 2)


# --------------------------------------------------------------------------------------------
# exports agree with the Keras Monte Carlo estimates


def test_saved_model_draws_samples_in_the_graph(bnn_run, fixed_images, tmp_path):
    import tensorflow as tf

    from kerascls.export.saved_model import export_saved_model
    from kerascls.runs import load_run

    run = load_run(bnn_run)
    version = export_saved_model(run, tmp_path)[0]
    loaded = tf.saved_model.load(str(version))
    fn = loaded.signatures["predict_pixels"]
    out = {k: v.numpy() for k, v in fn(pixels=tf.constant(fixed_images)).items()}
    assert {"probabilities", "label", "score", "entropy", "mutual_information"} <= set(out)
    again = fn(pixels=tf.constant(fixed_images))["probabilities"].numpy()
    assert np.abs(again - out["probabilities"]).max() > 0  # sampled anew per request
    reference = _estimator_spread(run.predictor, fixed_images, MC_SAMPLES)
    for key in ("probabilities", "entropy", "mutual_information"):
        _within_sampling_error(out[key], reference, key)


def test_tflite_ensemble_agrees_and_uses_builtin_ops(bnn_run, fixed_images, tmp_path):
    from tensorflow.lite.tools import flatbuffer_utils

    from kerascls.runs import load_run

    run = load_run(bnn_run)
    path, sidecar = run.engine.export_tflite(run, tmp_path, "tflite-float32", members=MEMBERS)
    assert path.name == "bnn_cnn-float32.tflite" and sidecar.name == "bnn_cnn-float32.json"
    meta = json.loads(sidecar.read_text())
    assert meta["ensemble_members"] == MEMBERS and meta["labels"] == run.labels
    roles = {o["role"]: o for o in meta["outputs"]}
    assert set(roles) == {"probabilities", "std", "member_probabilities"}
    assert roles["member_probabilities"]["shape"][1:] == [MEMBERS, 2]
    fb = flatbuffer_utils.read_model(str(path))
    ops = {flatbuffer_utils.opcode_to_name(fb, op.opcodeIndex)
           for g in fb.subgraphs for op in g.operators}
    assert not any(o.startswith(("CUSTOM", "FLEX")) or "RANDOM" in o for o in ops), ops

    got = MC.ensemble_predict(path, fixed_images)
    # exact: the file computes what the tf_keras ensemble of the same posterior draws computes
    module = MC.ensemble_module(B.posterior_ensemble(run.model, MEMBERS, MC.ENSEMBLE_SEED))
    exact = module.serve(fixed_images)
    for key in ("probabilities", "std", "member_probabilities"):
        np.testing.assert_allclose(got[key], exact[key].numpy(), atol=2e-5)
    # statistical: K posterior samples estimate the Keras Monte Carlo mean and spread
    reference = _estimator_spread(run.predictor, fixed_images, MEMBERS)
    _within_sampling_error(got["probabilities"], reference, "probabilities")
    _within_sampling_error(got["std"], reference, "std")


def test_edge_runner_reports_mean_and_spread(bnn_run, fixed_images, tmp_path):
    from PIL import Image

    from kerascls.runs import load_run

    run = load_run(bnn_run)
    path, _ = run.engine.export_tflite(run, tmp_path, "tflite-float32", members=4)
    png = tmp_path / "image.png"
    Image.fromarray(np.round(fixed_images[0]).astype(np.uint8)).save(png)
    proc = subprocess.run([sys.executable, str(REPO / "edge" / "run_tflite.py"), str(path),
                           str(png), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["members"] == 4 and 0 <= result["member_std"] <= 0.5
    got = MC.ensemble_predict(path, np.round(fixed_images[:1]))
    assert result["score"] == pytest.approx(float(got["probabilities"].max()), abs=1e-4)


def test_tflite_int8_ensemble(bnn_run, tmp_path):
    from kerascls.runs import load_run

    run = load_run(bnn_run)
    path, sidecar = run.engine.export_tflite(run, tmp_path, "tflite-int8", members=3,
                                    representative_size=100)
    meta = json.loads(sidecar.read_text())
    assert meta["input_dtype"] == "uint8"
    assert meta["input_quantization"] == {"scale": 1.0, "zero_point": 0}
    assert meta["representative"]["agreement_with_float_ensemble"] >= 0.9


def test_raw_flipout_model_is_not_tflite_convertible():
    """Why the ensemble exists: Flipout's random ops are not TFLite builtins."""
    import tensorflow as tf

    model = build_tfp("bnn_mlp", (4, 4, 3), 2)
    fn = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([1, 4, 4, 3])])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()],
                                                                model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with pytest.raises(Exception, match="Random"):
        converter.convert()


def test_tflite_refusals(bnn_run, tmp_path):
    from kerascls.runs import load_run

    run = load_run(bnn_run)
    with pytest.raises(UserError, match="exports as tflite-float32"):
        run.engine.export_tflite(run, tmp_path, "tflite-int4")
    with pytest.raises(UserError, match="takes no option representative_size"):
        run.engine.export_tflite(run, tmp_path, "tflite-float32", representative_size=100)
    with pytest.raises(UserError, match="takes no option colour"):
        run.engine.export_tflite(run, tmp_path, "tflite-float16", colour="red")
    with pytest.raises(UserError, match="ensemble members must be a positive integer"):
        run.engine.export_tflite(run, tmp_path, "tflite-float32", members=0)


def test_export_cli_ensemble_members(bnn_run, digits_run, tmp_path, capsys):
    import shutil

    from kerascls.export.__main__ import main

    run_dir = tmp_path / "bnn"
    shutil.copytree(bnn_run, run_dir)
    assert main([str(run_dir), "--formats", "tflite-float32", "--ensemble-members", "3",
                 "--no-report"]) == 0
    sidecar = json.loads((run_dir / "tflite" / "bnn_cnn-float32.json").read_text())
    assert sidecar["ensemble_members"] == 3
    capsys.readouterr()
    err = _one_line_error(capsys, main([str(run_dir), "--formats", "tflite-float32",
                                        "--ensemble-members", "1", "--no-report"]))
    assert "--ensemble-members must be an integer of at least 2. Received: 1" in err
    err = _one_line_error(capsys, main([str(digits_run), "--formats", "tflite-float32",
                                        "--ensemble-members", "3", "--no-report"]))
    assert "--ensemble-members applies to Bayesian runs" in err


# --------------------------------------------------------------------------------------------
# evaluation: OOD, MC-dropout, temperature


def test_ood_report_for_the_bnn(bnn_run, tmp_path):
    from kerascls.evaluate import evaluate_run
    from kerascls.runs import load_run

    metrics = evaluate_run(load_run(bnn_run), ood="noise", mc_samples=5, out_dir=tmp_path)
    ood = metrics["ood"]
    assert ood["dataset"] == "noise" and ood["num_out"] == metrics["num_examples"]
    assert set(ood["auroc"]) == {"max_softmax", "entropy", "mutual_information"}
    assert all(0.0 <= v <= 1.0 for v in ood["auroc"].values())
    assert (tmp_path / "ood_noise.png").is_file() and (tmp_path / "reliability.png").is_file()


def test_mc_dropout_and_temperature(digits_run, tmp_path):
    import keras

    from kerascls.evaluate import evaluate_run, mc_dropout_model
    from kerascls.runs import load_run

    run = load_run(digits_run)
    cal = run.metadata["calibration"]
    assert run.metadata["temperature"] == pytest.approx(cal["temperature"])
    assert cal["split"] == "val" and cal["nll_after"] <= cal["nll_before"] + 1e-9
    plain = json.loads((digits_run / "metrics.json").read_text())
    assert plain["prediction"] == "deterministic" and "uncertainty" not in plain
    assert plain["temperature"] == pytest.approx(run.temperature)
    assert ("uncalibrated" in plain) == (abs(run.temperature - 1.0) > 1e-9)
    with pytest.raises(UserError, match="--mc-dropout needs a model with dropout layers"):
        evaluate_run(run, mc_dropout=True, out_dir=tmp_path)

    dropout_model = build_model("lenet", (16, 16, 3), 10, normalize="unit", dropout=0.5)
    mc_model = mc_dropout_model(dropout_model)
    x = _images(3, 16)
    assert np.abs(np.asarray(mc_model(x)) - np.asarray(mc_model(x))).max() > 0
    np.testing.assert_array_equal(np.asarray(dropout_model(x)), np.asarray(dropout_model(x)))
    assert all(a is b for a, b in zip(dropout_model.weights, mc_model.weights))
    assert isinstance(mc_model, keras.Model)

    from kerascls.engines.keras import KerasPredictor

    # an untrained dropout model in the run's place
    run.__dict__["predictor"] = KerasPredictor(dropout_model, run.temperature, 4)
    m = evaluate_run(run, mc_dropout=True, mc_samples=4, ood="sentiment", out_dir=tmp_path)
    assert m["prediction"] == "mc_dropout" and m["uncertainty"]["mc_samples"] == 4
    assert "mutual_information" in m["ood"]["auroc"]


# --------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit


def _one_line_error(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_evaluate_bad_input(bnn_run, capsys):
    from kerascls.evaluate import main

    err = _one_line_error(capsys, main([str(bnn_run), "--mc-samples", "0"]))
    assert "--mc-samples must be a positive integer. Received: 0" in err
    err = _one_line_error(capsys, main([str(bnn_run), "--ood", "folder:/no/such/images"]))
    assert "dataset folder not found: /no/such/images" in err
    err = _one_line_error(capsys, main([str(bnn_run), "--ood", "nosie"]))
    assert "Did you mean: noise?" in err
    err = _one_line_error(capsys, main([str(bnn_run), "--mc-dropout"]))
    assert "--mc-dropout applies to deterministic models" in err


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_tfp_impl_on_another_backend_is_refused(backend, tmp_path, capsys, monkeypatch):
    import keras

    from kerascls.train import main

    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    code = main(["--model", "bnn_cnn", "--bnn-impl", "tfp", "--epochs", "1", "--image-size",
                 "16", "--output-dir", str(tmp_path)])
    err = _one_line_error(capsys, code)
    assert (f"--bnn-impl tfp needs the tensorflow Keras backend (TFP's Flipout layers are "
            f"tf_keras layers); received KERAS_BACKEND={backend}") in err
    assert list(tmp_path.iterdir()) == [], "a refused run left a run directory behind"


def test_bnn_impl_refused_for_a_deterministic_model(tmp_path, capsys):
    from kerascls.train import main

    err = _one_line_error(capsys, main(["--model", "lenet", "--bnn-impl", "keras",
                                        "--output-dir", str(tmp_path)]))
    assert "--bnn-impl keras applies to Bayesian models" in err
    err = _one_line_error(capsys, main(["--model", "bnn_cnn", "--prior-scale", "-1",
                                        "--output-dir", str(tmp_path)]))
    assert "--prior-scale must be positive. Received: -1.0" in err
    assert list(tmp_path.iterdir()) == []


def test_train_cli_rejects_zero_mc_samples(tmp_path, capsys):
    from kerascls.train import main

    err = _one_line_error(capsys, main(["--model", "bnn_cnn", "--mc-samples", "0",
                                        "--output-dir", str(tmp_path)]))
    assert "--mc-samples must be a positive integer" in err


# --------------------------------------------------------------------------------------------
# the notebook


@pytest.mark.notebooks
def test_notebook_runs_with_a_small_budget(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "bnn_uncertainty.ipynb", as_version=4)
    index = [i for i, c in enumerate(nb.cells)
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(index) == 1 and 'BUDGET = "full"' in nb.cells[index[0]].source
    # like papermill: a cell after the parameters overrides them
    nb.cells.insert(index[0] + 1, nbformat.v4.new_code_cell(
        f'BUDGET = "ci"\nOUT = {str(tmp_path / "runs")!r}',
        metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_committed_notebook_holds_the_outputs_of_a_full_run():
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / "bnn_uncertainty.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'BUDGET = "full"' in params[0].source
    counts = [c.execution_count for c in cells]
    assert all(counts) and counts == sorted(counts), "run top to bottom in one kernel"
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
    text = "".join(o.get("text", "") for o in outputs)
    assert "OOD AUROC" in text and "mutual_information" in text
    for c in cells:  # the library holds the logic
        assert not any(line.startswith(("def ", "class ")) for line in c.source.splitlines())


def test_tfp_run_loaded_on_another_backend_is_refused(bnn_run, monkeypatch):
    import keras

    from kerascls.runs import load_run

    run = load_run(bnn_run)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(UserError, match="bnn_cnn needs the tensorflow Keras backend; received "
                                        "KERAS_BACKEND=jax"):
        run.predictor  # noqa: B018 - loading is what is refused
