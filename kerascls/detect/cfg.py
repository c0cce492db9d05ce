"""Darknet ``.cfg`` files: a reader and a builder of Keras 3 functional models.

The subset YOLOv3 and YOLOv3-tiny use (see ``docs/detection.md``)::

    [net]            width, height, channels (training keys are accepted and ignored)
    [convolutional]  filters, size, stride, pad | padding, batch_normalize, activation
    [shortcut]       from, activation                 (element-wise sum)
    [route]          layers                           (concatenation; -k relative, k absolute)
    [upsample]       stride                           (nearest neighbour)
    [maxpool]        size, stride                     (Darknet pads right/bottom)
    [yolo]           mask, anchors, classes, num, ignore_thresh (other training keys ignored)

Layers are numbered from 0 after ``[net]``, as Darknet numbers them; the Keras layers are named
``layer{i}_conv``, ``layer{i}_bn``, ``layer{i}_act`` ... so the Darknet weights file order is the
order of the ``layer{i}_conv`` layers. Every error names the file and line.

The model takes RGB 0..255 (rescaled to 0..1 inside, as Darknet expects) and returns one tensor
per ``[yolo]`` section, ``(batch, grid_h, grid_w, anchors, 5 + classes)`` raw logits, made by a
:class:`YoloOutput` layer that also carries the anchors (in input pixels), the mask and the
class count, so a saved model describes its own decoding.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import keras
from keras import layers, ops

from kerascls.errors import UserError

CFG_DIR = Path(__file__).resolve().parent / "cfgs"

# section -> (required keys, optional keys); None accepts any other key (training settings).
SECTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "net": ((), None),
    "convolutional": (("filters", "size"),
                      ("stride", "pad", "padding", "batch_normalize", "activation")),
    "shortcut": (("from",), ("activation",)),
    "route": (("layers",), ()),
    "upsample": ((), ("stride",)),
    "maxpool": (("size",), ("stride",)),
    "yolo": (("mask", "anchors", "classes"), None),
}
ACTIVATIONS = ("leaky", "linear", "relu", "logistic", "mish", "swish")


@dataclasses.dataclass
class Section:
    """One ``[type]`` block: its options as strings, and where it starts."""

    type: str
    line: int
    options: dict[str, str]
    source: str = "<cfg>"
    key_lines: dict[str, int] = dataclasses.field(default_factory=dict)

    def where(self, key: str | None = None) -> str:
        line = self.key_lines.get(key, self.line) if key else self.line
        return f"{self.source}:{line}"

    def _raw(self, key: str, default):
        if key in self.options:
            return self.options[key]
        if default is _REQUIRED:
            raise UserError(f"{self.where()}: [{self.type}] is missing the key '{key}'")
        return default

    def int(self, key: str, default=None) -> int:
        raw = self._raw(key, default)
        if raw is None or isinstance(raw, int):
            return raw
        try:
            return int(raw)
        except ValueError:
            raise UserError(f"{self.where(key)}: {key}={raw} is not an integer") from None

    def float(self, key: str, default=None) -> float:
        raw = self._raw(key, default)
        if raw is None or isinstance(raw, float):
            return raw
        try:
            return float(raw)
        except ValueError:
            raise UserError(f"{self.where(key)}: {key}={raw} is not a number") from None

    def ints(self, key: str) -> list[int]:
        raw = self._raw(key, _REQUIRED)
        try:
            return [int(v) for v in raw.split(",") if v.strip()]
        except ValueError:
            raise UserError(
                f"{self.where(key)}: {key}={raw} is not a comma-separated list of integers"
            ) from None

    def str(self, key: str, default=None) -> str:
        return self._raw(key, default)


_REQUIRED = object()


def parse_cfg(text: str, source: str = "<cfg>") -> list[Section]:
    """Parse cfg text into sections, checking names and keys (``source`` names it in errors)."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            m = re.fullmatch(r"\[([A-Za-z_]+)\]", line)
            name = m.group(1).lower() if m else line
            if name not in SECTIONS:
                raise UserError(f"{source}:{number}: unknown section {line}; supported: "
                                f"{', '.join(f'[{s}]' for s in SECTIONS)}")
            sections.append(Section(name, number, {}, source))
            continue
        if "=" not in line:
            raise UserError(f"{source}:{number}: expected key=value, got '{line}'")
        if not sections:
            raise UserError(f"{source}:{number}: '{line}' comes before any [section]")
        key, value = (s.strip() for s in line.split("=", 1))
        sec = sections[-1]
        allowed = SECTIONS[sec.type][1]
        if allowed is not None and key not in allowed and key not in SECTIONS[sec.type][0]:
            known = SECTIONS[sec.type][0] + allowed
            raise UserError(f"{source}:{number}: unknown key '{key}' in [{sec.type}]; known keys: "
                            f"{', '.join(known)}")
        sec.options[key] = value
        sec.key_lines[key] = number
    if not sections or sections[0].type != "net":
        raise UserError(f"{source}:1: a cfg starts with a [net] section")
    for sec in sections:
        for key in SECTIONS[sec.type][0]:
            sec._raw(key, _REQUIRED)
    if not any(s.type == "yolo" for s in sections):
        raise UserError(f"{source}: the cfg has no [yolo] section")
    return sections


