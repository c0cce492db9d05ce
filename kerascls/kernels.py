"""The classic image kernels of the labs, applied the way a convolution layer applies them.

A convolution layer slides a small weight window over the image and takes, at every position, the
sum of the products of the window and the pixels under it (a cross-correlation). With hand-set
weights the same operation sharpens, blurs or finds edges; a CNN learns its weights instead.
:func:`apply_kernel` runs one kernel on every colour channel separately with
``keras.ops.depthwise_conv`` (zero padding, ``"same"`` output size), exactly what a
``DepthwiseConv2D`` layer with those weights computes.

Example:
    >>> from sklearn.datasets import load_sample_image
    >>> photo = load_sample_image("china.jpg").astype("float32")
    >>> edges = apply_kernel(photo, "edge")
"""

from __future__ import annotations

import numpy as np

_GAUSS5 = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float64)
_UNSHARP5 = -_GAUSS5.copy()
_UNSHARP5[2, 2] = 476.0

# name -> (kernel, what it does). The values are the labs' table.
KERNELS: dict[str, tuple[np.ndarray, str]] = {
    "identity": (np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float64), "the input unchanged"),
    "ridge": (np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float64),
              "ridge / edge detection, 4 neighbours (a discrete Laplacian)"),
    "edge": (np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float64),
             "edge detection, 8 neighbours"),
    "sharpen": (np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float64),
                "sharpen: the identity plus the ridge kernel"),
    "box_blur": (np.ones((3, 3), np.float64) / 9.0, "box blur, 3x3 mean"),
    "gaussian_3x3": (np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float64) / 16.0,
                     "Gaussian blur 3x3 (binomial approximation)"),
    "gaussian_5x5": (_GAUSS5 / 256.0, "Gaussian blur 5x5 (binomial approximation)"),
    "unsharp_5x5": (_UNSHARP5 / 256.0,
                    "unsharp masking 5x5: 2 x identity - Gaussian 5x5 (amount 1, threshold 0)"),
}


def get_kernel(name: str) -> np.ndarray:
    """The kernel ``name`` of :data:`KERNELS` as a float64 array."""
    from kerascls.errors import UserError, did_you_mean

    if name not in KERNELS:
        raise UserError(did_you_mean("kernel", name, KERNELS))
    return KERNELS[name][0].copy()


def apply_kernel(images, kernel, clip: bool = True) -> np.ndarray:
    """Cross-correlate every channel of ``images`` with ``kernel`` (zero padding, same size).

    Args:
        images: one image (H, W, C) or a batch (N, H, W, C), pixels in 0..255.
        kernel: a name from :data:`KERNELS` or a 2-D array.
        clip: clip the result to 0..255 for display; ``False`` keeps the signed response
            (edge kernels give negative values).

    Returns:
        float32 array of the input's shape.
    """
    from keras import ops

    k = get_kernel(kernel) if isinstance(kernel, str) else np.asarray(kernel, np.float64)
    if k.ndim != 2:
        raise ValueError(f"kernel must be 2-D. Received shape {k.shape}")
    x = np.asarray(images, dtype=np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    channels = x.shape[-1]
    weights = np.repeat(k.astype(np.float32)[:, :, None, None], channels, axis=2)  # (kh,kw,C,1)
    out = np.asarray(ops.depthwise_conv(x, weights, strides=1, padding="same"), np.float32)
    if clip:
        out = np.clip(out, 0.0, 255.0)
    return out[0] if single else out


def apply_all(image, names=None, clip: bool = True) -> dict[str, np.ndarray]:
    """``{name: apply_kernel(image, name)}`` for ``names`` (default: every kernel)."""
    return {n: apply_kernel(image, n, clip=clip) for n in (names or KERNELS)}


def sample_photos() -> dict[str, np.ndarray]:
    """scikit-learn's two bundled photographs (no download), as float32 RGB 0..255."""
    from sklearn.datasets import load_sample_image

    return {name.split(".")[0]: load_sample_image(name).astype(np.float32)
            for name in ("china.jpg", "flower.jpg")}
