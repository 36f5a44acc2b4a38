"""Any image Pillow can read -> the 32x32x3 uint8 array every stage's model takes, plus an RGB preview to show.

EXIF orientation applied, alpha composited on white, palette / CMYK / LAB / 16-bit / 32-bit / float greyscale
converted, first frame of an animation or of a multi-picture (MPO) camera file, centre crop to a square,
antialiased resize. Every failure is an ``ImageError`` with a one-line message meant for a person.

Memory is bounded by design, before the pixels are decoded: the file size is capped (the same limit as the
uploader's, read from ``.streamlit/config.toml``), the decoded size is computed from the header and capped, JPEGs are
decoded at a reduced scale (``Image.draft``), and everything after the decode works on a copy whose short side is
about ``WORK_SIDE`` pixels. There is no full-size float copy anywhere.
"""

from __future__ import annotations

import io
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error

import numpy as np
from PIL import Image, UnidentifiedImageError

STREAMLIT_CONFIG = Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml"


def _upload_limit_mb(config: Path = STREAMLIT_CONFIG) -> int:
    """The uploader's limit (``server.maxUploadSize``, in Streamlit's megabytes of 2**20 bytes); 200 if unset."""
    try:
        return int(tomllib.loads(config.read_text()).get("server", {}).get("maxUploadSize", 200))
    except (OSError, tomllib.TOMLDecodeError, ValueError):
        return 200


MAX_MB = _upload_limit_mb()
MAX_BYTES = MAX_MB * 2**20
# Pillow's own default (about 89 MPixel) stays the bomb limit: we never raise it.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# What the decoded pixels may take in memory (Pillow keeps RGB, RGBA, CMYK, I and F at 4 bytes a pixel).
MAX_DECODED_BYTES = 200 * 2**20
WORK_SIDE = 256  # after the decode, the image is shrunk so that its short side is at least this (when larger)
PREVIEW_SIDE = 256  # the preview fits in a square of this side
ACCEPTED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF", "PPM", "ICO")
UPLOAD_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(ValueError):
    """An image could not be turned into a model input; str(e) says why in plain words."""


@dataclass(frozen=True)
class Decoded:
    name: str
    model_input: np.ndarray  # (32, 32, 3) uint8: what every stage sees
    preview: np.ndarray  # (h, w, 3) uint8, the whole image fitted in PREVIEW_SIDE x PREVIEW_SIDE
    width: int  # of the file, before EXIF rotation
    height: int
    format: str
    mode: str


def bytes_per_pixel(mode: str) -> int:
    """Memory Pillow uses per decoded pixel in ``mode``."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _shrink(img: Image.Image) -> Image.Image:
    """A copy whose short side is still >= WORK_SIDE, by an integer box reduction (cheap, antialiased)."""
    w, h = img.size
    factor = min(w, h) // WORK_SIDE
    if factor < 2:
        return img
    if img.mode in ("1", "P") or img.mode.startswith("I;16"):  # Image.reduce does not take these modes
        return img.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)
    return img.reduce(factor)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Small image of any mode -> 8-bit RGB. Deep greyscale is scaled by its nominal range, not clipped."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float32)  # the image is already small here
        hi = float(a.max()) if a.size else 0.0
        if img.mode == "F" and hi <= 1.0:
            a = a * 255.0  # float images in 0..1
        elif img.mode.startswith("I;16") or (img.mode == "I" and 255 < hi <= 65535):
            a = a / 257.0  # 16-bit range
        elif hi > 255:
            a = a * (255.0 / hi)
        img = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")
    if img.mode in ("P", "PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA") if img.mode != "La" else img.convert("LA").convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def _fit(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    scale = min(1.0, side / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img if size == (w, h) else img.resize(size, Image.Resampling.LANCZOS)


def decode(data: bytes, name: str = "image") -> Decoded:
    """Decode ``data`` into the model input and a preview; raise ImageError with a one-line message."""
    if not data:
        raise ImageError(f"{name}: the file is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name}: {len(data) / 2**20:.1f} MB is over the {MAX_MB} MB limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in ACCEPTED_FORMATS:
                raise ImageError(f"{name}: {fmt} images are not supported (use PNG, JPEG, WebP, BMP, GIF or TIFF)")
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageError(f"{name}: the image has no pixels")
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {width}x{height} is too many pixels (limit {MAX_PIXELS:,}); it may be a decompression bomb"
                )
            img.seek(0)  # first frame of an animation or of a multi-picture file
            short = min(width, height)
            if fmt in ("JPEG", "MPO") and short > WORK_SIDE:  # decode at 1/2, 1/4 or 1/8 scale
                img.draft(None, (-(-width * WORK_SIDE // short), -(-height * WORK_SIDE // short)))
            need = img.size[0] * img.size[1] * bytes_per_pixel(img.mode)
            if need > MAX_DECODED_BYTES:
                raise ImageError(
                    f"{name}: {width}x{height} ({img.mode}) would take {need / 2**20:.0f} MB to decode "
                    f"(limit {MAX_DECODED_BYTES / 2**20:.0f} MB); resize it first"
                )
            mode = img.mode
            img.load()
            try:
                orientation = img.getexif().get(0x0112)
            except Exception:  # a damaged EXIF block: keep the pixels as stored
                orientation = None
            img = _shrink(img)
            if orientation in _ORIENTATION:
                img = img.transpose(_ORIENTATION[orientation])
            img = _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image Pillow can read (wrong file type or corrupt)") from e
    except MemoryError as e:
        raise ImageError(f"{name}: not enough memory to decode this image; resize it first") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error) as e:
        raise ImageError(f"{name}: the image is truncated or corrupt ({_one_line(e)})") from e
    except Exception as e:  # any other decoder failure (e.g. NotImplementedError for an odd pixel format)
        raise ImageError(f"{name}: this image could not be decoded ({type(e).__name__}: {_one_line(e)})") from e
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = img.crop((left, top, left + side, top + side))
    # reducing_gap makes a large image shrink in steps (fast) while staying antialiased
    arr = np.asarray(square.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=np.uint8)
    assert arr.shape == (32, 32, 3)
    preview = np.asarray(_fit(img, PREVIEW_SIDE), dtype=np.uint8)
    return Decoded(name, arr, preview, width, height, fmt, mode)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def to_model_input(data: bytes, name: str = "image") -> np.ndarray:
    """Decode ``data`` and return a (32, 32, 3) uint8 array; raise ImageError with a clear message."""
    return decode(data, name).model_input


def decode_many(files: list[tuple[str, bytes]]) -> list[Decoded | ImageError]:
    """One result per file, in order: a Decoded, or the ImageError that says why not. One bad file spoils nothing."""
    out: list[Decoded | ImageError] = []
    for name, data in files:
        try:
            out.append(decode(data, name))
        except ImageError as e:
            out.append(e)
    return out
