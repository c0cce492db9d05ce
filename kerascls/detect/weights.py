"""Darknet ``.weights`` files: read into a Keras model built from the same cfg, and write.

The format (Darknet ``src/parser.c``): a header of three int32 (major, minor, revision) and the
number of images seen (int64 when ``major * 10 + minor >= 2``, else int32), then float32 values
for each ``[convolutional]`` layer in cfg order:

* with ``batch_normalize=1``: beta (Darknet's "biases"), gamma ("scales"), moving mean, moving
  variance, each ``filters`` long;
* without: the bias, ``filters`` long;
* then the kernel in Darknet's ``(filters, channels, size, size)`` order (Keras keeps
  ``(size, size, channels, filters)``).

Other sections carry no weights. A file whose length does not match the cfg is refused whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerascls.errors import UserError
from kerascls.fileio import atomic_path

HEADER = (0, 2, 0)  # major, minor, revision written by :func:`save_darknet_weights`


def _layout(model):
    from kerascls.detect.cfg import conv_layers

    layers = conv_layers(model)
    if not layers:
        raise UserError(f"model '{model.name}' has no Darknet layers (layer{{i}}_conv); build it "
                        "from a cfg")
    return layers


def darknet_weight_count(model) -> int:
    """Number of float32 values the model's weights take in a Darknet file."""
    total = 0
    for conv, bn in _layout(model):
        total += int(np.prod(conv.kernel.shape)) + conv.filters * (4 if bn is not None else 1)
    return total


def _read_header(f, path) -> tuple[tuple[int, int, int], int, int]:
    head = f.read(12)
    if len(head) < 12:
        raise UserError(f"weights file {path} is too short for a Darknet header")
    major, minor, revision = (int(v) for v in np.frombuffer(head, "<i4"))
    if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000:
        seen_size = 8
    else:
        seen_size = 4
    seen = f.read(seen_size)
    if len(seen) < seen_size:
        raise UserError(f"weights file {path} is too short for a Darknet header")
    dtype = "<i8" if seen_size == 8 else "<i4"
    return (major, minor, revision), int(np.frombuffer(seen, dtype)[0]), 12 + seen_size


def load_darknet_weights(model, path: str | Path) -> dict:
    """Load a Darknet ``.weights`` file into ``model`` (built from the matching cfg).

    The whole file is checked before any weight is assigned: if its size is not what the cfg
    needs, the model is left as it was. Returns the header (``version``, ``seen``).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    layers = _layout(model)
    need = darknet_weight_count(model)
    with path.open("rb") as f:
        version, seen, header_bytes = _read_header(f, path)
        if version[0] > 1000 or version[1] > 1000:
            raise UserError(f"weights file {path}: version {version} stores transposed "
                            "connected layers, which a cfg of this subset does not have")
        data = f.read()
    if len(data) != 4 * need:
        raise UserError(
            f"weights file {path} holds {len(data) // 4:,} float32 values after its "
            f"{header_bytes}-byte header ({len(data):,} bytes); model '{model.name}' needs "
            f"{need:,} ({4 * need + header_bytes:,} bytes in all): the file is for another cfg "
            "or class count")
    values = np.frombuffer(data, "<f4")
    pos = 0

    def take(n):
        nonlocal pos
        out = values[pos:pos + n]
        pos += n
        return out

    plan = []
    for conv, bn in layers:
        n = conv.filters
        if bn is not None:
            beta, gamma, mean, var = (take(n) for _ in range(4))
        else:
            bias = take(n)
        kh, kw, cin, cout = conv.kernel.shape
        kernel = take(kh * kw * cin * cout).reshape(cout, cin, kh, kw).transpose(2, 3, 1, 0)
        if bn is not None:
            plan.append((bn, [gamma, beta, mean, var]))
            plan.append((conv, [kernel]))
        else:
            plan.append((conv, [kernel, bias]))
    for layer, weights in plan:
        layer.set_weights([np.array(w, "float32") for w in weights])
    return {"version": list(version), "seen": seen}


def save_darknet_weights(model, path: str | Path, seen: int = 0) -> Path:
    """Write ``model``'s weights as a Darknet ``.weights`` file (atomically)."""
    path = Path(path)
    chunks = [np.array(HEADER, "<i4").tobytes(), np.array([seen], "<i8").tobytes()]
    for conv, bn in _layout(model):
        kernel = np.asarray(conv.get_weights()[0], "<f4")
        if bn is not None:
            gamma, beta, mean, var = (np.asarray(w, "<f4") for w in bn.get_weights())
            chunks += [beta.tobytes(), gamma.tobytes(), mean.tobytes(), var.tobytes()]
        else:
            chunks.append(np.asarray(conv.get_weights()[1], "<f4").tobytes())
        chunks.append(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)).tobytes())
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.writelines(chunks)
    return path
