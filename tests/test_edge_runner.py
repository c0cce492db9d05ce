"""edge/run_tflite.py: labels against Keras, bad input, isolated environments and arm64 emulation.

The runner runs as a subprocess, the way a Pi runs it. The trained digits run comes from
``tests/test_tflite.py`` (trained and exported once per session). Isolated virtual environments
and the emulated Pi root are cached under ``$KERASCLS_PI_ROOT`` (default ``.pi-root/``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_tflite import exported_digits_run

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "edge" / "run_tflite.py"
EMULATE = REPO / "edge" / "emulate_pi.sh"
PI_ROOT = Path(os.environ.get("KERASCLS_PI_ROOT", REPO / ".pi-root"))
N_IMAGES = 40


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_tflite", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def run_cli(*args, python=sys.executable, env=None, prefix=()):
    cmd = [*prefix] if prefix else [str(python), str(RUNNER)]
    cmd += [str(a) for a in args]
    e = dict(os.environ, **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=300)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def json_lines(proc):
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


# ---------------------------------------------------------------------------------------------
# fixtures: the run, its TFLite files, real test images and the Keras labels for them


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return exported_digits_run(tmp_path_factory)


@pytest.fixture(scope="module")
def models(run_dir):
    return {v: run_dir / "tflite" / f"lenet-{v}.tflite"
            for v in ("float32", "dynamic", "float16", "int8")}


@pytest.fixture(scope="module")
def test_images(run_dir, tmp_path_factory):
    """The first test-split digits as 8x8 RGB PNGs (native size), with the Keras labels.

    Returns ``(folder, files, keras_labels, keras_probs, int8_labels)``: the Keras model sees
    the images resized by training's own ``resize_numpy``; ``int8_labels`` are what the int8
    model gives on those pixels rounded to uint8, the way a device feeds it.
    """
    from kerascls.data import load_dataset
    from kerascls.data.preprocess import resize_numpy
    from kerascls.export.report import tflite_predict
    from kerascls.runs import load_run

    run = load_run(run_dir)
    d = run.config.data
    native = load_dataset("digits", 8, seed=run.config.train.seed, val_fraction=d.val_fraction,
                          test_fraction=d.test_fraction)
    pixels = native.x_test[:N_IMAGES].astype(np.uint8)
    folder = tmp_path_factory.mktemp("digits-png")
    files = []
    for i, img in enumerate(pixels):
        files.append(folder / f"{i:03d}.png")
        Image.fromarray(img).save(files[-1])
    x = resize_numpy(pixels.astype(np.float32), run.image_size)
    probs = run.deployable().predict(x, verbose=0)
    labels = [run.labels[i] for i in probs.argmax(1)]
    int8 = tflite_predict(run_dir / "tflite" / "lenet-int8.tflite", np.floor(x + 0.5))
    return folder, files, labels, probs, [run.labels[i] for i in int8.argmax(1)]


def check_labels(proc, test_images, variant):
    """The runner's JSON output gives the Keras labels (int8: the int8 model's own labels)."""
    folder, files, keras_labels, keras_probs, int8_labels = test_images
    assert proc.returncode == 0, proc.stderr
    results = json_lines(proc)
    assert [Path(r["path"]).name for r in results] == [f.name for f in files]
    labels = [r["label"] for r in results]
    if variant == "float32":
        assert labels == keras_labels
        scores = np.array([r["score"] for r in results])
        np.testing.assert_allclose(scores, keras_probs.max(1), atol=1e-4)
    else:
        if variant == "int8":
            assert labels == int8_labels
        assert np.mean(np.array(labels) == np.array(keras_labels)) >= 0.95


# ---------------------------------------------------------------------------------------------
# the file itself


def test_runner_imports_only_stdlib_numpy_pillow():
    tree = ast.parse(RUNNER.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"numpy", "PIL"}
    assert imported <= allowed, imported - allowed
    assert runner.RUNTIMES == ("ai_edge_litert", "tflite_runtime", "tensorflow")


@pytest.mark.parametrize("src, dst", [((8, 8), (32, 32)), ((50, 37), (32, 32)),
                                      ((100, 120), (32, 32)), ((7, 9), (96, 96)),
                                      ((32, 32), (32, 32))])
def test_resize_matches_training(src, dst):
    from kerascls.data.preprocess import resize_images

    img = np.random.default_rng(sum(src)).integers(0, 256, (*src, 3), dtype=np.uint8)
    ours = runner.resize_bilinear(np, img, *dst)
    theirs = np.asarray(resize_images(img[None].astype(np.float32), dst))[0]
    assert ours.dtype == np.float32 and ours.shape == (*dst, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# classification in this environment


@pytest.mark.parametrize("variant", ["float32", "dynamic", "float16", "int8"])
def test_labels_match_keras(models, test_images, variant):
    proc = run_cli(models[variant], test_images[0], "--json")
    check_labels(proc, test_images, variant)


def test_text_output_top_k_and_benchmark(models, test_images):
    files = test_images[1]
    proc = run_cli(models["int8"], files[0], files[1], "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and proc.stderr == ""
    assert lines[0].startswith(f"{files[0]}: {test_images[4][0]} (")
    assert lines[0].count(",") == 2 and "top-3:" in lines[0]
    many = json_lines(run_cli(models["float32"], files[0], "--json", "--top-k", "50"))
    assert len(many[0]["top_k"]) == 10
    assert abs(sum(t["score"] for t in many[0]["top_k"]) - 1.0) < 1e-4
    bench = run_cli(models["int8"], *files[:4], "--benchmark", "30", "--threads", "2", "--json")
    stats = json_lines(bench)[-1]["benchmark"]
    assert stats["runs"] == 30 and stats["threads"] == 2 and stats["runtime"] == "ai_edge_litert"
    assert 0 < stats["end_to_end_p50_ms"] <= stats["end_to_end_p90_ms"]
    assert 0 < stats["per_image_p50_ms"] <= stats["per_image_p90_ms"]
    assert 0 < stats["invoke_p50_ms"] <= stats["invoke_p90_ms"]
    assert stats["prefetch"] == 4 and stats["throughput_images_per_s"] > 0
    # both times are rounded to 1e-4 ms and a tiny int8 invoke takes ~0.01 ms, so the ratio of the
    # printed figures only brackets the unrounded one
    half = 5e-5
    per_image, invoke = stats["per_image_p50_ms"], stats["invoke_p50_ms"]
    low = (per_image - half) / (invoke + half) - 1
    high = (per_image + half) / max(invoke - half, 1e-9) - 1
    assert low - 1e-4 <= stats["overhead_vs_invoke"] <= high + 1e-4
    text = run_cli(models["int8"], files[0], "--benchmark", "10", "--prefetch", "0")
    assert "benchmark: 10 runs, ai_edge_litert, 1 thread(s): per image in a folder p50" in \
        text.stdout


def test_prefetch_changes_nothing_but_speed(bad_files, models, test_images):
    """Decoding ahead on a thread gives the same results, in the same order, as decoding inline."""
    folder, _ = bad_files
    files = test_images[1]
    runs = {n: run_cli(models["int8"], folder, *files[:6], "--json", "--prefetch", n)
            for n in ("0", "1", "4", "64")}
    for proc in runs.values():
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len({proc.stdout for proc in runs.values()}) == 1
    assert len({proc.stderr for proc in runs.values()}) == 1
    assert len(json_lines(runs["0"])) == 10
    bad = run_cli(models["int8"], files[0], "--prefetch", "-1")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("--prefetch must be an integer >= 0. Received: -1")


def test_tensorflow_lite_is_the_last_fallback(models, test_images):
    proc = run_cli(models["float32"], test_images[1][0], "--json", "--runtime", "tensorflow",
                   env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr
    assert json_lines(proc)[0]["label"] == test_images[2][0]


# ---------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit, never a traceback


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, models):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "good.png")
    Image.fromarray(rgb).save(d / "good.jpg", quality=95)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rgb).convert("L").save(d / "gray.png")
    palette = Image.fromarray(rgb).convert("P")
    palette.save(d / "palette.png", transparency=0)
    Image.fromarray(rgb).convert("RGBA").save(d / "rgba.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(d / "sixteen.png")
    (d / "notes.png").write_text("this is text, not an image\n")
    png = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    model = models["float32"].read_bytes()
    m = tmp_path_factory.mktemp("badmodels")

    def with_sidecar(name, content):
        (m / f"{name}.tflite").write_bytes(content)
        shutil.copy(models["float32"].with_suffix(".json"), m / f"{name}.json")
        return m / f"{name}.tflite"

    scrambled = bytearray(model)
    scrambled[64:4000] = rng.integers(0, 256, 3936, dtype=np.uint8).tobytes()
    files = {
        "truncated_model": with_sidecar("truncated", model[: len(model) // 2]),
        "cut_model": with_sidecar("cut", model[:-2048]),
        "scrambled_model": with_sidecar("scrambled", bytes(scrambled)),
        "not_a_model": with_sidecar("random", rng.integers(0, 256, 5000,
                                                           dtype=np.uint8).tobytes()),
        "empty_model": with_sidecar("empty", b""),
        "no_sidecar": m / "nosidecar.tflite",
        "broken_sidecar": with_sidecar("brokenjson", model),
    }
    files["no_sidecar"].write_bytes(model)
    (m / "brokenjson.json").write_text('{"labels": ["a", ')
    return d, files


@pytest.mark.parametrize("case, fragments", [
    ("truncated_model", ["corrupt or truncated"]),
    ("cut_model", ["corrupt or truncated"]),
    ("scrambled_model", ["corrupt or truncated"]),
    ("not_a_model", ["not a TFLite model"]),
    ("empty_model", ["not a TFLite model"]),
    ("no_sidecar", ["no sidecar nosidecar.json", "--no-sidecar"]),
    ("broken_sidecar", ["is not valid JSON"]),
])
def test_bad_model_or_sidecar(bad_files, case, fragments):
    folder, files = bad_files
    assert_one_line_error(run_cli(files[case], folder / "good.png"), *fragments)


@pytest.mark.parametrize("name, fragments", [
    ("notes.png", ["not an image file"]),
    ("truncated.png", ["truncated or corrupt image"]),
    ("cmyk.jpg", ["CMYK image", "--convert"]),
    ("rgba.png", ["RGBA image"]),
    ("sixteen.png", ["16-bit image"]),
    ("missing.png", ["no such file or directory"]),
])
def test_bad_image(bad_files, models, name, fragments):
    folder, _ = bad_files
    proc = run_cli(models["int8"], folder / name)
    assert_one_line_error(proc, str(folder / name), *fragments)
    assert proc.returncode == 2 and proc.stdout == ""


@pytest.mark.parametrize("name, kind", [("gray.png", "grayscale"), ("palette.png", "palette")])
def test_grayscale_and_palette_images_are_converted_unless_strict(bad_files, models, name, kind):
    folder, _ = bad_files
    converted = run_cli(models["float32"], folder / name, "--json")
    assert converted.returncode == 0 and converted.stderr == "", converted.stderr
    with Image.open(folder / name) as im:
        expected = np.asarray(im.convert("RGB"))
    assert np.array_equal(runner.read_rgb(np, Image, folder / name, False), expected)
    refused = run_cli(models["float32"], folder / name, "--strict")
    assert_one_line_error(refused, f"{kind} image", "run without --strict")
    both = run_cli(models["float32"], folder / name, "--strict", "--convert")
    assert_one_line_error(both, "not allowed with argument")


def test_threads_are_bounded_before_the_runtime_starts(models, test_images):
    proc = run_cli(models["float32"], test_images[1][0], "--threads", "100000")
    assert_one_line_error(proc, f"--threads must be an integer from 1 to {runner.MAX_THREADS}. "
                                "Received: 100000")
    assert proc.returncode == 2


def test_an_image_over_40_megapixels_is_refused_from_its_header(tmp_path, models):
    big = tmp_path / "big.png"
    Image.new("RGB", (7000, 7000)).save(big)  # 49 megapixels: under Pillow's own error limit
    proc = run_cli(models["float32"], big)
    assert_one_line_error(proc, "image of 7000x7000 pixels (49.0 megapixels) is over the "
                                "40-megapixel limit")


def test_emulated_pi_uses_the_systems_apt_sources(tmp_path):
    """The Debian archives come from what apt is configured with, not from the script."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text(
        "#!/bin/sh\n"
        "echo 'http://apt.internal.example/debian/ bookworm'\n"
        "echo 'http://apt.internal.example/debian/ bookworm-updates'\n"
        "echo 'http://apt.internal.example/security/ bookworm-security'\n")
    (fake / "apt-get").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "KERASCLS_PI_ROOT": str(tmp_path / "root")}
    proc = subprocess.run(["bash", str(EMULATE), "mirrors"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["bookworm http://apt.internal.example/debian/",
                                        "bookworm-security http://apt.internal.example/security/"]
    assert "deb.debian.org" not in EMULATE.read_text()
    (fake / "apt-get").write_text("#!/bin/sh\nexit 0\n")  # no Debian source configured
    proc = subprocess.run(["bash", str(EMULATE), "mirrors"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2 and "set KERASCLS_PI_MIRROR" in proc.stderr
    env["KERASCLS_PI_MIRROR"] = "http://mirror.example/debian"
    proc = subprocess.run(["bash", str(EMULATE), "mirrors"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.stdout.splitlines()[0] == "bookworm http://mirror.example/debian"


def test_convert_accepts_what_training_accepts(bad_files, models):
    folder, _ = bad_files
    proc = run_cli(models["float32"], *(folder / n for n in ("cmyk.jpg", "gray.png", "rgba.png",
                                                            "sixteen.png")), "--convert")
    assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 4, proc.stderr


def test_missing_sidecar_falls_back_with_no_sidecar(bad_files):
    folder, files = bad_files
    proc = run_cli(files["no_sidecar"], folder / "good.png", "--no-sidecar", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json_lines(proc)[0]["label"] in [str(i) for i in range(10)]


def test_mixed_directory_reports_bad_files_and_classifies_good_ones(bad_files, models):
    folder, _ = bad_files
    proc = run_cli(models["int8"], folder, "--json")
    assert proc.returncode == 1
    assert sorted(Path(r["path"]).name for r in json_lines(proc)) == [
        "good.jpg", "good.png", "gray.png", "palette.png"]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    bad = {"cmyk.jpg", "rgba.png", "sixteen.png", "notes.png", "truncated.png"}
    assert {Path(ln.split(": ")[1]).name for ln in errors[:-1]} == bad
    assert errors[-1] == "error: 5 of 9 input(s) could not be classified"
    assert "Traceback" not in proc.stderr


def test_unreadable_directory(tmp_path, models, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    Image.new("RGB", (8, 8)).save(locked / "a.png")
    locked.chmod(0)
    try:
        if os.geteuid() != 0:
            assert_one_line_error(run_cli(models["int8"], locked), "directory is not readable")
        else:
            # root reads any directory: make the runner's scandir fail the way it fails for
            # everybody else
            scandir = os.scandir

            def denied(path="."):
                if Path(path) == locked:
                    raise PermissionError(13, "Permission denied", str(path))
                return scandir(path)

            monkeypatch.setattr(runner.os, "scandir", denied)
            assert runner.main([str(models["int8"]), str(locked)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"error: {locked}: directory is not readable (permission denied)"]
    finally:
        locked.chmod(0o755)


def test_no_runtime_gives_an_install_hint(models, test_images):
    code = ("import runpy, sys\n"
            "for name in ('ai_edge_litert', 'tflite_runtime', 'tensorflow'):\n"
            "    sys.modules[name] = None\n"
            f"sys.argv = ['run_tflite.py', {str(models['int8'])!r}, {str(test_images[1][0])!r}]\n"
            f"runpy.run_path({str(RUNNER)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert_one_line_error(proc, "no TFLite runtime found", "pip install ai-edge-litert",
                          "numpy<2")


def test_tflite_runtime_with_numpy_2_is_refused(monkeypatch):
    import types

    monkeypatch.setattr(np, "__version__", "2.1.0")
    fake = types.ModuleType("tflite_runtime")
    fake.__version__ = "2.14.0"
    with pytest.raises(runner.Fatal, match=r"built for NumPy 1.x .* pip install 'numpy<2'"):
        runner.check_tflite_runtime_numpy(fake)
    monkeypatch.setattr(np, "__version__", "1.26.4")
    runner.check_tflite_runtime_numpy(fake)


# ---------------------------------------------------------------------------------------------
# Bayesian ensembles: mean and spread of the members


def test_ensemble_prints_mean_and_spread_of_members(tmp_path, bad_files):
    import keras
    import tensorflow as tf

    from kerascls.export.tflite import tensor_entry, interpreter

    members, classes = 4, 3
    inputs = keras.Input((8, 8, 3), name="pixels")
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    heads = [keras.layers.Dense(classes, activation="softmax", name=f"member{i}")(flat)
             for i in range(members)]
    model = keras.Model(inputs, heads)

    def serve(pixels):
        stacked = tf.stack(model(pixels, training=False), axis=1)
        return {"member_probabilities": stacked, "probabilities": tf.reduce_mean(stacked, 1),
                "std": tf.math.reduce_std(stacked, 1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec((None, 8, 8, 3), tf.float32, "pixels")])
    archive.write_out(str(tmp_path / "sm"), verbose=False)
    content = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert()
    path = tmp_path / "bnn-float32.tflite"
    path.write_bytes(content)
    it = interpreter(model_content=content)
    position = {d["index"]: i for i, d in enumerate(it.get_output_details())}
    outputs = []
    for role, detail in it.get_signature_runner().get_output_details().items():
        entry = tensor_entry(it.get_output_details()[position[detail["index"]]])
        outputs.append({**entry, "index": position[detail["index"]], "role": role})
    side = {"labels": ["a", "b", "c"], "input_size": [8, 8], "resize_method": "bilinear",
            "ensemble_members": members, "outputs": outputs}
    path.with_suffix(".json").write_text(json.dumps(side))

    image = bad_files[0] / "good.png"
    result = json_lines(run_cli(path, image, "--json"))[0]
    pixels = np.asarray(Image.open(image), dtype=np.float32)
    x = runner.resize_bilinear(np, pixels.astype(np.uint8), 8, 8)[None]
    per_member = np.stack([np.asarray(p)[0] for p in model.predict(x, verbose=0)])
    mean = per_member.mean(0)
    best = int(mean.argmax())
    assert result["members"] == members and result["label"] == "abc"[best]
    assert result["member_mean"] == pytest.approx(mean[best], abs=1e-5)
    assert result["member_std"] == pytest.approx(per_member[:, best].std(), abs=1e-5)
    assert result["member_min"] <= result["member_mean"] <= result["member_max"]
    text = run_cli(path, image).stdout
    assert f"mean of {members} members, spread" in text


# ---------------------------------------------------------------------------------------------
# isolated environments: what a Pi has


def _venv(name: str, packages: list[str]) -> Path:
    """A cached virtual environment holding only ``packages`` (and their dependencies)."""
    key = hashlib.sha256("\n".join(packages).encode()).hexdigest()[:12]
    root = PI_ROOT / "venvs" / f"{name}-{key}"
    python = root / "bin" / "python"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(root)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *packages], check=True)
        (root / ".complete").write_text("\n".join(packages))
    return python


@pytest.fixture(scope="module")
def litert_python():
    reqs = [ln.strip() for ln in (REPO / "edge" / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    return _venv("litert", reqs)


@pytest.fixture(scope="module")
def tflite_runtime_python():
    return _venv("tflite-runtime", ["tflite-runtime==2.14.0", "numpy<2", "Pillow"])


@pytest.mark.edge_venv
def test_litert_venv_without_tensorflow(litert_python, models, test_images):
    elsewhere = litert_python.parents[1]  # not the repository, whose kerascls/ would import
    probe = subprocess.run([str(litert_python), "-c", "import tensorflow"], capture_output=True,
                           text=True, cwd=elsewhere)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr
    probe = subprocess.run([str(litert_python), "-c", "import kerascls"], capture_output=True,
                           text=True, cwd=elsewhere)
    assert probe.returncode != 0 and "No module named 'kerascls'" in probe.stderr
    for variant in ("float32", "int8"):
        proc = run_cli(models[variant], test_images[0], "--json", python=litert_python)
        check_labels(proc, test_images, variant)


@pytest.mark.edge_venv
def test_tflite_runtime_2_14_with_numpy_1(tflite_runtime_python, models, test_images):
    versions = subprocess.run(
        [str(tflite_runtime_python), "-c",
         "import numpy, tflite_runtime; print(numpy.__version__, tflite_runtime.__version__)"],
        capture_output=True, text=True, check=True).stdout.split()
    assert versions[0].startswith("1.") and versions[1] == "2.14.0"
    for variant in ("float32", "float16", "int8"):
        proc = run_cli(models[variant], test_images[0], "--json", python=tflite_runtime_python)
        check_labels(proc, test_images, variant)
    proc = run_cli(models["dynamic"], test_images[1][0], python=tflite_runtime_python)
    assert_one_line_error(proc, "needs a newer TFLite runtime", "pip install -U ai-edge-litert")


# ---------------------------------------------------------------------------------------------
# the emulated Raspberry Pi (Debian 12 arm64, Python 3.11, qemu-user-static)


@pytest.fixture(scope="module")
def emulated_pi():
    env = dict(os.environ, KERASCLS_PI_ROOT=str(PI_ROOT))
    subprocess.run(["bash", str(EMULATE), "setup"], check=True, env=env, timeout=900)
    return env


@pytest.mark.arm64
def test_runner_on_emulated_pi(emulated_pi, models, test_images):
    info = subprocess.run(["bash", str(EMULATE), "info"], capture_output=True, text=True,
                          env=emulated_pi, check=True).stdout.split()
    assert info[0] == "aarch64" and info[2].startswith("3.11.")
    for variant in ("float32", "int8"):
        proc = run_cli(models[variant], test_images[0], "--json", env=emulated_pi,
                       prefix=("bash", str(EMULATE), "run"))
        check_labels(proc, test_images, variant)
    proc = run_cli(models["int8"], test_images[1][0], "--benchmark", "5", env=emulated_pi,
                   prefix=("bash", str(EMULATE), "run"))
    assert proc.returncode == 0 and proc.stderr == ""
    assert "benchmark: 5 runs, ai_edge_litert" in proc.stdout
