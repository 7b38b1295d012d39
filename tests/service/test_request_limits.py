"""Unit tests of the data plane's request limits and image pool, without HTTP: numbers against hand sums."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.errors import InvalidInput, Overloaded
from service.inference import limits
from service.inference.decode_pool import ImagePool
from vae_contract.imaging import ImageDecodeError, ImageHeader, read_header
from vae_contract.manifest import ImageSpec

pytestmark = pytest.mark.timeout(20)

S = Settings(provider="cpu")
MNIST = ImageSpec(channels=1, height=28, width=28)


def _png(mode: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def test_response_bytes_is_an_upper_bound_by_hand():
    # 3 images of 1x28x28: 3 * (784 * 4 + 128); 10 JSON floats: 10 * 16; plus the body's 1024.
    assert limits.response_bytes(images=3, image_shape=(1, 28, 28), floats=10) == 1024 + 3 * 3264 + 160
    assert limits.response_bytes(floats=10, binary=True) == 1024 + 40
    limits.check_response_bytes(S.max_response_bytes, S)
    with pytest.raises(InvalidInput, match="VAE_MAX_RESPONSE_BYTES"):
        limits.check_response_bytes(S.max_response_bytes + 1, S)


def test_image_budget_counts_bytes_per_pixel_and_the_model_input():
    heads = [ImageHeader("PNG", 1000, 1000, "I;16"), ImageHeader("PNG", 1000, 1000, "RGBA")]
    assert [h.bytes_per_pixel for h in heads] == [2, 4]
    small = Settings(provider="cpu", max_request_image_bytes=6_000_000 + 2 * 784 * 4)
    limits.check_image_headers(heads, MNIST, small)  # 2e6 + 4e6 + 2 * 3136: exactly the budget
    tight = Settings(provider="cpu", max_request_image_bytes=6_000_000 + 2 * 784 * 4 - 1)
    with pytest.raises(InvalidInput, match="would take 6006272 bytes"):
        limits.check_image_headers(heads, MNIST, tight)
    with pytest.raises(InvalidInput, match=r"images\[1\]: image too large: 5000x4000"):
        limits.check_image_headers([heads[0], ImageHeader("PNG", 5000, 4000, "L")], MNIST, S)


@pytest.mark.parametrize(
    ("mode", "size", "want"),
    [("L", (300, 200), 1), ("I;16", (10, 10), 2), ("RGB", (4, 4), 4), ("P", (4, 4), 1)],
)
def test_read_header_decodes_no_pixels(mode, size, want):
    head = read_header(_png(mode, size))
    assert (head.format, head.width, head.height, head.bytes_per_pixel) == ("PNG", *size, want)


def test_read_header_refuses_what_is_not_png_or_jpeg():
    for data, message in [
        (b"", "empty"),
        (b"GIF89a....", "only PNG and JPEG"),
        (b"\x89PNG\r\n\x1a\n", "corrupt"),
    ]:
        with pytest.raises(ImageDecodeError, match=message):
            read_header(data)


def test_as_latents_and_its_messages():
    np.testing.assert_array_equal(limits.as_latents([[1, 2]], S, 2), np.array([[1, 2]], dtype=np.float32))
    for value, message in [
        (None, "required"),
        ([[1, 2, 3]], "length 3"),
        ([[1, "2"]], "strings"),
        ([[1, 2]] * 4097, "allowed 1 to 4096"),
        ([[1e300, 0]], r"\|v\| <= 100"),
        (np.array([[np.nan, 0]]), "NaN or Inf"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            limits.as_latents(value, S, 2)


def test_batch_and_scalar_limits():
    limits.check_batch(256, S, images=True)
    with pytest.raises(InvalidInput, match="batch of 257 exceeds the limit of 256"):
        limits.check_batch(257, S, images=True)
    limits.check_batch(4096, S, images=False)
    for check, value, message in [
        (limits.check_sample_n, 257, "n: at most 256"),
        (limits.check_steps, 129, "steps: at most 128"),
        (limits.check_manifold_size, 41, "size: at most 40"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            check(value, S)


def test_finite_outputs_and_pixel_range():
    limits.check_finite_outputs("decoder", np.zeros(4, np.float32))
    with pytest.raises(InvalidInput, match="decoder produced NaN or Inf"):
        limits.check_finite_outputs("decoder", np.array([0, np.inf], np.float32))
    with pytest.raises(InvalidInput, match=r"pixel range \[0, 1\]"):
        limits.check_pixel_values(np.array([1.5], np.float32), MNIST)


def test_image_pool_decodes_in_order_and_releases_every_slot():
    pool = ImagePool(2, max_pending=64)
    blobs = [_png("L", (28, 28)), _png("RGBA", (56, 56)), _png("I;16", (28, 28))] * 7  # 21 images, 2 chunks
    out = asyncio.run(pool.prepare(blobs, MNIST, S))
    assert out.shape == (21, 1, 28, 28) and out.dtype == np.float32 and pool.pending == 0
    bad = [*blobs[:5], b"junk", *blobs[:5]]
    with pytest.raises(InvalidInput, match=r"images\[5\]: unsupported image format"):
        asyncio.run(pool.prepare(bad, MNIST, S))
    assert pool.pending == 0
    with pytest.raises(Overloaded):
        asyncio.run(pool.prepare(blobs * 4, MNIST, Settings(provider="cpu", max_images_per_request=84)))
    assert pool.pending == 0
    pool.close()


def test_image_pool_decodes_a_small_request_between_the_chunks_of_a_large_one():
    """One decode thread; a 256-image request (16 chunks) starts first, a one-image request follows: the
    small request's image is decoded before most of the large request's chunks, not after all of them."""
    executor = ThreadPoolExecutor(1)
    order: list[int] = []  # the number of images of each chunk, in the order the thread ran them
    real_submit = executor.submit

    def submit(fn, *args):
        def recorded():
            if fn.__name__ == "_prepare_into":
                order.append(len(args[2]))
            return fn(*args)

        return real_submit(recorded)

    executor.submit = submit  # type: ignore[method-assign]
    pool = ImagePool(1, max_pending=1024, executor=executor)
    large, small = [_png("L", (28, 28))] * 256, [_png("L", (28, 28))]

    async def main() -> None:
        first = asyncio.create_task(pool.prepare(large, MNIST, S))
        await asyncio.sleep(0)  # the large request has handed its first chunks over
        await pool.prepare(small, MNIST, S)
        await first

    asyncio.run(main())
    assert sorted(order) == [1] + [16] * 16 and pool.pending == 0
    assert order.index(1) <= 2  # behind at most the chunk running and the one queued before it
    executor.shutdown()
