"""The first run, as a new user meets it: quiet start-up, fast help and usage errors, one CLI
helper, options checked before training, a small folder dataset, plain piped output.

Entry points run as subprocesses (``python -m kerascls.X``) with TensorFlow's own log switch
removed from the environment, so what is checked is what a user's terminal shows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerascls.errors import UserError

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("train", "evaluate", "export", "explain", "compare", "eda", "models")
NATIVE_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+\S+:\d+\]")


def user_env(tmp_path, **extra) -> dict:
    """The environment of a user who set nothing: no TF_CPP_MIN_LOG_LEVEL, no log level."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERASCLS_LOG_LEVEL", "KERASCLS_DEBUG")}
    env.update(KERASCLS_CACHE_DIR=str(tmp_path / "cache"), KERAS_BACKEND="tensorflow", **extra)
    return env


def kerascls(tmp_path, *args, env=None, importtime=False, timeout=600):
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m",
           *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False,
                          env=env or user_env(tmp_path), timeout=timeout)


def imported(stderr: str) -> set[str]:
    """Top-level package names from ``-X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def without_importtime(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if not ln.startswith("import time:")]


def one_class_folder(root: Path) -> Path:
    folder = root / "one_class" / "cats"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder.parent


# ---------------------------------------------------------------------------------------------
# fast and quiet before TensorFlow is needed


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_help_imports_neither_tensorflow_nor_keras(tmp_path, entry):
    proc = kerascls(tmp_path, f"kerascls.{entry}", "--help", importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: python -m kerascls.{entry}")
    assert "--log-level {debug,info,warning,error}" in proc.stdout
    assert {"tensorflow", "keras", "jax", "torch"}.isdisjoint(imported(proc.stderr))
    assert without_importtime(proc.stderr) == []


def test_usage_errors_are_one_line_and_import_no_tensorflow(tmp_path):
    cases = [
        (("kerascls.train", "--modle", "lenet"), "unknown flag: --modle (did you mean --model?)"),
        (("kerascls.train", "--optimizer", "adm"),
         "--optimizer must be one of adam, adamw, sgd. Received: adm"),
        (("kerascls.train", "--model", "lennet"), "unknown model 'lennet'. Did you mean: lenet"),
        (("kerascls.train", "--formats", "saved_model,tflite-int9"),
         "--formats: unknown format 'tflite-int9'. Did you mean: tflite-int8"),
        (("kerascls.train", "--representative-size", "10"),
         "--representative-size must be at least 100"),
        (("kerascls.train", "--dataset", "digitz"), "unknown dataset 'digitz'. Did you mean"),
        (("kerascls.models", "lst"), "Received: lst. Did you mean list?"),
        (("kerascls.eda", "--split", "tset"), "--split must be one of train, val, test"),
    ]
    env = user_env(tmp_path)
    # the catalog must exist for the model check to go without Keras: a previous command wrote it
    assert kerascls(tmp_path, "kerascls.models", "list", "lenet", env=env).returncode == 0
    for args, fragment in cases:
        proc = kerascls(tmp_path, *args, "--output-dir", tmp_path / "runs", env=env,
                        importtime=True) if args[0] == "kerascls.train" else \
            kerascls(tmp_path, *args, env=env, importtime=True)
        lines = without_importtime(proc.stderr)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], \
            (args, lines)
        assert {"tensorflow", "keras"}.isdisjoint(imported(proc.stderr)), args
    assert not (tmp_path / "runs").exists()


def test_models_list_reads_the_catalog_and_notices_a_changed_family(tmp_path, monkeypatch):
    from kerascls import catalog

    env = user_env(tmp_path)
    first = kerascls(tmp_path, "kerascls.models", "list", "resnet*", env=env)
    assert first.returncode == 0 and "resnet50v2" in first.stdout and "vgg16" not in first.stdout
    second = kerascls(tmp_path, "kerascls.models", "list", "resnet*", env=env, importtime=True)
    assert second.stdout == first.stdout
    assert {"tensorflow", "keras"}.isdisjoint(imported(second.stderr))
    # a family file that changed after the cache was written sends the catalog back to it
    monkeypatch.setenv("KERASCLS_CACHE_DIR", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / catalog.CACHE_NAME
    data = json.loads(cache.read_text())
    stamps = [s for s in data["sources"] if s[0].endswith("resnet.py")]
    assert len(stamps) == 1
    stamps[0][1] -= 10**9  # as if resnet.py was edited after the cache was written
    stale = json.dumps(data)
    cache.write_text(stale)
    assert [i.name for i in catalog.models("resnet5*")] == ["resnet50", "resnet50v2", "resnet56"]
    assert cache.read_text() != stale


def test_native_start_up_logs_hidden_by_default_and_back_with_debug(tmp_path):
    """One class: refused once TensorFlow has started, in one line; debug shows the rest."""
    folder = one_class_folder(tmp_path)
    args = ("kerascls.train", "--dataset", f"folder:{folder}", "--epochs", "1",
            "--output-dir", tmp_path / "runs")
    quiet = kerascls(tmp_path, *args)
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [
        (f"error: dataset folder {folder} has one class sub-folder (cats); a classifier needs "
         "at least two classes, one sub-folder each")]
    assert quiet.stdout.startswith("train: lenet at 32x32 on folder:")
    loud = kerascls(tmp_path, *args, "--log-level", "debug")
    assert loud.returncode == 2 and loud.stderr.splitlines()[-1] == quiet.stderr.strip()
    assert any(NATIVE_LOG.match(line) for line in loud.stderr.splitlines()), loud.stderr
    by_env = kerascls(tmp_path, *args, env=user_env(tmp_path, KERASCLS_LOG_LEVEL="debug"))
    assert any(NATIVE_LOG.match(line) for line in by_env.stderr.splitlines())
    bad = kerascls(tmp_path, *args, env=user_env(tmp_path, KERASCLS_LOG_LEVEL="loud"))
    assert bad.returncode == 2 and bad.stderr.splitlines() == [
        ("error: KERASCLS_LOG_LEVEL must be one of debug, info, warning, error. "
         "Received: KERASCLS_LOG_LEVEL=loud")]


def test_small_training_is_quiet_plain_when_piped_and_keeps_every_artifact(tmp_path):
    """A default-style run on 60 images: the first lines say where it goes, stdout holds no
    terminal control codes, stderr only the int8 calibration warning, every format written."""
    proc = kerascls(tmp_path, "kerascls.train", "--dataset", "sentiment", "--model", "seed_cnn",
                    "--num-examples", "100", "--epochs", "2", "--output-dir", tmp_path / "runs",
                    "--formats", "saved_model,tflite-float32,tflite-int8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    run_dir = tmp_path / "runs" / "seed_cnn-sentiment"
    assert out[0] == (f"train: seed_cnn at 8x8 on sentiment, tensorflow backend (keras engine, "
                      f"CPU); run directory {run_dir}")
    assert out[1].startswith("data: ") and "of 2 classes" in out[1]
    assert not re.search(r"[\x1b\x08\r]", proc.stdout), repr(proc.stdout[:300])
    assert any(re.match(r"\d+/\d+ - .*loss", line) for line in out)  # one line per epoch
    err = proc.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: int8 calibration on all "), err
    assert (run_dir / "tflite" / "seed_cnn-int8.tflite").is_file()
    assert (run_dir / "tflite" / "seed_cnn-float32.tflite").is_file()
    assert (run_dir / "export_report.json").is_file()


# ---------------------------------------------------------------------------------------------
# the CLI helper


def test_help_shows_choices_and_meaningful_metavars():
    from kerascls.config import make_parser

    text = make_parser("python -m kerascls.train", "").format_help()
    for usage in ("--optimizer {adam,adamw,sgd}", "--output-dir DIR", "--image-size PX",
                  "--epochs N", "--learning-rate X", "--dataset SOURCE", "--formats LIST",
                  "--config FILE", "--verbose {0,1,2}", "--freeze-backbone [BOOL]"):
        assert usage in text, usage
    assert " V " not in text and " V\n" not in text
    from kerascls.export import FORMATS

    assert all(name in " ".join(text.split()) for name in FORMATS)


def test_entry_points_share_one_parser_class():
    import ast

    private = []
    for path in (REPO / "kerascls").rglob("*.py"):
        if "serving" in path.parts:  # serving stands apart (imports only its own files)
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "attr", getattr(b, "id", "")) == "ArgumentParser"
                    for b in node.bases) and path.name != "cli.py":
                private.append(f"{path.relative_to(REPO)}:{node.name}")
            if isinstance(node, ast.ImportFrom) and any(a.name == "_Parser" for a in node.names):
                private.append(f"{path.relative_to(REPO)} imports _Parser")
    assert private == []


def test_progress_bar_only_on_a_terminal(tmp_path):
    from kerascls.cli import progress_verbose

    class Tty:
        def isatty(self):
            return True

    with open(tmp_path / "log.txt", "w") as piped:
        assert progress_verbose(1, piped) == 2
        assert progress_verbose(0, piped) == 0
    assert progress_verbose(1, Tty()) == 1


# ---------------------------------------------------------------------------------------------
# data sources


def test_folder_dataset_with_one_class_is_refused(tmp_path):
    from kerascls.data import load_dataset

    folder = one_class_folder(tmp_path)
    with pytest.raises(UserError, match="has one class sub-folder .cats.; a classifier needs at "
                                        "least two classes"):
        load_dataset(f"folder:{folder}", 8)


def test_tfds_builder_missing_a_module_is_reported_as_such(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from kerascls.data import load_dataset

    class KerasclsNeedsAModule(tfds.core.GeneratorBasedBuilder):
        """A builder whose preparation imports a module that is not installed."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(names=["a", "b"])}),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            import kerascls_module_that_is_not_installed  # noqa: F401

        def _generate_examples(self):
            yield from ()

    with pytest.raises(UserError) as exc:
        load_dataset("tfds:kerascls_needs_a_module", 8, data_dir=str(tmp_path))
    assert str(exc.value) == (
        "tfds dataset 'kerascls_needs_a_module' needs the Python module "
        "'kerascls_module_that_is_not_installed', which is not installed: pip install "
        "kerascls_module_that_is_not_installed")


# ---------------------------------------------------------------------------------------------
# the export report plot


def test_export_report_values_do_not_print_over_the_artifact_names():
    from kerascls.export.report import report_figure

    names = ["keras", "saved_model", "tflite-float32", "tflite-dynamic", "tflite-float16",
             "tflite-int8"]
    rows = [{"artifact": n, "size_bytes": 250_000 - 40_000 * i, "accuracy": 0.9889 - 0.003 * i,
             "latency": {"1": {"p50_ms": 2.5 - 0.4 * i}}, "recall_drops": []}
            for i, n in enumerate(names)]
    report = {"rows": rows, "latency": {"threads": [1]}, "model_name": "lenet",
              "recall_drop_threshold_points": 5}
    fig = report_figure(report)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t.get_window_extent(renderer) for ax in fig.axes for t in ax.get_yticklabels()
              if t.get_visible() and t.get_text()]
    assert len(labels) >= len(names)
    values = 0
    for ax in fig.axes:
        frame = ax.get_window_extent(renderer)
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            assert not any(box.overlaps(label) for label in labels), text.get_text()
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 + 0.5, text.get_text()
            values += 1
    assert values == 3 * len(names)
