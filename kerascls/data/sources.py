"""Dataset sources: ``sentiment``, ``digits``, ``fashion_mnist``, ``mnist_sample``, ``folder:PATH``
and ``tfds:NAME`` (the MNIST family lives in :mod:`kerascls.data.mnist`).

Every source returns :class:`DatasetSplits` holding float32 RGB images in 0..255 already resized
(bilinear) to the requested size, integer labels and class names. Splits are stratified and
deterministic for a given seed.

Folder datasets: a corrupt or unreadable image is skipped with a warning that names the file;
a folder that ends up with no readable image is an error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from kerascls.data.preprocess import IMAGE_EXTENSIONS, ImageReadError, read_image, resize_numpy
from kerascls.errors import UserError, did_you_mean

log = logging.getLogger("kerascls.data")

SOURCES = ("sentiment", "digits", "fashion_mnist", "mnist_sample", "folder:PATH", "tfds:NAME")


@dataclasses.dataclass
class DatasetSplits:
    """Train/validation/test arrays: ``x_*`` float32 (N, H, W, 3) in 0..255, ``y_*`` int64 (N,)."""

    name: str
    class_names: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    native_size: tuple[int, int] = (0, 0)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[1])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the split ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise UserError(f"split must be one of train, val, test. Received: {name}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


# --------------------------------------------------------------------------------------------
# splitting


def stratified_split(x, y, val_fraction: float, test_fraction: float, seed: int):
    """Deterministic stratified train/val/test split."""
    from sklearn.model_selection import train_test_split

    _check_class_counts(y, 3)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1.0 - test_fraction), stratify=y_rest,
        random_state=seed)
    return x_train, y_train, x_val, y_val, x_test, y_test


def _split_off_val(x, y, val_fraction, seed):
    from sklearn.model_selection import train_test_split

    _check_class_counts(y, 2)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, stratify=y, random_state=seed)
    return x_train, y_train, x_val, y_val


def _check_class_counts(y, need):
    counts = np.bincount(np.asarray(y, dtype=np.int64))
    small = [i for i, c in enumerate(counts) if c < need]
    if small:
        raise UserError(f"every class needs at least {need} images to make stratified splits; "
                        f"class index {small[0]} has {counts[small[0]]}")


# --------------------------------------------------------------------------------------------
# sources


def sentiment_images(num_examples: int = 400, size: int = 8, noise: float = 0.05,
                     imbalance: float = 1.0, seed: int = 0):
    """The visual-sentiment lab's synthetic set, as uint8 RGB and labels.

    Negative images are dark (RGB about 0.1, 0.2, 0.1) and positive ones bright (about 0.9, 0.8,
    0.7), with Gaussian pixel noise of standard deviation ``noise`` and ``imbalance`` negatives per
    positive.
    """
    if num_examples < 6:
        raise UserError(f"--num-examples must be at least 6. Received: {num_examples}")
    if size < 1:
        raise UserError(f"--sentiment-size must be positive. Received: {size}")
    if imbalance <= 0:
        raise UserError(f"--imbalance must be positive. Received: {imbalance}")
    if noise < 0:
        raise UserError(f"--noise must be >= 0. Received: {noise}")
    rng = np.random.default_rng(seed)
    n_neg = int(round(num_examples * imbalance / (1.0 + imbalance)))
    n_neg = min(max(n_neg, 3), num_examples - 3)
    labels = np.array([0] * n_neg + [1] * (num_examples - n_neg), dtype=np.int64)
    base = np.array([[0.1, 0.2, 0.1], [0.9, 0.8, 0.7]], dtype=np.float32)[labels]
    images = base[:, None, None, :] + rng.normal(0.0, noise, (num_examples, size, size, 3))
    images = np.clip(images, 0.0, 1.0) * 255.0
    order = rng.permutation(num_examples)
    return np.round(images[order]).astype(np.uint8), labels[order], ["negative", "positive"]


def digits_images():
    """scikit-learn's bundled handwritten digits: 1,797 8x8 images, gray expanded to RGB."""
    from sklearn.datasets import load_digits

    d = load_digits()
    gray = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), d.target.astype(np.int64), [str(i) for i in range(10)]


