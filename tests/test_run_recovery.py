"""Runs and exports: nothing lost, nothing half-done.

A run killed during export is finished (not retrained) by the same command; a corrupt resume
state falls back to the previous epoch's copy; a corrupt model file is named; evaluations with
a variant (TTA, MC-dropout, another sample count) are written beside ``metrics.json``.
"""

from __future__ import annotations

import json
import shutil

import pytest

from kerascls.errors import UserError

FLAGS = ["--dataset", "digits", "--model", "lenet", "--image-size", "16", "--verbose", "0"]


def _train(root, *flags):
    from kerascls.config import make_parser, resolve
    from kerascls.train import train

    cfg = resolve(make_parser("train", "").parse_args(
        [*FLAGS, "--output-dir", str(root), *flags]))
    return train(cfg)


def test_resumed_run_finishes_its_export_instead_of_retraining(tmp_path, capsys):
    flags = ["--epochs", "1", "--formats", "tflite-float32,tflite-dynamic"]
    run_dir = _train(tmp_path, *flags)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "complete"
    history = (run_dir / "history.csv").read_text()
    # a kill during the export phase: training and evaluation done, one file missing, staging
    # leftovers of the killed export in the model base path and the tflite folder
    meta["status"] = "evaluated"
    (run_dir / "metadata.json").write_text(json.dumps(meta))
    (run_dir / "tflite" / "lenet-dynamic.tflite").unlink()
    stale_dir = run_dir / "models" / "lenet" / ".export-abc123"
    stale_dir.mkdir(parents=True)
    stale_file = run_dir / "tflite" / ".lenet-dynamic.tflite.x1y2.tflite"
    stale_file.write_bytes(b"partial")
    kept = (run_dir / "tflite" / "lenet-float32.tflite").stat().st_mtime_ns
    capsys.readouterr()

    again = _train(tmp_path, *flags)
    out = capsys.readouterr().out
    assert again == run_dir, "the unfinished run is finished in place, not trained as -2"
    assert "training finished earlier" in out
    assert (run_dir / "history.csv").read_text() == history, "nothing was retrained"
    assert (run_dir / "tflite" / "lenet-dynamic.tflite").is_file()
    assert (run_dir / "tflite" / "lenet-float32.tflite").stat().st_mtime_ns == kept
    assert not stale_dir.exists() and not stale_file.exists()
    assert json.loads((run_dir / "metadata.json").read_text())["status"] == "complete"
    report = json.loads((run_dir / "export_report.json").read_text())
    assert len(report["rows"]) >= 3  # keras + both files, the kept one included
    # a complete run is never touched again: the same command makes a new run
    assert _train(tmp_path, "--epochs", "1", "--formats", "") == tmp_path / "lenet-digits-2"


def test_corrupt_resume_state_falls_back_to_the_previous_copy(tmp_path, capsys, monkeypatch):
    import kerascls.training.callbacks as callbacks

    real = callbacks.nan_stop

    def interrupting(base):
        cb = real(base)
        begin = cb.on_epoch_begin

        def stop(epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt
            begin(epoch, logs)

        cb.on_epoch_begin = stop
        return cb

    monkeypatch.setattr(callbacks, "nan_stop", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "--epochs", "3", "--formats", "")
    monkeypatch.setattr(callbacks, "nan_stop", real)
    backup = tmp_path / "lenet-digits" / "backup"
    assert (backup / "latest.weights.h5.bkp").is_file()
    (backup / "latest.weights.h5").write_bytes(b"not an hdf5 file")
    capsys.readouterr()

    run_dir = _train(tmp_path, "--epochs", "3", "--formats", "")
    err = capsys.readouterr().err
    assert run_dir == tmp_path / "lenet-digits"
    assert "latest.weights.h5 is corrupt; resuming from the previous epoch's copy" in err
    rows = (run_dir / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 3 + 1 and [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]


def test_corrupt_model_file_is_named(digits_run, tmp_path, capsys):
    from kerascls.evaluate import main
    from kerascls.runs import load_run

    run_dir = tmp_path / "run"
    shutil.copytree(digits_run, run_dir)
    (run_dir / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="model.keras is corrupt or not a Keras model file"):
        load_run(run_dir).predictor  # noqa: B018
    assert main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run_dir / 'model.keras'} is corrupt" in err[0]


def test_tta_is_written_beside_the_runs_metrics(digits_run, tmp_path):
    from kerascls.evaluate import main

    run_dir = tmp_path / "run"
    shutil.copytree(digits_run, run_dir)
    before = (run_dir / "metrics.json").read_text()
    assert main([str(run_dir), "--tta", "2"]) == 0
    assert (run_dir / "metrics.json").read_text() == before
    tta = json.loads((run_dir / "metrics-tta2.json").read_text())
    assert tta["tta"] == 2 and tta["file"] == "metrics-tta2.json"
    assert (run_dir / "confusion_matrix-tta2.png").is_file()
    assert main([str(run_dir), "--mc-dropout", "--mc-samples", "3"]) == 2  # no dropout: refused
    assert (run_dir / "metrics.json").read_text() == before
