"""Any image Pillow can read -> the 32x32x3 uint8 array every stage's model takes.

EXIF orientation applied, alpha composited on white, palette / CMYK / 16-bit / grayscale converted, first frame of
an animation, centre crop to a square, antialiased (Lanczos) resize. Every failure is an ``ImageError`` with a
message meant for a person. Pillow's decompression-bomb guard stays on.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_BYTES = 20 * 1024 * 1024
# Pillow's own default (about 89 MPixel) stays the bomb limit: we never raise it.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "ICO")
UPLOAD_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "gif")


class ImageError(ValueError):
    """An image could not be turned into a model input; str(e) says why in plain words."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = a.max() if a.size else 0
        scale = 255.0 / hi if hi > 255 else 1.0
        img = Image.fromarray(np.clip(a * scale, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBa":
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode == "CMYK":
        return img.convert("RGB")
    return img.convert("RGB")


def to_model_input(data: bytes, name: str = "image") -> np.ndarray:
    """Decode ``data`` and return a (32, 32, 3) uint8 array; raise ImageError with a clear message."""
    if not data:
        raise ImageError(f"{name}: the file is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name}: {len(data) / 1e6:.1f} MB is over the {MAX_BYTES / 1e6:.0f} MB limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ACCEPTED_FORMATS:
                raise ImageError(f"{name}: {img.format} images are not supported (use PNG, JPEG, WebP, BMP or GIF)")
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {w}x{h} is too many pixels (limit {MAX_PIXELS:,}); it may be a decompression bomb"
                )
            img.seek(0)  # first frame of an animation
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image Pillow can read (wrong file type or corrupt)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: the image is truncated or corrupt ({e})") from e
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: the image has no pixels")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    # reducing_gap makes a huge image shrink in steps (fast) while staying antialiased
    img = img.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0)
    arr = np.asarray(img, dtype=np.uint8)
    assert arr.shape == (32, 32, 3)
    return arr


def to_model_inputs(files: list[tuple[str, bytes]]) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, str]]]:
    """Process many files; returns (ok: [(name, array)], errors: [(name, message)]). One bad file spoils nothing."""
    ok, errors = [], []
    for name, data in files:
        try:
            ok.append((name, to_model_input(data, name)))
        except ImageError as e:
            errors.append((name, str(e)))
    return ok, errors
