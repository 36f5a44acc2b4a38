"""Screenshots for README: the Journey page and the upload page on the shipped checkpoints, in headless Chromium.

    CIFAR10_PATH=/path/to/cifar10.npz .venv/bin/python docs/make_screenshots.py

Writes docs/journey.png and docs/upload.png. The uploaded picture is CIFAR-10 test image 0 (a cat), enlarged to
256x256 and saved as PNG: a photo from outside the data set would do as well.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from cifar_dash import data
    from tests.test_browser import ARGS, CHROMIUM, _start_streamlit

    if not os.environ.get(data.ENV_VAR):
        print(f"set {data.ENV_VAR} to a local CIFAR-10 (the galleries need the test images)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp())
    x = data.load(os.environ[data.ENV_VAR]).x_test[0]
    photo = tmp / "cat.png"
    Image.fromarray(np.asarray(x)).resize((256, 256), Image.Resampling.LANCZOS).save(photo)
    env = {**os.environ, "CIFAR_DASH_CACHE": str(tmp / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("CIFAR_DASH_CHECKPOINTS", None)
    proc, url = _start_streamlit(env, tmp / "streamlit.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(180_000)
            page.goto(url)
            page.get_by_role("heading", name="Accuracy against cost").wait_for()
            page.wait_for_timeout(3000)
            page.screenshot(path=str(ROOT / "docs" / "journey.png"))
            page.goto(f"{url}/predict")
            page.get_by_role("heading", name="Upload & predict").wait_for()
            page.locator("input[type='file']").set_input_files(str(photo))
            page.get_by_text("stages agree").or_(page.get_by_text("Stages disagree; majority")).first.wait_for()
            page.wait_for_timeout(2000)
            page.screenshot(path=str(ROOT / "docs" / "upload.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print("wrote docs/journey.png and docs/upload.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