def read_cfg(path: str | Path) -> list[Section]:
    """Read a cfg file: a path, or the name of a shipped cfg (``yolov3``, ``yolov3-tiny``)."""
    p = Path(path)
    if not p.is_file():
        shipped = CFG_DIR / f"{str(path).removesuffix('.cfg')}.cfg"
        if not shipped.is_file():
            names = ", ".join(sorted(f.stem for f in CFG_DIR.glob("*.cfg")))
            raise UserError(f"cfg file '{path}' not found (shipped cfgs: {names})")
        p = shipped
    return parse_cfg(p.read_text(), source=str(p))


@keras.saving.register_keras_serializable(package="kerascls")
class YoloOutput(layers.Layer):
    """Reshape a head's ``anchors * (5 + classes)`` channels to ``(H, W, anchors, 5 + classes)``.

    The layer holds what decoding needs: ``anchors`` (width, height) in input pixels for the
    anchors of this scale, ``classes`` and the cfg's ``ignore_thresh``.
    """

    def __init__(self, anchors, classes, ignore_thresh=0.7, **kwargs):
        super().__init__(**kwargs)
        self.anchors = [[float(a), float(b)] for a, b in anchors]
        self.classes = int(classes)
        self.ignore_thresh = float(ignore_thresh)

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        return ops.reshape(x, (-1, h, w, len(self.anchors), 5 + self.classes))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[2], len(self.anchors),
                5 + self.classes)

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors, "classes": self.classes,
                "ignore_thresh": self.ignore_thresh}


def _activation(x, kind: str, name: str):
    if kind == "linear":
        return x
    if kind == "leaky":
        return layers.LeakyReLU(negative_slope=0.1, name=name)(x)
    if kind == "logistic":
        return layers.Activation("sigmoid", name=name)(x)
    return layers.Activation({"relu": "relu", "mish": "mish", "swish": "silu"}[kind], name=name)(x)


def _anchor_pairs(sec: Section) -> list[tuple[float, float]]:
    raw = sec.str("anchors", _REQUIRED)
    try:
        values = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{sec.where('anchors')}: anchors={raw} is not a list of numbers") from None
    if len(values) % 2 or not values:
        raise UserError(f"{sec.where('anchors')}: anchors needs width,height pairs; "
                        f"got {len(values)} numbers")
    return list(zip(values[0::2], values[1::2]))


def yolo_sections(sections: list[Section]) -> list[Section]:
    return [s for s in sections if s.type == "yolo"]


def cfg_anchors(sections: list[Section]) -> list[tuple[float, float]]:
    """The anchors of the first ``[yolo]`` section (all of them share one list in YOLOv3)."""
    return _anchor_pairs(yolo_sections(sections)[0])


