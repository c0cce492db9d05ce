import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerascls.data.preprocess import read_image, resize_numpy
from kerascls.runs import load_run
from kerascls.train import main

REPO = Path(__file__).resolve().parents[1]


def test_run_directory_contents(digits_run):
    names = {p.name for p in digits_run.iterdir()}
    for f in ("config.yaml", "metadata.json", "model.keras", "history.csv", "training_curves.png",
              "metrics.json", "confusion_matrix.png", "roc.png", "logs"):
        assert f in names, f
    assert "backup" not in names
    meta = json.loads((digits_run / "metadata.json").read_text())
    assert meta["labels"] == [str(i) for i in range(10)]
    assert meta["input_shape"] == [16, 16, 3] and meta["normalize"] == "unit"
    assert {"kerascls", "keras", "tensorflow"} <= set(meta["versions"])
    assert meta["metrics"]["accuracy"] > 0.9
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert set(metrics["per_class"]) == set(meta["labels"])
    assert metrics["roc_auc"] > 0.95
    assert np.asarray(metrics["confusion_matrix"]).sum() == metrics["num_examples"]


def test_sentiment_lab_example(sentiment_run, tmp_path):
    run = load_run(sentiment_run)
    assert run.metadata["metrics"]["accuracy"] == 1.0
    png = tmp_path / "bright.png"
    Image.fromarray(np.tile(np.array([230, 204, 178], np.uint8), (8, 8, 1))).save(png)
    x = resize_numpy(read_image(png)[None], run.image_size)
    probs = run.predict_proba(x)[0]
    assert run.labels[int(probs.argmax())] == "positive"
    assert probs.max() > 0.9


def _cli(*args, env=None, **kw):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "kerascls.train", *args], cwd=REPO, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_sigkill_then_resume_after_last_finished_epoch(tmp_path):
    args = ["--dataset", "digits", "--model", "seed_cnn", "--image-size", "8", "--epochs", "5",
            "--formats", "", "--output-dir", str(tmp_path), "--verbose", "2"]
    proc = _cli(*args)
    backup_meta = tmp_path / "seed_cnn-digits" / "backup" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if backup_meta.is_file() and json.loads(backup_meta.read_text() or "{}").get("epoch", 0) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed:\n" + proc.stdout.read())
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(backup_meta.read_text())["epoch"]
    assert 2 <= done < 5
    out, _ = _cli(*args).communicate(timeout=300)
    assert f"Resuming {tmp_path / 'seed_cnn-digits'} after epoch {done}/5" in out
    assert f"Epoch {done + 1}/5" in out and "Epoch 1/5" not in out
    rows = (tmp_path / "seed_cnn-digits" / "history.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3", "4"]
    assert (tmp_path / "seed_cnn-digits" / "metadata.json").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["--model", "lenett"], "unknown model 'lenett'. Did you mean: lenet"),
    (["--dataset", "digitz"], "unknown dataset 'digitz'"),
    (["--dataset", "folder:/no/such/dir"], "dataset folder not found: /no/such/dir"),
    (["--model", "lenet", "--image-size", "8"], "too small for lenet"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--epochs", "-1"], "--epochs must be a positive integer"),
])
def test_bad_input_is_one_line(argv, needle, capsys, tmp_path):
    code = main([*argv, "--output-dir", str(tmp_path), "--formats", ""])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_empty_folder_dataset_is_one_line(capsys, tmp_path):
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
    code = main(["--dataset", f"folder:{tmp_path / 'data'}", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no readable images" in err


def test_nan_loss_stops_with_message(capsys, tmp_path):
    code = main(["--dataset", "sentiment", "--model", "seed_cnn", "--epochs", "2",
                 "--learning-rate", "1e30", "--optimizer", "sgd", "--output-dir", str(tmp_path),
                 "--formats", "", "--verbose", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "loss became NaN" in err


def test_evaluate_cli_and_tta(digits_run, capsys):
    from kerascls.evaluate import main as evaluate_main

    assert evaluate_main([str(digits_run), "--tta", "3", "--out", str(digits_run / "eval_tta")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "ROC-AUC" in out
    m = json.loads((digits_run / "eval_tta" / "metrics.json").read_text())
    assert m["tta"] == 3 and m["accuracy"] > 0.85
    assert evaluate_main(["/no/such/run"]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_eda_reports_lab_statistics(tmp_path, capsys):
    from kerascls.eda import main as eda_main

    assert eda_main(["--dataset", "sentiment", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eda.json").read_text())
    assert report["channels"]["red"]["label_correlation"] > 0.95
    assert (tmp_path / "sample_grid.png").is_file() and (tmp_path / "channel_histograms.png").is_file()


@pytest.mark.slow
def test_default_run_reaches_97_percent_on_digits(tmp_path):
    from kerascls.config import make_parser, resolve
    from kerascls.train import train

    cfg = resolve(make_parser("t", "").parse_args(
        ["--output-dir", str(tmp_path), "--verbose", "0", "--formats", ""]))
    run = train(cfg)
    assert json.loads((run / "metadata.json").read_text())["metrics"]["accuracy"] >= 0.97


def test_per_epoch_recalibration_only_where_the_moving_averages_lag():
    import keras

    from kerascls.training.batchnorm import moving_averages_lag

    def model(momentum):
        inputs = keras.Input((4, 4, 3))
        return keras.Model(inputs, keras.layers.BatchNormalization(momentum=momentum)(inputs))

    assert moving_averages_lag(model(0.9), 18)        # the digits: 18 steps an epoch
    assert not moving_averages_lag(model(0.9), 399)   # Fashion-MNIST at batch 128
    assert moving_averages_lag(model(0.999), 399)     # an architecture's own momentum
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert not moving_averages_lag(dense, 1)          # no batch norm, nothing to re-estimate


def test_batch_norm_recalibration_averages_the_batch_statistics():
    import keras

    from kerascls.training.batchnorm import batch_norm_layers, recalibrate_batch_norm

    rng = np.random.default_rng(0)
    x = rng.normal(50.0, 20.0, size=(96, 4, 4, 3)).astype("float32")
    inputs = keras.Input((4, 4, 3))
    inner = keras.Sequential([keras.layers.BatchNormalization(momentum=0.999)], name="inner")
    model = keras.Model(inputs, inner(keras.layers.Dropout(0.0)(inputs)))
    bn = batch_norm_layers(model)
    assert len(bn) == 1 and bn[0].name in {layer.name for layer in inner.layers}
    used = recalibrate_batch_norm(model, x, batch_size=32, max_batches=10, seed=1)
    assert used == 3 and bn[0].momentum == 0.999
    batches = x[np.random.default_rng(1).permutation(96)].reshape(3, 32, 4, 4, 3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn[0].moving_mean),
                               x.mean(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn[0].moving_variance),
                               batches.var(axis=(1, 2, 3)).mean(axis=0), rtol=1e-3)
