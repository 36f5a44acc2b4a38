"""A generated set of odd image files: what careless and hostile uploads look like. Each case says whether the file
must predict ("ok") or be refused with a message matching a pattern."""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _save(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_with_size(width: int, height: int, colour_type: int = 2, bit_depth: int = 8) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (its pixel data is a few bytes): a header-only bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _noise(mode_size=(64, 48)) -> Image.Image:
    return Image.effect_noise(mode_size, 60).convert("RGB")


def cases() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, "ok" or a regex the refusal must match)."""
    grey16 = Image.fromarray((np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 20).astype(np.uint16))
    grey32 = Image.fromarray((np.arange(64 * 48, dtype=np.int32).reshape(48, 64) * 1000), "I")
    greyf = Image.fromarray(np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64), "F")
    rgb = _noise()
    la = Image.merge("LA", (rgb.convert("L"), Image.new("L", rgb.size, 128)))
    pa = rgb.convert("P", palette=Image.Palette.ADAPTIVE).convert("PA")
    lab = rgb.convert("LAB")
    frames = [Image.new("RGB", (40, 40), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    mpo = _save(frames[0], "MPO", save_all=True, append_images=frames[1:2])
    good_png = _save(rgb, "PNG")
    return [
        ("grey 16-bit.png", _save(grey16, "PNG"), "ok"),
        ("grey 32-bit int.tif", _save(grey32, "TIFF"), "ok"),
        ("grey float.tif", _save(greyf, "TIFF"), "ok"),
        ("grey+alpha.png", _save(la, "PNG"), "ok"),
        ("palette+alpha.tif", _save(pa, "TIFF"), "ok"),
        ("palette transparent.png", _save(pa.convert("P"), "PNG", transparency=3), "ok"),
        ("lab.tif", _save(lab, "TIFF"), "ok"),
        ("cmyk.jpg", _save(rgb.convert("CMYK"), "JPEG"), "ok"),
        ("cmyk.tif", _save(rgb.convert("CMYK"), "TIFF"), "ok"),
        ("camera multi-picture.jpg", mpo, "ok"),
        ("animated.gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100), "ok"),
        ("animated.webp", _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100), "ok"),
        ("one pixel high strip.png", _save(Image.new("RGB", (89000, 1), (10, 200, 30)), "PNG"), "ok"),
        ("bitmap 1-bit.bmp", _save(rgb.convert("1"), "BMP"), "ok"),
        ("icon.ico", _save(rgb, "ICO", sizes=[(32, 32)]), "ok"),
        ("truncated.png", good_png[: len(good_png) // 2], "truncated or corrupt"),
        ("empty.png", b"", "empty"),
        ("notes renamed.png", b"this is text, not an image\n" * 20, "not an image"),
        ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>', "not an image"),
        ("texture renamed.png", _save(Image.new("RGBA", (8, 8)), "DDS"), "DDS images are not supported"),
        ("bomb.png", _png_with_size(30_000, 30_000), "decompression bomb"),
        ("wide rgb.png", _png_with_size(9_000, 9_000), "would take .* MB to decode"),
        ("markdown *name* [x](y).png", b"", "empty"),
    ]