def total_stride(sections: list[Section]) -> int:
    """The largest downsampling factor reached in the network (32 for YOLOv3)."""
    strides: list[int] = []
    for i, sec in enumerate(sections[1:]):
        prev = strides[-1] if strides else 1
        if sec.type in ("convolutional", "maxpool"):
            strides.append(prev * sec.int("stride", 1))
        elif sec.type == "upsample":
            strides.append(max(1, prev // sec.int("stride", 2)))
        elif sec.type == "route":
            r = sec.ints("layers")[0]
            j = i + r if r < 0 else r
            strides.append(strides[j] if 0 <= j < i else prev)
        else:
            strides.append(prev)
    return max(strides, default=1)


def build_from_cfg(sections: list[Section], input_shape=None, classes: int | None = None,
                   anchors=None, name: str = "yolo") -> keras.Model:
    """Build the Keras model a parsed cfg describes.

    Args:
        sections: from :func:`parse_cfg` / :func:`read_cfg`.
        input_shape: ``(H, W, C)``; defaults to the ``[net]`` width, height and channels.
            Height and width must be multiples of the network's total stride.
        classes: class count; replaces each ``[yolo]``'s ``classes`` and the filters of the
            convolution before it (``len(mask) * (5 + classes)``).
        anchors: ``[(w, h), ...]`` in input pixels, replacing the cfg's anchors (same count).
        name: the model's name.
    """
    net = sections[0]
    if input_shape is None:
        input_shape = (net.int("height", _REQUIRED), net.int("width", _REQUIRED),
                       net.int("channels", 3))
    h, w, c = (int(v) for v in input_shape)
    stride = total_stride(sections)
    if h % stride or w % stride or h <= 0 or w <= 0:
        raise UserError(f"input size {h}x{w} is not a multiple of {stride}, the total stride of "
                        f"{net.source}")
    body = sections[1:]
    inputs = keras.Input((h, w, c), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    outputs_of: list = []
    heads = []
    for i, sec in enumerate(body):
        p = f"layer{i}"
        if sec.type == "convolutional":
            filters = sec.int("filters", _REQUIRED)
            if classes is not None and i + 1 < len(body) and body[i + 1].type == "yolo":
                filters = len(body[i + 1].ints("mask")) * (5 + int(classes))
            size, st = sec.int("size", _REQUIRED), sec.int("stride", 1)
            pad = size // 2 if sec.int("pad", 0) else sec.int("padding", 0)
            bn = bool(sec.int("batch_normalize", 0))
            act = sec.str("activation", "logistic")
            if act not in ACTIVATIONS:
                raise UserError(f"{sec.where('activation')}: unknown activation '{act}'; "
                                f"supported: {', '.join(ACTIVATIONS)}")
            if st == 1 and 2 * pad == size - 1:
                padding = "same"
            else:
                padding = "valid"
                if pad:
                    x = layers.ZeroPadding2D(pad, name=f"{p}_pad")(x)
            x = layers.Conv2D(filters, size, strides=st, padding=padding, use_bias=not bn,
                              name=f"{p}_conv")(x)
            if bn:
                x = layers.BatchNormalization(epsilon=1e-5, momentum=0.99, name=f"{p}_bn")(x)
            x = _activation(x, act, f"{p}_act")
        elif sec.type == "maxpool":
            size = sec.int("size", _REQUIRED)
            x = layers.MaxPooling2D(size, strides=sec.int("stride", 1), padding="same",
                                    name=f"{p}_maxpool")(x)
        elif sec.type == "upsample":
            x = layers.UpSampling2D(sec.int("stride", 2), interpolation="nearest",
                                    name=f"{p}_upsample")(x)
        elif sec.type in ("route", "shortcut"):
            key = "layers" if sec.type == "route" else "from"
            refs = []
            for r in sec.ints(key):
                j = i + r if r < 0 else r
                if not 0 <= j < i:
                    raise UserError(f"{sec.where(key)}: [{sec.type}] {key}={r} refers to layer "
                                    f"{j}, outside 0..{i - 1}")
                refs.append(outputs_of[j])
            if sec.type == "route":
                x = refs[0] if len(refs) == 1 else layers.Concatenate(name=f"{p}_route")(refs)
            else:
                x = layers.Add(name=f"{p}_shortcut")([x, refs[0]])
                x = _activation(x, sec.str("activation", "linear"), f"{p}_act")
        elif sec.type == "yolo":
            mask = sec.ints("mask")
            pairs = _anchor_pairs(sec)
            if anchors is not None:
                if len(anchors) != len(pairs):
                    raise UserError(f"{len(anchors)} anchors given; {sec.source} has "
                                    f"{len(pairs)}")
                pairs = [(float(a), float(b)) for a, b in anchors]
            if any(not 0 <= m < len(pairs) for m in mask):
                raise UserError(f"{sec.where('mask')}: mask={sec.str('mask')} refers past the "
                                f"{len(pairs)} anchors")
            n_cls = int(classes) if classes is not None else sec.int("classes", _REQUIRED)
            if x.shape[-1] != len(mask) * (5 + n_cls):
                raise UserError(f"{sec.where()}: the layer before [yolo] has {x.shape[-1]} "
                                f"filters; {len(mask)} anchors x (5 + {n_cls} classes) needs "
                                f"{len(mask) * (5 + n_cls)}")
            x = YoloOutput([pairs[m] for m in mask], n_cls, sec.float("ignore_thresh", 0.7),
                           name=f"{p}_yolo")(x)
            heads.append(x)
        outputs_of.append(x)
    return keras.Model(inputs, heads, name=name)


def conv_layers(model) -> list:
    """The ``layer{i}_conv`` layers in Darknet order, each with its batch norm (or None)."""
    found = []
    for layer in model.layers:
        m = re.fullmatch(r"layer(\d+)_conv", layer.name)
        if m:
            try:
                bn = model.get_layer(f"layer{m.group(1)}_bn")
            except ValueError:
                bn = None
            found.append((int(m.group(1)), layer, bn))
    return [(conv, bn) for _, conv, bn in sorted(found, key=lambda t: t[0])]


def yolo_layers(model) -> list[YoloOutput]:
    """The model's :class:`YoloOutput` layers, in output order."""
    return [lay for lay in model.layers if isinstance(lay, YoloOutput)]
