"""Decompression bombs against the SavedModel's own graph (what tensorflow_model_server runs too).

Small crafted files and a small pixel limit stand in for the real bombs: the guard reads sizes
from headers (walking a GIF's blocks to the end of its first frame) and refuses before decoding.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from test_saved_model import png_chunk

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LIMIT = 5000  # pixels


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def decode():
    """``decode(blob) -> (8x8 pixels, None) or (None, error message)`` through the graph."""
    import tensorflow as tf

    from kerascls.export.saved_model import decode_images

    fn = tf.function(
        lambda x: decode_images(x, (8, 8), max_pixels=LIMIT),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )

    def run(blob: bytes):
        try:
            return fn(tf.constant([blob])).numpy()[0], None
        except tf.errors.InvalidArgumentError as exc:
            return None, exc.message

    return run


def gif_with_frames(frames: list[np.ndarray]) -> bytes:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=50)
    return buf.getvalue()


def test_still_images_of_every_accepted_format_decode(decode):
    image = noise(20, 30)
    for blob in (
        encode(image, "PNG"),
        encode(image, "BMP"),
        encode(image, "JPEG"),
        encode(image, "GIF"),
        encode(image, "WEBP", lossless=True),
        encode(image, "WEBP", quality=90),
    ):
        pixels, error = decode(blob)
        assert error is None and pixels.shape == (8, 8, 3), blob[:16]


@pytest.mark.parametrize("fmt", ["lossless", "lossy"])
def test_webp_bombs_are_refused_from_the_header(decode, fmt):
    big = noise(100, 100)
    blob = encode(big, "WEBP", **({"lossless": True} if fmt == "lossless" else {"quality": 50}))
    pixels, error = decode(blob)
    assert pixels is None and "too large" in error and "100" in error, error


def test_webp_header_claiming_8000x8000_is_refused_before_decoding(decode):
    bits = (8000 - 1) | ((8000 - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits) + b"\0" * 40
    blob = b"RIFF" + struct.pack("<I", 12 + len(payload)) + b"WEBPVP8L"
    blob += struct.pack("<I", len(payload)) + payload
    pixels, error = decode(blob)
    assert pixels is None and "too large" in error and "8000" in error, error


def test_animated_webp_is_refused(decode):
    vp8x = bytes([2, 0, 0, 0]) + (9).to_bytes(3, "little") + (9).to_bytes(3, "little")
    blob = b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + vp8x
    pixels, error = decode(blob)
    assert pixels is None and "animated WebP" in error, error


def test_gif_frame_larger_than_its_screen_is_refused(decode):
    blob = encode(noise(100, 100), "GIF")
    blob = blob[:6] + struct.pack("<HH", 10, 10) + blob[10:]  # a 10x10 screen, a 100x100 frame
    pixels, error = decode(blob)
    assert pixels is None and "larger than its screen" in error, error


def _image_block(gif: bytes) -> bytes:
    """The first image (descriptor, colour table, LZW data) of a GIF file, as bytes."""
    pos = 13 + (3 * (2 << (gif[10] & 7)) if gif[10] & 0x80 else 0)
    while gif[pos] == 0x21:  # extensions
        pos += 2
        while gif[pos]:
            pos += gif[pos] + 1
        pos += 1
    start, packed = pos, gif[pos + 9]
    pos += 10 + (3 * (2 << (packed & 7)) if packed & 0x80 else 0) + 1
    while gif[pos]:
        pos += gif[pos] + 1
    return gif[start : pos + 1]


def test_animated_gif_decodes_only_its_first_frame(decode):
    """Later frames are never decoded, even one far larger than the screen and the limit."""
    single = encode(noise(20, 30, 1), "GIF")
    expected, error = decode(single)
    assert error is None
    frames, error = decode(gif_with_frames([noise(20, 30, 1), noise(20, 30, 2)]))
    assert error is None and frames.shape == (8, 8, 3)
    huge_second = _image_block(encode(noise(200, 300, 2), "GIF"))  # 60,000 pixels > LIMIT
    pixels, error = decode(single[:-1] + huge_second + b";")
    assert error is None, error
    np.testing.assert_array_equal(pixels, expected)


def test_gif_without_a_complete_frame_and_unknown_formats_are_refused(decode):
    blob = encode(noise(10, 10), "GIF")
    for bad, words in (
        (blob[:40], "complete first frame"),
        (b"\x00\x00\x01\x00" + b"\0" * 60, "not a JPEG, PNG, BMP, GIF or WebP"),
        (b"II*\x00" + b"\0" * 60, "not a JPEG, PNG, BMP, GIF or WebP"),
        (b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"x") + b"\0" * 40, "IHDR"),
    ):
        pixels, error = decode(bad)
        assert pixels is None and words in error, (bad[:8], error)
