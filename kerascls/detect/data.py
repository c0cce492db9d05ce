"""Detection datasets, box-aware augmentation and YOLOv3 target assignment.

Sources (``--dataset``):

* ``shapes``: synthetic images, generated in memory and deterministic for a seed: one to four
  non-overlapping circles, squares and triangles of random colour and size on a noisy gradient,
  each box the exact extent of the drawn shape.
* ``yolo:PATH``: images with Darknet/YOLO ``.txt`` labels (``class cx cy w h`` normalized, one
  object a line) beside them or in a sibling ``labels/`` folder; class names from
  ``classes.txt`` or ``obj.names`` in PATH.
* ``coco:PATH``: a COCO JSON annotation file; image ``file_name`` relative to the file's folder
  or its ``images/`` subfolder.

Boxes are ``(k, 5)`` float32 rows ``x1, y1, x2, y2, class`` with coordinates in 0..1 of the
image. Images are resized (stretched) to the square training size; normalized boxes need no
change for that.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

from kerascls.errors import UserError

SHAPE_CLASSES = ("circle", "square", "triangle")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
AUGMENTATIONS = ("flip", "affine", "color")


@dataclasses.dataclass
class DetectionSet:
    """Images ``(N, S, S, 3)`` uint8 and, per image, a ``(k, 5)`` box array."""

    images: np.ndarray
    boxes: list[np.ndarray]
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> DetectionSet:
        return DetectionSet(self.images[idx], [self.boxes[i] for i in idx],
                            [self.names[i] for i in idx])


@dataclasses.dataclass
class DetectionSplits:
    train: DetectionSet
    val: DetectionSet
    test: DetectionSet
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ------------------------------------------------------------------------------------ shapes


def _draw_shape(draw, kind: str, x0: float, y0: float, size: float, fill) -> None:
    x1, y1 = x0 + size, y0 + size
    if kind == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif kind == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    else:
        draw.polygon([(x0 + size / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)


def make_shapes(n: int, size: int, seed: int = 0, max_objects: int = 4) -> DetectionSet:
    """``n`` synthetic images of ``size`` px with exact boxes, the same for the same seed."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    all_boxes = []
    yy, xx = np.mgrid[0:size, 0:size].astype("float32") / size
    for i in range(n):
        c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * xx + np.sin(ang) * yy + 1.5) / 3.0
        bg = c0 * (1 - t[..., None]) + c1 * t[..., None]
        img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        boxes: list[list[float]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                side = float(rng.uniform(0.14, 0.42) * size)
                x0, y0 = (float(v) for v in rng.uniform(0, size - side, 2))
                x0, y0 = float(math.floor(x0)), float(math.floor(y0))
                box = (x0, y0, x0 + side, y0 + side)
                if all(box[2] + 1 < b[0] or b[2] + 1 < box[0] or box[3] + 1 < b[1]
                       or b[3] + 1 < box[1] for b in boxes):
                    break
            else:
                continue
            kind = int(rng.integers(len(SHAPE_CLASSES)))
            mean_bg = bg[int(y0):int(y0 + side), int(x0):int(x0 + side)].mean(axis=(0, 1))
            colour = rng.uniform(0, 255, 3)
            while np.abs(colour - mean_bg).sum() < 150:
                colour = rng.uniform(0, 255, 3)
            mask = Image.new("L", (size, size), 0)
            _draw_shape(ImageDraw.Draw(mask), SHAPE_CLASSES[kind], x0, y0, side, 255)
            left, top, right, bottom = mask.getbbox()
            _draw_shape(draw, SHAPE_CLASSES[kind], x0, y0, side, tuple(int(c) for c in colour))
            boxes.append([left, top, right, bottom, kind])
        arr = np.asarray(img, np.float32) + rng.normal(0, 6, (size, size, 3))
        images[i] = np.clip(arr, 0, 255).astype(np.uint8)
        b = np.array(boxes, np.float32).reshape(-1, 5)
        b[:, :4] /= size
        all_boxes.append(b)
    return DetectionSet(images, all_boxes, [f"shapes-{seed}-{i:05d}" for i in range(n)])


# ------------------------------------------------------------------------------ file sources


def load_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.uint8)
    except OSError as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None


def _class_names(root: Path) -> list[str] | None:
    for name in ("classes.txt", "obj.names"):
        p = root / name
        if p.is_file():
            return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    return None