def _list_class_dirs(root: Path):
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_class_folder(root: Path, class_names: list[str], size: int):
    images, labels, skipped = [], [], []
    for idx, cname in enumerate(class_names):
        cdir = root / cname
        if not cdir.is_dir():
            continue
        files = sorted(f for f in cdir.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            try:
                arr = read_image(f)
            except ImageReadError:
                log.warning("skipping corrupt image %s", f)
                skipped.append(str(f))
                continue
            images.append(resize_numpy(arr[None], size)[0])
            labels.append(idx)
    return images, labels, skipped


def folder_splits(path: str, size: int, val_fraction: float, test_fraction: float, seed: int):
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"dataset folder not found: {path}")
    if not root.is_dir():
        raise UserError(f"dataset path is not a folder: {path}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UserError(f"dataset folder is not readable: {path}")
    presplit = all((root / s).is_dir() for s in ("train", "test"))
    class_root = root / "train" if presplit else root
    class_names = [p.name for p in _list_class_dirs(class_root)]
    if not class_names:
        raise UserError(f"dataset folder {path} has no class sub-folders (expected one folder per "
                        "class holding jpg/png/bmp/gif images)")
    if len(class_names) < 2:
        raise UserError(f"dataset folder {path} has one class sub-folder ({class_names[0]}); a "
                        "classifier needs at least two classes, one sub-folder each")

    def read(sub: Path):
        imgs, labs, _ = _read_class_folder(sub, class_names, size)
        if not imgs:
            raise UserError(f"no readable images (jpg/png/bmp/gif) under {sub}")
        return np.stack(imgs).astype(np.float32), np.asarray(labs, dtype=np.int64)

    if presplit:
        x_train, y_train = read(root / "train")
        x_test, y_test = read(root / "test")
        if (root / "val").is_dir():
            x_val, y_val = read(root / "val")
        else:
            x_train, y_train, x_val, y_val = _split_off_val(x_train, y_train, val_fraction, seed)
        return class_names, (x_train, y_train, x_val, y_val, x_test, y_test)
    x, y = read(root)
    return class_names, stratified_split(x, y, val_fraction, test_fraction, seed)


# Python modules whose pip package has another name.
PIP_NAMES = {"cv2": "opencv-python", "PIL": "Pillow", "skimage": "scikit-image",
             "sklearn": "scikit-learn", "yaml": "PyYAML", "bs4": "beautifulsoup4"}


def _raise_if_missing_module(name: str, exc: BaseException) -> None:
    """Report a tfds builder that failed on a missing Python module as that, not as a download
    or name problem (TFDS builders import their extra dependencies lazily)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImportError):
            text = str(exc)
            module = exc.name or (text.split("'")[1] if text.count("'") >= 2 else None)
            if module:
                top = module.split(".")[0]
                raise UserError(f"tfds dataset '{name}' needs the Python module '{module}', "
                                f"which is not installed: pip install "
                                f"{PIP_NAMES.get(top, top)}") from None
        exc = exc.__cause__ or exc.__context__


def tfds_splits(name: str, data_dir: str, size: int, val_fraction: float, seed: int):
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # pragma: no cover - a declared dependency
        raise UserError("tfds datasets need tensorflow-datasets: pip install tensorflow-datasets") from None
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as exc:  # noqa: BLE001 - DatasetNotFoundError and friends
        _raise_if_missing_module(name, exc)
        try:
            known = tfds.list_builders()
        except Exception:  # noqa: BLE001
            known = []
        if known:
            raise UserError(did_you_mean("tfds dataset", name, known,
                                         "tfds.list_builders()")) from None
        raise UserError(f"unknown tfds dataset '{name}': {str(exc).splitlines()[0]}") from None
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as exc:  # noqa: BLE001 - no network, missing manual files...
            _raise_if_missing_module(name, exc)
            where = builder.data_dir
            raise UserError(
                f"tfds dataset '{name}' is not prepared in {where} and could not be downloaded "
                f"({type(exc).__name__}); prepare it on a machine with network access "
                f"and pass --data-dir") from None
    splits = list(builder.info.splits.keys())
    label_feature = builder.info.features["label"]
    class_names = list(label_feature.names)
    if len(class_names) < 2:
        raise UserError(f"tfds dataset '{name}' has {len(class_names)} class(es); a classifier "
                        "needs at least two")

    def read(split):
        ds = builder.as_dataset(split=split, as_supervised=True)
        xs, ys = [], []
        for img, lab in tfds.as_numpy(ds):
            if img.shape[-1] == 1:
                img = np.repeat(img, 3, axis=-1)
            xs.append(resize_numpy(img[None, ..., :3], size)[0])
            ys.append(int(lab))
        return np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64)

    x_train, y_train = read("train")
    if "test" in splits:
        x_test, y_test = read("test")
        if "validation" in splits:
            x_val, y_val = read("validation")
        else:
            x_train, y_train, x_val, y_val = _split_off_val(x_train, y_train, val_fraction, seed)
        return class_names, (x_train, y_train, x_val, y_val, x_test, y_test)
    return class_names, stratified_split(x_train, y_train, val_fraction, 0.2, seed)


def load_dataset(dataset: str = "digits", image_size: int = 0, *, seed: int = 42,
                 val_fraction: float = 0.15, test_fraction: float = 0.2, data_dir: str = "",
                 num_examples: int = 400, sentiment_size: int = 8, noise: float = 0.05,
                 imbalance: float = 1.0) -> DatasetSplits:
    """Load ``dataset`` and return deterministic stratified splits resized to ``image_size``.

    Args:
        dataset: ``sentiment``, ``digits``, ``fashion_mnist``, ``mnist_sample``,
            ``folder:PATH`` or ``tfds:NAME``.
        image_size: square output size; 0 keeps the native size (8 for digits and sentiment,
            28 for the MNIST family).
        seed: split seed.

    Example:
        >>> splits = load_dataset("digits", 16)
        >>> splits.x_train.shape[1:], splits.num_classes
        ((16, 16, 3), 10)
    """
    kind, _, arg = dataset.partition(":")
    if dataset == "fashion_mnist":
        from kerascls.data.mnist import NATIVE_SIZE, fashion_mnist_arrays

        x_train, y_train, x_test, y_test, names = fashion_mnist_arrays(data_dir)
        size = image_size or NATIVE_SIZE
        x_train, y_train, x_val, y_val = _split_off_val(resize_numpy(x_train, size), y_train,
                                                        val_fraction, seed)
        return DatasetSplits(dataset, names, x_train, y_train, x_val, y_val,
                             resize_numpy(x_test, size), y_test,
                             native_size=(NATIVE_SIZE, NATIVE_SIZE))
    if kind in ("sentiment", "digits", "mnist_sample") and not arg:
        if kind == "sentiment":
            x, y, names = sentiment_images(num_examples, sentiment_size, noise, imbalance, seed)
        elif kind == "mnist_sample":
            from kerascls.data.mnist import mnist_sample_arrays

            x, y, names = mnist_sample_arrays(data_dir)
        else:
            x, y, names = digits_images()
        native = x.shape[1:3]
        size = image_size or native[0]
        x = resize_numpy(x, size)
        parts = stratified_split(x, y, val_fraction, test_fraction, seed)
        return DatasetSplits(dataset, names, *parts, native_size=tuple(native))
    if kind == "folder" and arg:
        size = image_size or 64
        names, parts = folder_splits(arg, size, val_fraction, test_fraction, seed)
        return DatasetSplits(dataset, names, *parts, native_size=(0, 0))
    if kind == "tfds" and arg:
        size = image_size or 32
        names, parts = tfds_splits(arg, data_dir, size, val_fraction, seed)
        return DatasetSplits(dataset, names, *parts, native_size=(0, 0))
    raise UserError(did_you_mean("dataset", dataset, SOURCES).replace(
        "Available:", "Use one of:"))


def limit_train(splits: DatasetSplits, max_examples: int, seed: int = 42) -> DatasetSplits:
    """``splits`` with a stratified subset of at most ``max_examples`` training images (0 or a
    larger number keeps them all); validation and test are unchanged."""
    from sklearn.model_selection import train_test_split

    if max_examples < 0:
        raise UserError(f"--max-train-examples must be >= 0. Received: {max_examples}")
    if not max_examples or max_examples >= len(splits.y_train):
        return splits
    if max_examples < splits.num_classes:
        raise UserError(f"--max-train-examples must be at least the number of classes "
                        f"({splits.num_classes}) to keep every class. Received: {max_examples}")
    x, _, y, _ = train_test_split(splits.x_train, splits.y_train, train_size=max_examples,
                                  stratify=splits.y_train, random_state=seed)
    return dataclasses.replace(splits, x_train=x, y_train=y)
