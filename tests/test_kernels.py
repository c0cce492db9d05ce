"""kerascls.kernels: the labs' kernel table, applied as a cross-correlation like Conv2D."""

from __future__ import annotations

import numpy as np
import pytest

from kerascls.errors import UserError


def test_kernel_sums_match_what_they_do():
    from kerascls.kernels import KERNELS

    sums = {name: float(k.sum()) for name, (k, _) in KERNELS.items()}
    for name in ("ridge", "edge"):
        assert sums[name] == pytest.approx(0.0)
    for name in ("identity", "sharpen", "box_blur", "gaussian_3x3", "gaussian_5x5", "unsharp_5x5"):
        assert sums[name] == pytest.approx(1.0)
    identity5 = np.zeros((5, 5))
    identity5[2, 2] = 1.0
    np.testing.assert_allclose(KERNELS["unsharp_5x5"][0],
                               2 * identity5 - KERNELS["gaussian_5x5"][0])
    np.testing.assert_allclose(KERNELS["sharpen"][0], KERNELS["identity"][0] + KERNELS["ridge"][0])


def test_apply_kernel_is_a_zero_padded_cross_correlation():
    from scipy.ndimage import correlate

    from kerascls.kernels import KERNELS, apply_kernel

    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (9, 11, 3)).astype(np.float32)
    for name, (k, _) in KERNELS.items():
        got = apply_kernel(image, name, clip=False)
        want = np.stack([correlate(image[..., c].astype(np.float64), k, mode="constant")
                         for c in range(3)], axis=-1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-2, err_msg=name)
    # not flipped: a tap at the top-left moves an impulse down and to the right
    impulse = np.zeros((5, 5, 3), np.float32)
    impulse[2, 2] = 100.0
    shifted = apply_kernel(impulse, np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    assert shifted[3, 3, 0] == 100.0 and shifted.sum() == 300.0


def test_apply_kernel_clips_batches_and_refuses_unknown_names():
    from kerascls.kernels import apply_all, apply_kernel, sample_photos

    flat = np.full((2, 6, 6, 3), 120.0, np.float32)
    edges = apply_kernel(flat, "edge")
    assert edges.shape == flat.shape and edges[:, 1:-1, 1:-1].max() == 0.0
    assert apply_kernel(flat, "sharpen").max() <= 255.0
    assert set(apply_all(flat[0], ["box_blur", "ridge"])) == {"box_blur", "ridge"}
    photos = sample_photos()
    assert set(photos) == {"china", "flower"} and photos["china"].shape == (427, 640, 3)
    with pytest.raises(UserError, match="unknown kernel 'sobel'"):
        apply_kernel(flat, "sobel")
