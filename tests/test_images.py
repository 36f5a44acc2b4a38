import io

import numpy as np
import pytest
from PIL import Image

from cifar_dash import images


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _check(arr):
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8


def test_rgb_png_is_resized():
    arr = images.to_model_input(_encode(Image.new("RGB", (100, 100), (200, 10, 10)), "PNG"))
    _check(arr)
    assert tuple(arr[16, 16]) == (200, 10, 10)


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # fully transparent black
    arr = images.to_model_input(_encode(img, "PNG"))
    assert arr.min() == 255


def test_palette_with_transparency_and_grayscale_and_la():
    p = Image.new("P", (40, 40), 0)
    p.putpalette([0, 255, 0] + [0] * 765)
    arr = images.to_model_input(_encode(p, "PNG"))
    assert tuple(arr[0, 0]) == (0, 255, 0)
    g = images.to_model_input(_encode(Image.new("L", (40, 40), 77), "PNG"))
    assert tuple(g[5, 5]) == (77, 77, 77)
    la = images.to_model_input(_encode(Image.new("LA", (40, 40), (0, 0)), "PNG"))
    assert la.min() == 255


def test_cmyk_jpeg():
    arr = images.to_model_input(_encode(Image.new("CMYK", (50, 50), (0, 255, 255, 0)), "JPEG"))
    _check(arr)
    r, g, b = arr[16, 16].astype(int)
    assert r > 200 and g < 60 and b < 60  # pure red


def test_16_bit_png_is_scaled_not_clipped():
    a = np.full((40, 40), 30000, dtype=np.uint16)
    a[:, :20] = 60000
    img = Image.fromarray(a)
    arr = images.to_model_input(_encode(img, "PNG"))
    _check(arr)
    assert arr[16, 2, 0] == 255 and 100 < arr[16, 30, 0] < 140


def test_exif_orientation_applied():
    img = Image.new("RGB", (60, 30), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 30, 30))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    arr = images.to_model_input(_encode(img, "JPEG", exif=exif, quality=95))
    # after rotation the image is 30x60 (portrait); centre crop holds the middle band; blue ends up on top
    top, bottom = arr[2, 16].astype(int), arr[29, 16].astype(int)
    assert top[2] > 150 and bottom[0] > 150


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    arr = images.to_model_input(data)
    assert arr[16, 16, 0] > 200 and arr[16, 16, 2] < 50


def test_centre_crop_keeps_the_middle():
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 255, 255), (100, 0, 200, 100))
    arr = images.to_model_input(_encode(img, "PNG"))
    assert arr.min() > 240


@pytest.mark.parametrize("fmt", ["WEBP", "BMP"])
def test_other_formats(fmt):
    _check(images.to_model_input(_encode(Image.new("RGB", (64, 48), (1, 2, 3)), fmt)))


def test_bad_files_raise_one_clear_error():
    with pytest.raises(images.ImageError, match="empty"):
        images.to_model_input(b"", "a.png")
    with pytest.raises(images.ImageError, match="not an image"):
        images.to_model_input(b"hello, this is text", "notes.txt")
    good = _encode(Image.effect_noise((200, 200), 50).convert("RGB"), "PNG")
    with pytest.raises(images.ImageError, match="truncated or corrupt"):
        images.to_model_input(good[: len(good) // 2], "cut.png")
    corrupt = bytearray(_encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG"))
    corrupt[200:400] = b"\x00" * 200
    try:  # a damaged JPEG either decodes (to something) or fails with ImageError, never with a Pillow traceback
        _check(images.to_model_input(bytes(corrupt), "bad.jpg"))
    except images.ImageError:
        pass


def test_decompression_bomb_is_refused():
    big = _encode(Image.new("1", (10000, 10000)), "PNG")  # 100 MPixel, a few kB on disk
    assert len(big) < 100_000
    with pytest.raises(images.ImageError, match="decompression bomb"):
        images.to_model_input(big, "bomb.png")
    assert Image.MAX_IMAGE_PIXELS is not None  # the guard is still on


def test_many_files_one_bad():
    ok, errors = images.to_model_inputs([("a.png", _encode(Image.new("RGB", (8, 8)), "PNG")), ("b.png", b"")])
    assert [n for n, _ in ok] == ["a.png"] and errors[0][0] == "b.png"
