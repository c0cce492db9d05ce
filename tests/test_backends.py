"""Every Keras backend end to end: train -> evaluate -> export -> serve -> edge, and bad backends.

``test_backend_end_to_end`` runs once per backend, each command in its own process with
``KERAS_BACKEND`` set (Keras fixes its backend per process): ``python -m kerascls.train`` with the
default export formats, ``evaluate`` of that run on the next backend (a ``.keras`` file is
backend-neutral), ``explain`` (gradients through the backend's own autodiff, checked against
TensorFlow's in this process), the SavedModel served over REST by
``python -m kerascls.serving.server``, and the int8 file run by ``edge/run_tflite.py``.
"""

from __future__ import annotations

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

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")


def _env(backend: str) -> dict:
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
            "JAX_PLATFORMS": "cpu"}


def _cli(backend: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(backend),
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, (f"{' '.join(args[:3])} on {backend} exited "
                                  f"{proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(path)
    return path


def _serve_and_predict(model_base: Path, image_png: bytes) -> list[float]:
    """Start the local server on ``model_base``, predict one PNG over REST, stop it."""
    from kerascls.serving.client import ServingClient

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kerascls.serving.server",
                             f"--port={_free_port()}",
                             f"--rest_api_port={port}", "--model_name=clf",
                             f"--model_base_path={model_base}"], cwd=REPO,
                            env=_env("tensorflow"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        client = ServingClient("clf", port=port, timeout=5)
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read())
            try:
                client.status()
                break
            except Exception:  # noqa: BLE001 - still starting
                assert time.monotonic() < deadline, "server did not come up in 180 s"
                time.sleep(0.5)
        return list(client.predict([image_png])[0].probabilities)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def _int8_probabilities(path: Path, image: np.ndarray) -> np.ndarray:
    """The int8 file's probabilities for one uint8 image, straight from the TFLite runtime."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(inp["index"], image[None].astype(np.uint8))
    it.invoke()
    scale, zero = out["quantization"]
    return (it.get_tensor(out["index"]).astype(np.float32)[0] - zero) * scale


@pytest.mark.backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_end_to_end(backend, tmp_path):
    from kerascls.explain import Explainer
    from kerascls.runs import load_run

    _cli(backend, "-m", "kerascls.train", "--dataset", "digits", "--model", "lenet",
         "--image-size", "16", "--epochs", "2", "--augment", "flip", "--output-dir", str(tmp_path),
         "--verbose", "0")
    run_dir = tmp_path / "lenet-digits"
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["backend"] == backend
    assert meta["metrics"]["accuracy"] > 0.3

    # the default formats, checked against the model as the training backend computes it
    report = json.loads((run_dir / "export_report.json").read_text())
    assert report["backend"] == backend
    rows = {r["artifact"]: r for r in report["rows"]}
    assert set(rows) == {"keras", "saved_model", "tflite-float32", "tflite-int8"}
    for name in ("saved_model", "tflite-float32"):
        assert rows[name]["top1_agreement"] == 1.0, (name, rows[name])
        assert rows[name]["max_abs_prob_diff"] <= 1e-5, (name, rows[name])
    assert rows["tflite-int8"]["top1_agreement"] >= 0.8
    assert all(r["latency"]["1"]["p50_ms"] > 0 for r in rows.values())
    for variant in ("float32", "int8"):
        sidecar = json.loads((run_dir / "tflite" / f"lenet-{variant}.json").read_text())
        assert sidecar["labels"] == meta["labels"] and sidecar["input_size"] == [16, 16]
    served = json.loads((run_dir / "models" / "lenet" / "1" / "assets" / "metadata.json")
                        .read_text())
    assert served["backend"] == backend

    # a run trained on one backend loads on another
    other = BACKENDS[(BACKENDS.index(backend) + 1) % len(BACKENDS)]
    _cli(other, "-m", "kerascls.evaluate", str(run_dir), "--out", str(tmp_path / "eval"),
         "--ood", "noise")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert abs(metrics["accuracy"] - meta["metrics"]["accuracy"]) < 1e-9
    # the feature-density score reads the classifier's input on that backend too
    ood = metrics["ood"]
    assert ood["feature_density"]["dim"] == 84 and ood["feature_density"]["fitted_on"] > 1000
    assert 0.0 <= ood["auroc"]["feature_density"] <= 1.0

    run = load_run(run_dir)
    splits = run.dataset()
    image = np.clip(np.round(splits.x_test[0]), 0, 255)
    png = _png(tmp_path / "digit.png", image)

    # explain: the backend's gradients equal TensorFlow's
    _cli(backend, "-m", "kerascls.explain", str(run_dir), str(png), "--samples", "2",
         "--out", str(tmp_path / "explain"))
    here = Explainer(run.model)
    x = image[None].astype(np.float32)
    for method, ours in (("saliency", here.saliency(x)[0]), ("gradcam", here.gradcam(x)[0])):
        theirs = np.load(tmp_path / "explain" / f"digit.{method}.npy")
        np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-5 * float(ours.max()))
    assert (tmp_path / "explain" / "digit.smoothgrad.png").is_file()

    # the SavedModel over REST, and the int8 file on the edge runner
    reference = run.predict_proba(x)[0]
    probs = _serve_and_predict(run_dir / "models" / "lenet", png.read_bytes())
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    int8 = run_dir / "tflite" / "lenet-int8.tflite"
    edge = _cli(backend, str(REPO / "edge" / "run_tflite.py"), str(int8), str(png), "--json")
    answer = json.loads(edge.stdout.strip().splitlines()[-1])
    expected = _int8_probabilities(int8, image)
    assert answer["label"] == run.labels[int(expected.argmax())], answer
    assert abs(answer["score"] - float(expected.max())) < 1e-6, (answer, expected)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_unknown_backend_is_refused_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kerascls.train", "--epochs", "1",
                           "--output-dir", str(tmp_path)], cwd=REPO, env=_env("jaxx"),
                          capture_output=True, text=True, timeout=300, check=False)
    line = _one_line(proc)
    assert "KERAS_BACKEND must be one of tensorflow, jax, torch. Received: jaxx" in line
    assert not any(tmp_path.iterdir())


def test_backend_without_its_package_is_refused_in_one_line(tmp_path):
    # As if JAX were not installed: a None entry in sys.modules makes "import jax" fail.
    code = ("import sys; sys.modules['jax'] = None; from kerascls.evaluate import main; "
            f"sys.exit(main([{str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env("jax"),
                          capture_output=True, text=True, timeout=300, check=False)
    line = _one_line(proc)
    assert "KERAS_BACKEND=jax needs the jax package" in line
    assert "pip install 'kerascls[jax]'" in line


def test_option_the_backend_lacks_is_refused_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kerascls.train", "--strategy", "mirrored",
                           "--output-dir", str(tmp_path)], cwd=REPO, env=_env("torch"),
                          capture_output=True, text=True, timeout=300, check=False)
    line = _one_line(proc)
    assert "--strategy mirrored does not run on the torch backend" in line
    assert "(tensorflow)" in line
    assert not any(tmp_path.iterdir())
