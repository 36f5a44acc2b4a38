import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cifar_dash import images
from tests import odd_images
from tests.conftest import ROOT


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
    # the nominal 16-bit range maps to 0..255, as image viewers show it (60000 / 257 = 233.5, 30000 / 257 = 116.7)
    assert arr[16, 2, 0] in (233, 234) and arr[16, 30, 0] in (116, 117)


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
    # a JPEG with zeroed scan data still decodes (libjpeg fills what is lost): it predicts, like any browser shows it
    arr = images.to_model_input(bytes(corrupt), "bad.jpg")
    _check(arr)
    assert abs(float(arr.mean()) - 128) < 8


def test_decompression_bomb_is_refused():
    big = _encode(Image.new("1", (10000, 10000)), "PNG")  # 100 MPixel, a few kB on disk
    assert len(big) < 100_000
    with pytest.raises(images.ImageError, match="decompression bomb"):
        images.to_model_input(big, "bomb.png")
    assert Image.MAX_IMAGE_PIXELS is not None  # the guard is still on


def test_many_files_one_bad():
    ok, bad = images.decode_many([("a.png", _encode(Image.new("RGB", (8, 8)), "PNG")), ("b.png", b"")])
    assert ok.name == "a.png" and ok.model_input.shape == (32, 32, 3)
    assert isinstance(bad, images.ImageError) and str(bad).startswith("b.png: ")


@pytest.mark.parametrize("name,data,expect", odd_images.cases(), ids=[c[0] for c in odd_images.cases()])
def test_odd_files_predict_or_get_a_one_line_reason(name, data, expect):
    if expect == "ok":
        d = images.decode(data, name)
        _check(d.model_input)
        assert d.preview.dtype == np.uint8 and d.preview.ndim == 3 and d.preview.shape[2] == 3
        assert max(d.preview.shape[:2]) <= images.PREVIEW_SIDE and min(d.preview.shape[:2]) >= 1
    else:
        with pytest.raises(images.ImageError, match=expect) as e:
            images.decode(data, name)
        assert str(e.value).startswith(f"{name}: ") and "\n" not in str(e.value)


def test_deep_greyscale_keeps_its_range():
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    f = images.decode(_encode(Image.fromarray(ramp, "F"), "TIFF")).model_input
    assert f[0, 0, 0] < 10 and f[31, 31, 0] > 240  # 0..1 floats span black to white, not all black
    i = images.decode(_encode(Image.fromarray((ramp * 65535).astype(np.int32), "I"), "TIFF")).model_input
    assert i[0, 0, 0] < 10 and i[31, 31, 0] > 240  # 16-bit values stored as 32-bit ints


def test_a_decoder_that_raises_something_else_is_a_clear_refusal(monkeypatch):
    def boom(*a, **k):
        raise NotImplementedError("Unimplemented pixel format b'ATI2'")

    monkeypatch.setattr(images.Image, "open", boom)
    with pytest.raises(images.ImageError, match=r"^odd\.png: this image could not be decoded \(NotImplementedError"):
        images.decode(b"anything", "odd.png")


def test_size_limit_is_the_uploaders_and_said_once():
    config = (ROOT / ".streamlit" / "config.toml").read_text()
    assert f"maxUploadSize = {images.MAX_MB}\n" in config
    with pytest.raises(images.ImageError, match=rf"^big\.png: 20\.0 MB is over the {images.MAX_MB} MB limit$"):
        images.decode(b"\0" * (images.MAX_BYTES + 1), "big.png")
    images.decode(_encode(Image.new("RGB", (4, 4)), "PNG") + b"\0" * 100, "padded.png")  # under: decodes


def test_a_phone_jpeg_is_decoded_at_reduced_scale():
    img = Image.effect_noise((1200, 1600), 40).convert("RGB")
    d = images.decode(_encode(img, "JPEG", quality=80), "phone.jpg")
    assert (d.width, d.height) == (1200, 1600) and d.preview.shape == (256, 192, 3)
    _check(d.model_input)


def _huge_16bit_png(path, side=9400):
    """A side x side 16-bit greyscale PNG (a ramp by row) streamed to disk: about 0.2 MB."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    body = []
    for y in range(side):
        v = (y * 7) % 65536
        body.append(comp.compress(b"\0" + struct.pack(">H", v) * side))
    body.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))


def test_a_huge_16_bit_png_decodes_within_300_mb(tmp_path):
    png = tmp_path / "huge.png"
    _huge_16bit_png(png)
    assert png.stat().st_size < images.MAX_BYTES
    # VmHWM is this process image's own peak (ru_maxrss would also count the forking parent's memory)
    probe = (
        "import re, sys, psutil\n"
        "from cifar_dash import images\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = psutil.Process().memory_info().rss\n"
        "d = images.decode(data, 'huge.png')\n"
        "peak = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024\n"
        "print(d.width, d.height, d.mode, d.model_input.shape, (peak - before) // 2**20)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(png)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    width, height, mode, _, _, _, extra_mb = out.stdout.split()
    assert (width, height, mode) == ("9400", "9400", "I;16")
    assert int(extra_mb) < 300, f"decoding took {extra_mb} MB over the process's memory before it"
