"""Fashion-MNIST and the MNIST sample as sources: IDX and CSV reading, where the files are looked
for, one-line errors for bad files, a short real training run and the OOD report against digits.

The real-data tests need the Debian package ``dataset-fashion-mnist`` (``.ci/run`` installs it
and sets ``KERASCLS_REQUIRE_FASHION_MNIST=1``, which turns its absence into a failure).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from kerascls.data import idx, load_dataset
from kerascls.data import mnist as M
from kerascls.errors import UserError

FILES = {"train": M.FASHION_MNIST_FILES["train"], "test": M.FASHION_MNIST_FILES["test"]}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.asarray(array, np.uint8).tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(data)
    return path


def craft_fashion(folder: Path, n_train: int = 100, n_test: int = 20, seed: int = 0) -> Path:
    """Four gzipped IDX files: ``n`` images per split, labels cycling through the 10 classes,
    each image a flat gray level that encodes its label (so a split can be checked)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.repeat((labels * 20 + seed)[:, None, None], 28 * 28, 1).reshape(n, 28, 28)
        write_gz(folder / FILES[split][0], idx_bytes(images.astype(np.uint8), idx.IMAGES_MAGIC))
        write_gz(folder / FILES[split][1], idx_bytes(labels, idx.LABELS_MAGIC))
    return folder


def craft_mnist_sample(folder: Path, per_class: int = 20) -> Path:
    """``mnist_5k.csv.gz`` made of scikit-learn's 8x8 digits upscaled to 28x28 (real digits)."""
    from sklearn.datasets import load_digits

    from kerascls.data.preprocess import resize_numpy

    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:per_class] for c in range(10)])
    gray = d.images[keep] * (255.0 / 16.0)
    big = resize_numpy(np.repeat(gray[..., None], 3, -1).astype(np.float32), 28)[..., 0]
    rows = np.concatenate([np.clip(np.round(big), 0, 255).reshape(len(keep), -1),
                           d.target[keep][:, None]], axis=1).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(",".join(str(v) for v in r) for r in rows) + "\n"
    return write_gz(folder / M.MNIST_SAMPLE_FILE, text.encode())


