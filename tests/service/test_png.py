"""PNG written directly with zlib: Pillow reads back exactly the pixels written, in the right mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vae_contract.imaging import encode_png, png_bytes


@pytest.mark.parametrize("shape", [(28, 28), (1, 1), (7, 300), (32, 32, 3), (5, 9, 3)])
def test_png_bytes_round_trip_through_pillow(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    img = Image.open(io.BytesIO(png_bytes(pixels)), formats=["PNG"])
    img.load()  # a corrupt chunk or CRC fails here
    assert img.mode == ("L" if len(shape) == 2 else "RGB") and img.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(img), pixels)


def test_encode_png_rounds_model_outputs_to_the_nearest_level():
    arr = np.array([[[0.0, 0.5, 1.0, 0.998, 0.002, -3.0, 7.0]]], dtype=np.float32)  # (1, 1, 7)
    img = Image.open(io.BytesIO(encode_png(arr)))
    assert np.asarray(img).tolist() == [[0, 128, 255, 254, 1, 0, 255]]  # clip(x * 255 + 0.5)
    scaled = encode_png(np.array([[[-1.0, 0.0, 1.0]]], dtype=np.float32), pixel_range=(-1.0, 1.0))
    assert np.asarray(Image.open(io.BytesIO(scaled))).tolist() == [[0, 128, 255]]


@pytest.mark.parametrize("channels", [1, 3])
def test_png_bytes_is_bit_exact_for_every_square_size_up_to_64(channels):
    rng = np.random.default_rng(channels)
    for side in range(1, 65):
        shape = (side, side) if channels == 1 else (side, side, 3)
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        img = Image.open(io.BytesIO(png_bytes(pixels)), formats=["PNG"])
        img.load()
        assert img.mode == ("L" if channels == 1 else "RGB"), side
        assert np.array_equal(np.asarray(img), pixels), side