def _label_path(img: Path) -> Path | None:
    beside = img.with_suffix(".txt")
    if beside.is_file():
        return beside
    parts = list(img.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        other = Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
        if other.is_file():
            return other
    return None


def read_yolo_labels(path: Path, num_classes: int | None) -> np.ndarray:
    """Rows ``x1, y1, x2, y2, class`` from a YOLO ``.txt``; bad lines raise with file:line."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 5:
            raise UserError(f"{path}:{number}: expected 'class cx cy w h', got '{line.strip()}'")
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise UserError(f"{path}:{number}: expected an integer class and four numbers, got "
                            f"'{line.strip()}'") from None
        if cls < 0 or (num_classes is not None and cls >= num_classes):
            raise UserError(f"{path}:{number}: unknown class id {cls} (classes are 0.."
                            f"{(num_classes or 1) - 1})")
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if not (w > 0 and h > 0 and min(cx, cy, w, h) >= 0 and max(cx, cy, w, h) <= 1
                and x1 >= -1e-6 and y1 >= -1e-6 and x2 <= 1 + 1e-6 and y2 <= 1 + 1e-6):
            raise UserError(f"{path}:{number}: box {cx:g} {cy:g} {w:g} {h:g} is not inside [0, 1]")
        rows.append([max(x1, 0), max(y1, 0), min(x2, 1), min(y2, 1), cls])
    return np.array(rows, np.float32).reshape(-1, 5)


def load_yolo_folder(root: Path, size: int) -> tuple[DetectionSet, list[str]]:
    if not root.is_dir():
        raise UserError(f"yolo:{root}: not a folder")
    names = _class_names(root)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"yolo:{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    kept, boxes, unlabeled, empty = [], [], [], 0
    for img in images:
        label = _label_path(img)
        if label is None:
            unlabeled.append(img)
            continue
        b = read_yolo_labels(label, len(names) if names else None)
        empty += len(b) == 0
        kept.append(img)
        boxes.append(b)
    if unlabeled:
        print(f"warning: {len(unlabeled)} image(s) without a label file left out, e.g. "
              f"{unlabeled[0]}", file=sys.stderr)
    if empty:
        print(f"note: {empty} image(s) with no objects kept as background", file=sys.stderr)
    if not kept:
        raise UserError(f"yolo:{root}: no image has a label file (.txt beside it or in labels/)")
    if names is None:
        top = max((int(b[:, 4].max()) for b in boxes if len(b)), default=0)
        names = [f"class{i}" for i in range(top + 1)]
    arr = np.stack([load_image(p, size) for p in kept])
    return DetectionSet(arr, boxes, [str(p.relative_to(root)) for p in kept]), names


def load_coco_file(path: Path, size: int) -> tuple[DetectionSet, list[str]]:
    if not path.is_file():
        raise UserError(f"coco:{path}: no such annotation file")
    try:
        data = json.loads(path.read_text())
        cats = sorted(data["categories"], key=lambda c: c["id"])
        imgs = data["images"]
        anns = data.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"coco:{path}: not a COCO annotation file ({type(exc).__name__}: "
                        f"{exc})") from None
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    by_image: dict[int, list] = {im["id"]: [] for im in imgs}
    for a in anns:
        if a.get("category_id") not in cat_index:
            raise UserError(f"coco:{path}: annotation {a.get('id')} has unknown category_id "
                            f"{a.get('category_id')}")
        if a.get("image_id") not in by_image:
            raise UserError(f"coco:{path}: annotation {a.get('id')} refers to unknown image_id "
                            f"{a.get('image_id')}")
        by_image[a["image_id"]].append(a)
    kept, boxes, names = [], [], []
    for im in imgs:
        w, h = float(im["width"]), float(im["height"])
        rows = []
        for a in by_image[im["id"]]:
            x, y, bw, bh = (float(v) for v in a["bbox"])
            if bw <= 0 or bh <= 0 or x < 0 or y < 0 or x + bw > w + 0.5 or y + bh > h + 0.5:
                raise UserError(f"coco:{path}: annotation {a.get('id')} box {a['bbox']} is not "
                                f"inside its {w:g}x{h:g} image")
            rows.append([x / w, y / h, min(1, (x + bw) / w), min(1, (y + bh) / h),
                         cat_index[a["category_id"]]])
        for base in (path.parent, path.parent / "images"):
            file = base / im["file_name"]
            if file.is_file():
                break
        else:
            raise UserError(f"coco:{path}: image file '{im['file_name']}' not found beside the "
                            "annotation file or in images/")
        kept.append(file)
        boxes.append(np.array(rows, np.float32).reshape(-1, 5))
        names.append(im["file_name"])
    if not kept:
        raise UserError(f"coco:{path}: the annotation file lists no images")
    arr = np.stack([load_image(p, size) for p in kept])
    return DetectionSet(arr, boxes, names), [c["name"] for c in cats]


def load_detection(dataset: str, size: int, *, seed: int = 0, num_examples: int = 1000,
                   val_fraction: float = 0.1, test_fraction: float = 0.1) -> DetectionSplits:
    """Load ``shapes``, ``yolo:PATH`` or ``coco:PATH`` at ``size`` px, split train/val/test."""
    if dataset == "shapes":
        full, names = make_shapes(num_examples, size, seed=seed), list(SHAPE_CLASSES)
    elif dataset.startswith("yolo:"):
        full, names = load_yolo_folder(Path(dataset[5:]), size)
    elif dataset.startswith("coco:"):
        full, names = load_coco_file(Path(dataset[5:]), size)
    else:
        raise UserError(f"--dataset must be shapes, yolo:PATH or coco:PATH. Received: "
                        f"--dataset={dataset}")
    n = len(full)
    order = np.random.default_rng(seed + 1).permutation(n)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    if n - n_test - n_val < 1:
        raise UserError(f"{dataset}: {n} image(s) leave nothing to train on after the "
                        "validation and test splits")
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return DetectionSplits(full.subset(np.sort(train)), full.subset(np.sort(val)),
                           full.subset(np.sort(test)), names)


# ------------------------------------------------------------------------------ augmentation


def parse_augment(text: str) -> tuple[str, ...]:
    items = tuple(a.strip() for a in text.split(",") if a.strip())
    for a in items:
        if a not in AUGMENTATIONS:
            raise UserError(f"--augment items must be among {', '.join(AUGMENTATIONS)}. "
                            f"Received: {a}")
    return items


def augment(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
            kinds=AUGMENTATIONS) -> tuple[np.ndarray, np.ndarray]:
    """Flip, scale/translate and colour-jitter one image, moving its boxes with it.

    Boxes that leave the image are clipped; a box that keeps less than 40% of its area or gets
    under two pixels wide is dropped.
    """
    from PIL import Image

    size = image.shape[0]
    boxes = boxes.copy()
    if "flip" in kinds and rng.random() < 0.5:
        image = image[:, ::-1]
        boxes[:, [0, 2]] = 1.0 - boxes[:, [2, 0]]
    if "affine" in kinds:
        s = float(rng.uniform(0.75, 1.25))
        tx, ty = (float(v) for v in rng.uniform(-0.15, 0.15, 2))
        c = 0.5
        # output = (input - c) * s + c + t  (normalized); PIL maps output pixels to input.
        a = 1.0 / s
        off_x = (c - (c + tx) / s) * size
        off_y = (c - (c + ty) / s) * size
        im = Image.fromarray(np.ascontiguousarray(image)).transform(
            (size, size), Image.AFFINE, (a, 0, off_x, 0, a, off_y), resample=Image.BILINEAR,
            fillcolor=(114, 114, 114))
        image = np.asarray(im)
        if len(boxes):
            area0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * s * s
            boxes[:, [0, 2]] = (boxes[:, [0, 2]] - c) * s + c + tx
            boxes[:, [1, 3]] = (boxes[:, [1, 3]] - c) * s + c + ty
            boxes[:, :4] = np.clip(boxes[:, :4], 0, 1)
            w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            keep = (w * h >= 0.4 * area0) & (w * size >= 2) & (h * size >= 2)
            boxes = boxes[keep]
    if "color" in kinds:
        x = image.astype(np.float32)
        gray = x.mean(axis=2, keepdims=True)
        x = gray + (x - gray) * rng.uniform(0.6, 1.4)  # saturation
        x = (x - x.mean()) * rng.uniform(0.7, 1.3) + x.mean()  # contrast
        x = x * rng.uniform(0.7, 1.3)  # brightness
        image = np.clip(x, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image), boxes


# ------------------------------------------------------------------------- target assignment


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of boxes ``(n, 2)`` and anchors ``(m, 2)`` placed on a common centre: ``(n, m)``."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1],
                                                                         anchors[None, :, 1])
    union = wh[:, None, 0] * wh[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter
    return inter / np.maximum(union, 1e-12)


@dataclasses.dataclass
class HeadLayout:
    """What target assignment needs from a model: per scale the grid and its anchors (pixels)."""

    input_size: int
    grids: list[tuple[int, int]]
    anchors: list[list[tuple[float, float]]]
    classes: int

    @classmethod
    def of(cls, model) -> HeadLayout:
        from kerascls.detect.cfg import yolo_layers

        heads = yolo_layers(model)
        return cls(int(model.input_shape[1]),
                   [(int(o.shape[1]), int(o.shape[2])) for o in model.outputs],
                   [[tuple(a) for a in h.anchors] for h in heads], heads[0].classes)


def assign_targets(boxes_batch: list[np.ndarray], layout: HeadLayout, max_boxes: int = 50):
    """YOLOv3 targets: each box goes to the anchor (over all scales) whose shape fits it best,
    in the grid cell holding its centre.

    Returns one ``(B, H, W, A, 5 + C)`` array per scale (``x, y, w, h`` of the box centre and
    size in 0..1, objectness 1, one-hot class) and a ``(B, max_boxes, 4)`` array of the boxes
    (``x1, y1, x2, y2``, zero padded) that the loss uses for its ignore threshold.
    """
    b = len(boxes_batch)
    c = layout.classes
    targets = [np.zeros((b, gh, gw, len(an), 5 + c), np.float32)
               for (gh, gw), an in zip(layout.grids, layout.anchors)]
    flat = [(s, a) for s, an in enumerate(layout.anchors) for a in range(len(an))]
    all_anchors = np.array([layout.anchors[s][a] for s, a in flat], np.float32)
    all_anchors /= layout.input_size
    padded = np.zeros((b, max_boxes, 4), np.float32)
    for i, boxes in enumerate(boxes_batch):
        if not len(boxes):
            continue
        boxes = boxes[:max_boxes]
        padded[i, :len(boxes)] = boxes[:, :4]
        wh = boxes[:, 2:4] - boxes[:, 0:2]
        xy = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
        best = wh_iou(wh, all_anchors).argmax(axis=1)
        for k in range(len(boxes)):
            s, a = flat[best[k]]
            gh, gw = layout.grids[s]
            gx = min(int(xy[k, 0] * gw), gw - 1)
            gy = min(int(xy[k, 1] * gh), gh - 1)
            t = targets[s][i, gy, gx, a]
            t[:] = 0
            t[0:2], t[2:4], t[4] = xy[k], wh[k], 1.0
            t[5 + int(boxes[k, 4])] = 1.0
    return targets, padded


def detection_batches(data: DetectionSet, layout: HeadLayout, batch_size: int, *,
                      training: bool, augment_kinds=(), seed: int = 0):
    """A ``keras.utils.PyDataset`` of ``(images, (targets..., boxes))`` batches.

    Augmentation and assignment run in NumPy, so the same batches feed every Keras backend.
    """
    import keras

    class _Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = np.arange(len(data))
            self._shuffle()

        def _shuffle(self):
            if training:
                self.order = np.random.default_rng(seed + self.epoch).permutation(len(data))

        def __len__(self):
            n = len(data)
            return max(1, n // batch_size) if training else math.ceil(n / batch_size)

        def __getitem__(self, index):
            idx = self.order[index * batch_size:(index + 1) * batch_size]
            rng = np.random.default_rng((seed, self.epoch, int(index)))
            images, boxes = [], []
            for i in idx:
                img, bx = data.images[i], data.boxes[i]
                if training and augment_kinds:
                    img, bx = augment(img, bx, rng, augment_kinds)
                images.append(img)
                boxes.append(bx)
            targets, padded = assign_targets(boxes, layout)
            return np.stack(images).astype(np.float32), (*targets, padded)

        def on_epoch_end(self):
            self.epoch += 1
            self._shuffle()

    return _Batches()


def box_sizes(data: DetectionSet) -> np.ndarray:
    """Widths and heights ``(n, 2)`` (0..1) of every box in ``data``."""
    rows = [b[:, 2:4] - b[:, 0:2] for b in data.boxes if len(b)]
    return np.concatenate(rows) if rows else np.zeros((0, 2), np.float32)