@pytest.fixture
def no_other_copies(tmp_path, monkeypatch):
    """An empty Keras cache and no dpkg on PATH: only --data-dir can provide the files."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    M.debian_dir.cache_clear()
    yield
    M.debian_dir.cache_clear()


# ------------------------------------------------------------------------------------- readers


def test_idx_round_trip_and_pixel_csv(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = write_gz(tmp_path / "x.gz", idx_bytes(images, idx.IMAGES_MAGIC))
    np.testing.assert_array_equal(idx.read_idx(path, idx.IMAGES_MAGIC), images)
    raw = tmp_path / "y-idx1-ubyte"
    raw.write_bytes(idx_bytes(np.array([1, 2, 3], np.uint8), idx.LABELS_MAGIC))
    np.testing.assert_array_equal(idx.read_idx(raw, idx.LABELS_MAGIC), [1, 2, 3])
    csv = write_gz(tmp_path / "s.csv.gz", b"0,255,3\n7,8,9\n")
    x, y = idx.read_pixel_csv(csv, pixels=2)
    np.testing.assert_array_equal(x, [[0, 255], [7, 8]])
    np.testing.assert_array_equal(y, [3, 9])


def test_aupr_matches_hand_computed_values():
    from kerascls import uncertainty as U

    assert U.aupr([0.1, 0.2], [0.8, 0.9]) == 1.0
    # ranked: pos 0.9, neg 0.8, pos 0.7: AP = 1/2 * 1 + 1/2 * 2/3
    assert U.aupr([0.8], [0.9, 0.7]) == pytest.approx(0.5 + 1.0 / 3.0)
    # a constant score ties everything: precision is the share of positives
    assert U.aupr([0.5] * 6, [0.5] * 3) == pytest.approx(1.0 / 3.0)
    out = U.ood_aupr({"entropy": np.array([0.1]), "x": np.array([0.0])},
                     {"entropy": np.array([0.9])})
    assert out == {"entropy": 1.0}


# ----------------------------------------------------------------------------- finding the files


def test_data_dir_gives_the_official_split_and_stratified_validation(tmp_path, no_other_copies):
    folder = craft_fashion(tmp_path / "fm", n_train=100, n_test=30)
    s = load_dataset("fashion_mnist", data_dir=str(folder), val_fraction=0.2, seed=1)
    assert s.class_names[0] == "T-shirt/top" and s.class_names[-1] == "Ankle boot"
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (80, 20, 30)
    assert np.bincount(s.y_val).tolist() == [2] * 10
    assert s.x_train.shape[1:] == (28, 28, 3) and s.x_train.dtype == np.float32
    assert s.native_size == (28, 28)
    # the test split is the t10k file, in order; each image's gray level encodes its label
    np.testing.assert_array_equal(s.y_test, np.arange(30) % 10)
    np.testing.assert_array_equal(s.x_test[:, 0, 0, 0], s.y_test * 20.0)
    np.testing.assert_array_equal(s.x_train[:, 5, 5, 2], s.y_train * 20.0)
    assert load_dataset("fashion_mnist", 16, data_dir=str(folder)).x_test.shape[1:] == (16, 16, 3)


def test_search_order_data_dir_then_keras_cache(tmp_path, no_other_copies):
    cache = craft_fashion(Path(os.environ["KERAS_HOME"]) / "datasets" / "fashion-mnist",
                          n_test=20, seed=1)
    assert M.find_fashion_mnist("") == cache
    assert load_dataset("fashion_mnist").x_test[0, 0, 0, 0] == 1.0  # the cache's copy
    mine = craft_fashion(tmp_path / "mine", n_test=10, seed=2)
    assert len(load_dataset("fashion_mnist", data_dir=str(mine)).y_test) == 10
    # a --data-dir without any of the files falls through to the cache
    assert M.find_fashion_mnist(str(tmp_path / "empty")) == cache


def test_missing_everywhere_says_how_to_get_it(tmp_path, no_other_copies):
    with pytest.raises(UserError) as e:
        load_dataset("fashion_mnist", data_dir=str(tmp_path / "nothing"))
    msg = str(e.value)
    assert "\n" not in msg and "Fashion-MNIST not found" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg


def test_debian_package_location_comes_from_dpkg():
    import shutil
    import subprocess

    M.debian_dir.cache_clear()
    if not shutil.which("dpkg"):
        if os.environ.get("KERASCLS_REQUIRE_FASHION_MNIST"):
            pytest.fail("CI requires the Debian package lookup, but dpkg is missing")
        pytest.skip("no dpkg on this machine: the package lookup has nothing to ask")
    listed = subprocess.run(["dpkg", "-L", M.DEBIAN_PACKAGE], capture_output=True, text=True,
                            check=False)
    found = M.debian_dir()
    if listed.returncode != 0:
        assert found is None
        return
    expected = next(Path(line).parent for line in listed.stdout.splitlines()
                    if line.endswith("/train-images-idx3-ubyte.gz"))
    assert found == expected
    assert ("the Debian package dataset-fashion-mnist", expected) in M.fashion_mnist_candidates()


def test_mnist_sample_from_data_dir(tmp_path, no_other_copies):
    folder = tmp_path / "digits"
    craft_mnist_sample(folder, per_class=10)
    s = load_dataset("mnist_sample", data_dir=str(folder), val_fraction=0.2, test_fraction=0.2)
    assert s.class_names == [str(i) for i in range(10)]
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 100
    assert s.x_test.shape[1:] == (28, 28, 3) and float(s.x_train.max()) > 200


# ------------------------------------------------------------------------------------- bad input


def _bad_fashion(tmp_path: Path, case: str) -> tuple[Path, str, str]:
    """A Fashion-MNIST folder with one defect: (folder, file named, phrase expected)."""
    folder = craft_fashion(tmp_path / "fm")
    train_images, train_labels = (folder / f for f in FILES["train"])
    if case == "missing":
        (folder / FILES["test"][1]).unlink()
        return folder, FILES["test"][1], "file not found"
    if case == "truncated_gz":
        data = train_images.read_bytes()
        train_images.write_bytes(data[: len(data) // 2])
        return folder, train_images.name, "truncated gzip"
    if case == "not_gzip":
        train_labels.write_bytes(b"plain text, not gzip at all")
        return folder, train_labels.name, "not a gzip file"
    if case == "wrong_magic":  # a labels file where the images belong
        write_gz(train_images, idx_bytes(np.zeros(100, np.uint8), idx.LABELS_MAGIC))
        return folder, train_images.name, "wrong IDX magic number 0x00000801"
    if case == "short_data":
        full = idx_bytes(np.zeros((100, 28, 28), np.uint8), idx.IMAGES_MAGIC)
        write_gz(train_images, full[:-100])
        return folder, train_images.name, "truncated"
    if case == "count_mismatch":
        write_gz(train_labels, idx_bytes((np.arange(99) % 10).astype(np.uint8),
                                         idx.LABELS_MAGIC))
        return folder, train_labels.name, "holds 99 labels but train-images-idx3-ubyte.gz holds 100"
    if case == "label_range":
        write_gz(train_labels, idx_bytes(np.full(100, 12, np.uint8), idx.LABELS_MAGIC))
        return folder, train_labels.name, "label 12 at index 0 is outside 0..9"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "truncated_gz", "not_gzip", "wrong_magic",
                                  "short_data", "count_mismatch", "label_range"])
def test_bad_files_give_one_line_and_write_nothing(case, tmp_path, capsys, no_other_copies):
    from kerascls.train import main

    folder, name, phrase = _bad_fashion(tmp_path, case)
    out = tmp_path / "runs"
    code = main(["--dataset", "fashion_mnist", "--data-dir", str(folder), "--model", "seed_cnn",
                 "--epochs", "1", "--formats", "", "--output-dir", str(out), "--verbose", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert name in err and phrase in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("content,phrase", [
    (b"1,2,3\n4,5\n", "not rows of comma-separated integers"),
    (b"1,2,3\n", "rows have 3 values, expected 785"),
    (None, "truncated gzip"),
])
def test_bad_mnist_sample_names_the_file(tmp_path, no_other_copies, content, phrase):
    path = tmp_path / M.MNIST_SAMPLE_FILE
    if content is None:
        good = craft_mnist_sample(tmp_path, per_class=3).read_bytes()
        path.write_bytes(good[: len(good) // 2])
    else:
        write_gz(path, content)
    with pytest.raises(UserError) as e:
        load_dataset("mnist_sample", data_dir=str(tmp_path))
    assert str(path) in str(e.value) and phrase in str(e.value) and "\n" not in str(e.value)


def test_max_train_examples_keeps_every_class(tmp_path, no_other_copies):
    from kerascls.data.sources import limit_train

    s = load_dataset("fashion_mnist", data_dir=str(craft_fashion(tmp_path / "fm", n_train=200)))
    small = limit_train(s, 50, seed=0)
    assert len(small.y_train) == 50 and np.bincount(small.y_train).tolist() == [5] * 10
    assert len(small.y_test) == len(s.y_test) and limit_train(s, 0) is s
    with pytest.raises(UserError, match="at least the number of classes"):
        limit_train(s, 5)


# ----------------------------------------------------------------- the real data: train and OOD


@pytest.fixture(scope="module")
def real_fashion_dir():
    from conftest import require_fashion_mnist

    return require_fashion_mnist()


def test_real_fashion_mnist_trains_and_detects_digits(real_fashion_dir, tmp_path, capsys):
    """seed_cnn with dropout, 2 epochs on 3,000 real training images; then the OOD report
    against real digits (a crafted mnist_5k.csv.gz beside links to the real files)."""
    import json

    from conftest import train_run

    from kerascls.evaluate import main as evaluate

    data = tmp_path / "data"
    data.mkdir()
    for name in (n for pair in FILES.values() for n in pair):
        (data / name).symlink_to(real_fashion_dir / name)
    craft_mnist_sample(data, per_class=20)
    run_dir = train_run(tmp_path / "runs", "--dataset", "fashion_mnist", "--data-dir", str(data),
                        "--model", "seed_cnn", "--image-size", "28", "--dropout", "0.25",
                        "--epochs", "2", "--max-train-examples", "3000", "--formats", "")
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["num_train_examples"] == 3000 and meta["labels"][9] == "Ankle boot"
    assert meta["metrics"]["num_examples"] == 10000
    assert meta["metrics"]["accuracy"] > 0.65, meta["metrics"]["accuracy"]
    # the recorded test figures are those of the calibrated model, as a fresh load predicts
    from kerascls import uncertainty as U
    from kerascls.runs import load_run

    run = load_run(run_dir)
    splits = run.dataset()
    assert abs(run.temperature - 1.0) > 1e-6
    fresh = run.predict_proba(splits.x_test)
    assert meta["metrics"]["nll"] == pytest.approx(U.nll(splits.y_test, fresh), abs=1e-4)

    code = evaluate([str(run_dir), "--ood", "mnist_sample", "--mc-dropout", "--mc-samples", "4",
                     "--out", str(tmp_path / "eval")])
    text = capsys.readouterr().out
    assert code == 0
    ood = json.loads((tmp_path / "eval" / "metrics.json").read_text())["ood"]
    scores = {"max_softmax", "entropy", "mutual_information", "feature_density"}
    assert ood["num_out"] == 200 and ood["num_in"] == 10000
    assert set(ood["auroc"]) == scores and set(ood["aupr"]) == scores
    assert all(0.0 <= v <= 1.0 for part in ("auroc", "aupr") for v in ood[part].values())
    assert ood["auroc"]["entropy"] > 0.6, ood["auroc"]  # digits look unlike clothes
    assert ood["feature_density"] == {"fitted_on": 3000, "dim": 3136, "jitter": ood[
        "feature_density"]["jitter"]}
    assert "OOD AUROC vs mnist_sample" in text and "OOD AUPR" in text
    assert "feature density: a Gaussian per class over the classifier's 3136-d input" in text
    assert (tmp_path / "eval" / "ood_mnist-sample.png").is_file()
