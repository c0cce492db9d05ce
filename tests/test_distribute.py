"""Scaling out: strategies, devices, mixed precision, TF_CONFIG and the learning-rate rule.

The training tests run ``python -m kerascls.train`` in subprocesses: logical CPU devices and
``MultiWorkerMirroredStrategy`` can only be configured before TensorFlow starts its runtime.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kerascls.config import TrainConfig
from kerascls.distribute import Cluster, _check_options, parse_tf_config
from kerascls.training.schedule import lr_factor
from kerascls.errors import UserError
from kerascls.train import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = ["--dataset", "digits", "--model", "lenet", "--image-size", "16", "--formats", "",
          "--verbose", "2"]
# Per-epoch losses of a mirrored run and a single-device run may differ by float summation
# order only; 1% relative is ten times the largest difference seen over 3 epochs.
TRAJECTORY_RTOL = 1e-2


def _cli(*args, env=None):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    e.pop("TF_CONFIG", None)
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "kerascls.train", *args], cwd=REPO, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs, timeout=300):
    """Wait for every process; kill all of them if one hangs."""
    outs, deadline = [], time.time() + timeout
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1, deadline - time.time()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("training did not finish in time")
    return outs


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tf_configs(n):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(n)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            for i in range(n)]


def _history(run_dir: Path) -> dict[str, list[float]]:
    with (run_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


def _weights(run_dir: Path):
    import keras

    return keras.saving.load_model(run_dir / "model.keras", compile=False).get_weights()


def _backup_epoch(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "backup" / "training_metadata.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def _kill_after_epoch(procs, run_dir: Path, epoch: int, timeout=300):
    """SIGKILL every process once ``run_dir`` has backed up ``epoch`` finished epochs."""
    deadline = time.time() + timeout
    while _backup_epoch(run_dir) < epoch and time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            pytest.fail("training ended before it could be killed:\n" + procs[0].stdout.read())
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()


# -- the learning-rate rule and TF_CONFIG ---------------------------------------------------------
@pytest.mark.parametrize("rule, batch, expected", [
    ("linear", 256, 4.0), ("linear", 32, 0.5), ("sqrt", 256, 2.0), ("none", 256, 1.0),
    ("linear", 64, 1.0),
])
def test_lr_rule(rule, batch, expected):
    assert lr_factor(TrainConfig(batch_size=batch, lr_scaling=rule, lr_base_batch=64)) == expected


def test_optimizer_uses_the_scaled_rate():
    from kerascls.config import Config
    from kerascls.training.schedule import make_optimizer

    cfg = Config()
    cfg.train.batch_size, cfg.train.schedule = 256, "constant"
    assert float(make_optimizer(cfg, 10).learning_rate) == pytest.approx(0.008)
    cfg.train.lr_scaling = "none"
    assert float(make_optimizer(cfg, 10).learning_rate) == pytest.approx(0.002)


def test_tf_config_roles():
    cluster = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}
    first = parse_tf_config(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    second = parse_tf_config(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert first.num_workers == 2 and first.is_chief and not second.is_chief
    assert second.task == "worker:1"
    with_chief = Cluster({"chief": ["c:1"], "worker": ["w:1"]}, "worker", 0)
    assert with_chief.num_workers == 2 and not with_chief.is_chief


@pytest.mark.parametrize("raw, needle", [
    (None, "--strategy multiworker needs the TF_CONFIG environment variable"),
    ("{oops", "TF_CONFIG is not valid JSON"),
    ("[1, 2]", "TF_CONFIG must be a JSON object"),
    ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG needs a 'task' object"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG needs a 'cluster' object"),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
     "cluster.worker must be a non-empty list"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     "cluster.worker[0] must be a 'host:port' string"),
    ('{"cluster": {"worker": ["a:70000"]}, "task": {"type": "worker", "index": 0}}',
     "port in 1..65535"),
    ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}',
     "lists a:1 twice"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "task.index must be an integer in 0..1"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     "task.type must be one of the cluster's jobs"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
     "parameter servers"),
])
def test_bad_tf_config_is_one_line(raw, needle):
    with pytest.raises(UserError) as info:
        parse_tf_config(raw)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("backend, strategy, needle", [
    ("tensorflow", "data-parallel", "--strategy data-parallel does not run on the tensorflow"),
    ("jax", "mirrored", "--strategy mirrored does not run on the jax backend"),
    ("jax", "multiworker", "on jax use one of none, data-parallel"),
    ("torch", "data-parallel", "(it is for data-parallel (jax))"),
])
def test_strategy_must_fit_the_backend(backend, strategy, needle):
    with pytest.raises(UserError) as info:
        _check_options(TrainConfig(strategy=strategy), backend)
    assert needle in str(info.value)


# -- one-line errors from the entry point ---------------------------------------------------------
@pytest.mark.parametrize("argv, tf_config, needle", [
    (["--strategy", "multiworker"], None, "needs the TF_CONFIG environment variable"),
    (["--strategy", "multiworker"], '{"cluster": ', "TF_CONFIG is not valid JSON"),
    (["--strategy", "data-parallel"], None, "does not run on the tensorflow backend"),
    (["--device", "gpu"], None, "--device gpu: TensorFlow sees no GPU"),
    (["--strategy", "mirrored"], None, "found no GPU to mirror over; add --cpu-devices N"),
    (["--cpu-devices", "2"], None, "it has no use with --strategy none"),
    (["--strategy", "mirrored", "--cpu-devices", "2", "--device", "gpu"], None,
     "contradicts --device gpu"),
    (["--model", "bnn_cnn", "--strategy", "mirrored", "--cpu-devices", "2"], None,
     "not available for the Bayesian model bnn_cnn"),
    (["--lr-base-batch", "0"], None, "--lr-base-batch must be a positive integer"),
    (["--mixed-precision", "fp8"], None, "--mixed-precision must be one of off, mixed_float16"),
    (["--strategy", "ring"], None, "--strategy must be one of none, mirrored, multiworker"),
])
def test_bad_scaling_input_is_one_line(argv, tf_config, needle, monkeypatch, capsys, tmp_path):
    import tensorflow as tf

    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [] if kind == "GPU" else real(kind))
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    code = main([*argv, "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())


@pytest.mark.distributed
def test_cli_refuses_instead_of_hanging(tmp_path):
    procs = [_cli("--strategy", "multiworker", "--output-dir", str(tmp_path)),
             _cli("--device", "gpu", "--output-dir", str(tmp_path),
                  env={"CUDA_VISIBLE_DEVICES": ""})]
    outs = _finish(procs, timeout=180)
    assert [p.returncode for p in procs] == [2, 2]
    for out, needle in zip(outs, ("needs the TF_CONFIG", "--device gpu: TensorFlow sees no GPU")):
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0] and out.strip().endswith(errors[0])
        assert "Traceback" not in out


# -- training under strategies --------------------------------------------------------------------
@pytest.mark.distributed
def test_mirrored_on_two_cpu_devices_follows_the_single_device_trajectory(tmp_path):
    single, mirrored = tmp_path / "single", tmp_path / "mirrored"
    procs = [_cli(*DIGITS, "--epochs", "3", "--output-dir", str(single)),
             _cli(*DIGITS, "--epochs", "3", "--output-dir", str(mirrored),
                  "--strategy", "mirrored", "--cpu-devices", "2")]
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs
    a, b = _history(single / "lenet-digits"), _history(mirrored / "lenet-digits")
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(b[key], a[key], rtol=TRAJECTORY_RTOL, err_msg=key)
    assert a["loss"][0] - a["loss"][-1] > 50 * TRAJECTORY_RTOL * a["loss"][-1]  # it did learn
    meta_a = json.loads((single / "lenet-digits" / "metadata.json").read_text())
    meta_b = json.loads((mirrored / "lenet-digits" / "metadata.json").read_text())
    assert meta_a["replicas"] == 1 and len(meta_a["devices"]) == 1
    assert meta_b["replicas"] == 2
    assert [d.rsplit("/", 1)[-1] for d in meta_b["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert meta_b["distribution"]["per_replica_batch_size"] == 32
    assert meta_b["distribution"]["strategy"] == "mirrored"


@pytest.mark.distributed
def test_two_workers_on_localhost_end_with_identical_weights(tmp_path):
    configs = _tf_configs(2)
    procs = [_cli(*DIGITS, "--epochs", "1", "--output-dir", str(tmp_path), "--run-name", "mw",
                  "--strategy", "multiworker", env={"TF_CONFIG": c}) for c in configs]
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs
    chief, worker = tmp_path / "mw", tmp_path / "mw.worker-1"
    for a, b in zip(_weights(chief), _weights(worker)):
        np.testing.assert_array_equal(a, b)
    assert _history(chief) == _history(worker)
    meta = json.loads((worker / "metadata.json").read_text())
    assert meta["replicas"] == 2 and meta["distribution"]["workers"] == 2
    assert meta["distribution"]["task"] == "worker:1"


@pytest.mark.distributed
def test_killed_workers_resume_together(tmp_path):
    """Both workers are killed after epoch 2 of 3. A kill can land between the two workers'
    backups: the chief is set back to its previous backup as if it had been, and the worker
    that is ahead must step back to the same epoch; both then finish with identical weights."""
    args = [*DIGITS, "--epochs", "3", "--output-dir", str(tmp_path), "--run-name", "mw",
            "--strategy", "multiworker"]
    chief, worker = tmp_path / "mw", tmp_path / "mw.worker-1"
    configs = _tf_configs(2)
    procs = [_cli(*args, env={"TF_CONFIG": c}) for c in configs]
    _kill_after_epoch(procs, chief, 2)
    c, w = _backup_epoch(chief), _backup_epoch(worker)
    assert c >= 2 and abs(c - w) <= 1, (c, w)
    if c == w:
        backup = chief / "backup"
        for name in ("latest.weights.h5", "training_metadata.json"):
            (backup / f"{name}.bkp").replace(backup / name)
        c -= 1
    procs = [_cli(*args, env={"TF_CONFIG": cf}) for cf in configs]
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs
    ahead = 1 if w > c else 0
    assert (f"worker:{ahead} was at epoch {max(c, w)}, ahead of the other workers; it resumes "
            f"after epoch {min(c, w)}") in outs[ahead]
    for a, b in zip(_weights(chief), _weights(worker)):
        np.testing.assert_array_equal(a, b)
    assert _history(chief) == _history(worker) and len(_history(chief)["loss"]) == 3
    assert not (chief / "backup").exists() and not (worker / "backup").exists()


@pytest.mark.distributed
def test_mirrored_and_data_parallel_runs_resume(tmp_path):
    mirrored, jax_dp = tmp_path / "mirrored", tmp_path / "jax"
    runs = [
        ([*DIGITS, "--epochs", "2", "--output-dir", str(mirrored), "--strategy", "mirrored",
          "--cpu-devices", "2"], {}),
        ([*DIGITS, "--epochs", "2", "--output-dir", str(jax_dp), "--strategy", "data-parallel",
          "--cpu-devices", "2"], {"KERAS_BACKEND": "jax"}),
    ]
    dirs = [mirrored / "lenet-digits", jax_dp / "lenet-digits"]
    procs = [_cli(*a, env=e) for a, e in runs]
    deadline = time.time() + 240
    pending = dict(enumerate(procs))
    while pending and time.time() < deadline:  # kill each run after its first finished epoch
        for i, p in list(pending.items()):
            if _backup_epoch(dirs[i]) >= 1 or p.poll() is not None:
                p.send_signal(signal.SIGKILL)
                p.wait()
                del pending[i]
        time.sleep(0.05)
    done = [_backup_epoch(d) for d in dirs]
    assert done == [1, 1], done
    procs = [_cli(*a, env=e) for a, e in runs]
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs
    for out, run, epochs in zip(outs, dirs, done):
        assert f"Resuming {run} after epoch {epochs}/2" in out
        assert len(_history(run)["loss"]) == 2
        meta = json.loads((run / "metadata.json").read_text())
        assert meta["replicas"] == 2 and meta["metrics"]["accuracy"] > 0.3
    assert json.loads((dirs[1] / "metadata.json").read_text())["backend"] == "jax"


@pytest.mark.distributed
def test_mixed_bfloat16_matches_float32_and_saves_float32(digits_run, tmp_path):
    """bfloat16 on the CPU: finite loss, test accuracy within 2 points of the float32 run
    (``digits_run`` is the same configuration in float32), and a float32 model.keras."""
    import keras

    from kerascls.config import make_parser, resolve
    from kerascls.runs import load_run
    from kerascls.train import train

    cfg = resolve(make_parser("t", "").parse_args(
        ["--dataset", "digits", "--model", "lenet", "--image-size", "16", "--epochs", "15",
         "--formats", "tflite-float32", "--output-dir", str(tmp_path), "--verbose", "0",
         "--mixed-precision", "mixed_bfloat16"]))
    run_dir = train(cfg)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    history = _history(run_dir)
    assert all(np.isfinite(history["loss"])) and all(np.isfinite(history["val_loss"]))
    bf16 = json.loads((run_dir / "metadata.json").read_text())
    f32 = json.loads((digits_run / "metadata.json").read_text())
    assert bf16["distribution"]["mixed_precision"] == "mixed_bfloat16"
    assert abs(bf16["metrics"]["accuracy"] - f32["metrics"]["accuracy"]) <= 0.02
    run = load_run(run_dir)
    assert {layer.dtype_policy.name for layer in run.model.layers} == {"float32"}
    x = run.dataset().x_test[:8]
    assert run.predict_proba(x).dtype == np.float32
    from ai_edge_litert.interpreter import Interpreter

    tflite = next((run_dir / "tflite").glob("*.tflite"))
    interpreter = Interpreter(model_path=str(tflite))
    dtypes = {d["dtype"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
    assert dtypes == {np.float32}
