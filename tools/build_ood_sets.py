"""Build the offline set of real pictures that are none of CIFAR-10's ten classes (assets/ood/).

Every picture goes through the upload page's own decoder (``images.to_model_input``), so the detector is measured on
exactly what the page feeds the models. Each picture is assigned to the ``selection`` half (used to choose the
detection method) or the ``evaluation`` half (reported, never used to choose anything) by a hash of its name; the
threshold itself is set on CIFAR-10's validation images only.

Sources (all installable offline from Debian's and PyPI's registries; licences as their packages state):
- objects: Debian's ``tuxpaint-stamps-default`` (GPL-2), photos and drawings of everyday things: food, clothes,
  household goods, tools, dishes, instruments, plants, toys, sports gear, holiday things. Left out: animals,
  vehicles, military, town (buildings and road signs) and every "cartoon" folder.
- photos: the sample photographs that scikit-image (mostly public domain or CC0; see skimage/data/README.txt),
  scikit-learn (china.jpg and flower.jpg, CC-BY 2.0) and Matplotlib (grace_hopper.jpg, public domain) ship, minus
  those that show a CIFAR-10 class (skimage's chelsea and cat, horse, eagle).
- text: words rendered here with the machine's TrueType fonts (DejaVu, Liberation, Noto, FreeFont), several sizes
  and colours.

Rebuild (needs ``apt-get install tuxpaint-stamps-default`` and ``pip install scikit-image scikit-learn matplotlib``):
    python tools/build_ood_sets.py
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cifar_dash import images  # noqa: E402

OUT = ROOT / "assets" / "ood"
STAMPS = Path("/usr/share/tuxpaint/stamps")
SKIP_STAMPS = ("/animals/", "/vehicles/", "/military/", "/town/", "/symbols/", "cartoon")
CIFAR_LIKE_SKIMAGE = {"chelsea.png", "cat.png", "horse.png", "eagle.png", "motorcycle_left.png", "motorcycle_right.png"}
WORDS = (
    "hello world, coffee, invoice, receipt, meeting at 10, password, total 42.50, chapter one, thank you, dear sir, "
    "menu, exit, open, closed, sale, warning, python, report, page 3 of 7, the quick brown fox, milk eggs bread, "
    "welcome, 2026, stop, subscribe, love, error 404, lorem ipsum, notes, agenda, monday, call me, happy birthday"
).split(", ")


def half(name: str) -> str:
    return "selection" if hashlib.sha256(name.encode()).digest()[0] % 2 == 0 else "evaluation"


def objects():
    for path in sorted(STAMPS.rglob("*.png")):
        rel = str(path.relative_to(STAMPS))
        if any(s in "/" + rel for s in SKIP_STAMPS):
            continue
        yield f"tuxpaint-stamps/{rel}", path.read_bytes(), "GPL-2 (Debian tuxpaint-stamps-default)"


def photos():
    import matplotlib.cbook
    import skimage
    import sklearn.datasets

    data = Path(skimage.__file__).parent / "data"
    for path in sorted(data.glob("*.*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg") or path.name in CIFAR_LIKE_SKIMAGE:
            continue
        yield f"scikit-image/{path.name}", path.read_bytes(), "see skimage/data/README.txt (public domain or CC0)"
    folder = Path(sklearn.datasets.__file__).parent / "images"
    for path in sorted(folder.glob("*.jpg")):
        yield f"scikit-learn/{path.name}", path.read_bytes(), "CC-BY 2.0 (scikit-learn sample images)"
    path = Path(matplotlib.cbook._get_data_path("sample_data", "grace_hopper.jpg"))
    yield "matplotlib/grace_hopper.jpg", path.read_bytes(), "public domain (Matplotlib sample data)"


def text():
    fonts = sorted(Path("/usr/share/fonts/truetype").rglob("*.ttf"))[:24]
    rng = np.random.default_rng(0)
    for i, word in enumerate(WORDS * 3):
        font = ImageFont.truetype(str(fonts[i % len(fonts)]), int(rng.integers(28, 64)))
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        fg = tuple(255 - v for v in bg)
        img = Image.new("RGB", (256, 256), bg)
        draw = ImageDraw.Draw(img)
        lines = word.split() if rng.random() < 0.5 else [word]
        draw.multiline_text((int(rng.integers(4, 40)), int(rng.integers(20, 120))), "\n".join(lines), fg, font)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        yield f"text/{i:03d}-{fonts[i % len(fonts)].stem}", buf.getvalue(), "rendered here (fonts: their own free licences)"


SETS = {
    "objects": ("everyday objects: food, clothes, household goods, tools, plants, toys", objects),
    "photos": ("photographs of people, objects, scenes, textures and microscopy", photos),
    "text": ("rendered words in several fonts and colours", text),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    arrays, manifest = {}, {"built_by": "tools/build_ood_sets.py", "decoder": "cifar_dash.images.to_model_input"}
    manifest["sets"] = {}
    for key, (description, source) in SETS.items():
        xs, names, licences, halves = [], [], [], []
        for name, data, licence in source():
            try:
                xs.append(images.to_model_input(data, name))
            except images.ImageError as e:
                print("skipped", e)
                continue
            names.append(name)
            licences.append(licence)
            halves.append(half(name))
        arrays[key] = np.stack(xs)
        manifest["sets"][key] = {
            "description": description,
            "n": len(xs),
            "names": names,
            "licences": licences,
            "half": halves,
        }
        print(key, len(xs), "images,", halves.count("evaluation"), "in the evaluation half")
    np.savez_compressed(OUT / "ood_sets.npz", **arrays)
    (OUT / "ood_sets.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
