"""Image decoding and resizing shared by training, evaluation and every export.

The model input is RGB float32 in 0..255 at ``image_size``; images are resized with bilinear
interpolation (``tf.image.resize``, half-pixel centers, no antialiasing). Normalization is a layer
inside the model (:func:`kerascls.layers.preprocessing_layer`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

RESIZE_METHOD = "bilinear"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MAX_IMAGE_PIXELS = 40_000_000


def resize_images(images, size: int | tuple[int, int]):
    """Bilinear resize of a NHWC batch to ``size``; float32 0..255 out. No-op at the same size."""
    import tensorflow as tf

    hw = (size, size) if isinstance(size, int) else tuple(size)
    images = tf.convert_to_tensor(images)
    images = tf.cast(images, tf.float32)
    if tuple(images.shape[1:3]) == hw:
        return images
    return tf.image.resize(images, hw, method=RESIZE_METHOD, antialias=False)


def resize_numpy(images: np.ndarray, size: int, batch: int = 1024) -> np.ndarray:
    """:func:`resize_images` over a numpy array in chunks; returns float32 numpy."""
    if images.shape[1:3] == (size, size):
        return images.astype(np.float32)
    out = [np.asarray(resize_images(images[i:i + batch], size)) for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float32)


class ImageReadError(ValueError):
    """An image file that cannot be decoded."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3) with Pillow; raise ImageReadError if corrupt."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = (arr / max(arr.max(), 1) * 255.0) if arr.max() > 255 else arr
                return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=-1)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise ImageReadError(f"{path}: not a readable image ({type(exc).__name__})") from None
