"""kerascls.compare: the table matches its sources, it resumes, and bad input is one line."""

from __future__ import annotations

import json

import pytest

MODELS = ("seed_cnn", "lenet", "small_cnn")


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """Three small models on digits at 16x16, one epoch each."""
    from kerascls.compare import compare

    out = tmp_path_factory.mktemp("compare")
    result = compare(",".join(MODELS), "digits", epochs=1, image_size=16, batch_size=64,
                     out_dir=out, verbose=0)
    return out, result


def test_table_and_plots_are_written(comparison):
    from kerascls.compare import COLUMNS, read_csv_table

    out, result = comparison
    rows = read_csv_table(out / "comparison.csv")
    assert [r["model"] for r in rows] == list(MODELS)
    md = (out / "comparison.md").read_text().splitlines()
    assert len(md) == 2 + len(MODELS)
    assert md[0].count("|") == len(COLUMNS) + 1
    for name in MODELS:
        assert any(line.startswith(f"| {name} |") for line in md)
    for png in ("accuracy_vs_latency.png", "sizes.png", "training_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in rows:
        for key, _, _ in COLUMNS:
            assert r[key] not in ("", None), (r["model"], key)
        assert r["params"] > 0 and r["macs"] > 0
        assert 0.0 <= r["ece"] <= 1.0
        assert r["tflite_int8_bytes"] < r["tflite_float32_bytes"]
        assert r["image_size"] == 16 and r["epochs"] == 1


def test_table_values_match_the_files_they_came_from(comparison):
    from kerascls.compare import read_csv_table
    from kerascls.runs import load_run
    from kerascls.shapes import count_macs

    out, _ = comparison
    for r in read_csv_table(out / "comparison.csv"):
        run_dir = out / "runs" / r["model"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        meta = json.loads((run_dir / "metadata.json").read_text())
        assert r["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-12)
        assert r["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-12)
        assert r["keras_ms"] == pytest.approx(metrics["latency_ms_per_image"], abs=1e-9)
        assert r["train_seconds"] == pytest.approx(meta["train_seconds"])
        for variant in ("float32", "int8"):
            tfl = run_dir / "tflite" / f"{r['model']}-{variant}.tflite"
            assert r[f"tflite_{variant}_bytes"] == tfl.stat().st_size
            assert 0.0 <= r[f"tflite_{variant}_accuracy"] <= 1.0
            assert r[f"tflite_{variant}_ms"] > 0
        # float32 TFLite is the Keras model: the same test accuracy up to rare near-ties
        assert abs(r["tflite_float32_accuracy"] - r["accuracy"]) <= 0.01
        model = load_run(run_dir).model
        assert r["params"] == model.count_params()
        assert r["macs"] == count_macs(model)
    # the markdown shows the same numbers, rounded
    md = (out / "comparison.md").read_text()
    for r in read_csv_table(out / "comparison.csv"):
        assert f"{r['accuracy']:.4f}" in md
        assert f"{r['tflite_int8_bytes'] / 1024:.1f}" in md


def test_interrupted_comparison_resumes_without_training_again(comparison, monkeypatch, capsys):
    import kerascls.train
    from kerascls.compare import compare, read_csv_table

    out, first = comparison
    before = read_csv_table(out / "comparison.csv")
    # interrupted after lenet's training, before its int8 export and its row
    (out / "rows" / "lenet.json").unlink()
    (out / "runs" / "lenet" / "tflite" / "lenet-int8.tflite").unlink()

    def no_training(cfg):
        raise AssertionError(f"{cfg.model.model} was trained again")

    monkeypatch.setattr(kerascls.train, "train", no_training)
    again = compare(",".join(MODELS), "digits", epochs=1, image_size=16, batch_size=64,
                    out_dir=out, verbose=0)
    log = capsys.readouterr().out
    assert "seed_cnn: finished earlier, kept" in log
    assert "small_cnn: finished earlier, kept" in log
    assert "lenet: evaluating and exporting" in log
    assert (out / "runs" / "lenet" / "tflite" / "lenet-int8.tflite").is_file()
    after = read_csv_table(out / "comparison.csv")
    for b, a in zip(before, after):
        assert a["accuracy"] == b["accuracy"] and a["params"] == b["params"]
        assert a["tflite_float32_bytes"] == b["tflite_float32_bytes"]
    assert [r["model"] for r in again["rows"]] == list(MODELS)


def test_existing_run_directory_is_compared_as_it_is(digits_run, tmp_path, monkeypatch):
    import shutil

    import kerascls.train
    from kerascls.compare import compare

    run_dir = tmp_path / "my-lenet"
    shutil.copytree(digits_run, run_dir)
    monkeypatch.setattr(kerascls.train, "train", lambda cfg: pytest.fail("trained"))
    result = compare(str(run_dir), "digits", epochs=1, out_dir=tmp_path / "cmp", verbose=0)
    (row,) = result["rows"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert row["model"] == "my-lenet" and row["model_name"] == "lenet"
    assert row["accuracy"] == metrics["accuracy"]
    tfl = run_dir / "tflite" / "lenet-float32.tflite"
    assert row["tflite_float32_bytes"] == tfl.stat().st_size


def test_pareto_front():
    from kerascls.compare import pareto_front

    points = [(1.0, 0.5), (2.0, 0.9), (0.5, 0.4), (3.0, 0.8), (2.5, 0.95)]
    assert pareto_front(points) == [2, 0, 1, 4]
    assert pareto_front([]) == []


def _one_line_error(capsys, rc, needle):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert needle in err, err


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    from kerascls.compare import main

    _one_line_error(capsys, main(["--models", "lenet,resnet2O", "--out", str(tmp_path)]),
                    "unknown model 'resnet2O'. Did you mean:")
    no_model = tmp_path / "half_run"
    no_model.mkdir()
    (no_model / "metadata.json").write_text(json.dumps({"model_name": "lenet", "labels": ["a"]}))
    _one_line_error(capsys, main(["--models", f"lenet,{no_model}", "--out", str(tmp_path)]),
                    "has no model")
    _one_line_error(capsys, main(["--models", str(tmp_path / "gone"), "--out", str(tmp_path)]),
                    "run directory not found")
    _one_line_error(capsys, main(["--models", "lenet,lenet", "--out", str(tmp_path)]), "twice")
    _one_line_error(capsys, main(["--models", "lenet", "--epochs", "0"]), "--epochs")
    _one_line_error(capsys, main(["--models", "lenet", "--image-size", "8",
                                  "--out", str(tmp_path)]), "too small for lenet")
    _one_line_error(capsys, main(["--models", " , "]), "--models is empty")
    assert not (tmp_path / "runs").exists()
