"""Speed and memory of the dashboard on this machine: prints figures, asserts nothing.

    python benchmarks/bench_app.py [--reps 5]

- cold start: a fresh process until the Journey page's first script run has finished (one AppTest run), and the
  same for each other page opened first
- warm render time of each page (AppTest, median of --reps runs after one warm-up)
- upload-to-predictions latency for 1 and 16 images through every trained stage (models already loaded)
- "Draw random test images" on the upload page: 4 new random test images through every trained stage, the
  calibration, the weighted summary and the detector, models warm (AppTest, median of --reps draws)
- peak RSS with every trained stage loaded
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PAGES = ["app.py", "pages/explorer.py", "pages/compare.py", "pages/predict.py", "pages/training.py"]


def cold_start(page: str = "app.py") -> float:
    """Seconds from a fresh process to ``page``'s first finished run (imports included), as a user who opens that
    page first on a new server waits."""
    switch = "" if page == "app.py" else f"at.switch_page({page!r}); "
    code = (
        "import time; t=time.perf_counter(); from streamlit.testing.v1 import AppTest; "
        f"at=AppTest.from_file({str(ROOT / 'app.py')!r}, default_timeout=300); {switch}at.run(); "
        "assert not at.exception; print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def warm_pages(reps: int) -> dict:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    times = {}
    for page in PAGES:
        runs = []
        for i in range(reps + 1):
            if page == "app.py":
                t = time.perf_counter()
                at.run()
            else:
                at.switch_page(page)
                t = time.perf_counter()
                at.run()
            if i:
                runs.append(time.perf_counter() - t)
            assert not at.exception, (page, at.exception)
        times[page] = statistics.median(runs)
    return times


def uploads(reps: int, app_root: Path = ROOT) -> dict:
    """Seconds from an upload of one new photo to the finished page (every stage's answer, the summary, the
    flag), in AppTest: the first upload on a fresh server (models load: cold) and then new photos (warm)."""
    import io

    import numpy as np
    from PIL import Image
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(app_root / "app.py"), default_timeout=600)
    at.run()
    at.switch_page("pages/predict.py").run()
    rng = np.random.default_rng(0)
    times = []
    for i in range(reps + 1):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        t = time.perf_counter()
        at.file_uploader(key="uploads").set_value([(f"photo{i}.png", buf.getvalue(), "image/png")]).run()
        assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
        times.append(time.perf_counter() - t)
    return {"cold_s": times[0], "warm_s": statistics.median(times[1:])}


def random_draws(reps: int, n: int = 4, app_root: Path = ROOT) -> list[float]:
    """Seconds per click on "Draw random test images" (``n`` new images each time) once the models are loaded."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(app_root / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/predict.py").run()
    at.number_input(key="n_random").set_value(n).run()
    times = []
    for i in range(reps + 1):  # the first draw loads the models
        t = time.perf_counter()
        at.button(key="draw").click().run()
        assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
        if i:
            times.append(time.perf_counter() - t)
    return times


def predictions(reps: int) -> dict:

    from cifar_dash import data, predict, results, testimages

    keys = [r.stage.key for r in results.load_all() if r.status in ("trained", "stale")]
    t = time.perf_counter()
    loaded = [predict.load_stage(k) for k in keys]
    load_s = time.perf_counter() - t
    images = testimages.load(os.environ.get(data.ENV_VAR))  # CIFAR10_PATH's, else the shipped sample (offline)
    x = images.x[images.available]
    out = {"stages": keys, "load_all_models_s": load_s}
    for n in (1, 16):
        batch = x[:n]
        for s in loaded:  # warm-up
            predict.predict(s, batch)
        runs = []
        for _ in range(reps):
            t = time.perf_counter()
            for s in loaded:
                predict.predict(s, batch)
            runs.append(time.perf_counter() - t)
        out[f"{n}_images_all_stages_s"] = statistics.median(runs)
        out[f"{n}_images_per_stage_s"] = {}
        for s in loaded:
            t = time.perf_counter()
            predict.predict(s, batch)
            out[f"{n}_images_per_stage_s"][s.key] = time.perf_counter() - t
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--uploads-only", type=Path, metavar="APP_ROOT", help="only the upload and random-draw latency, of this checkout"
    )
    args = ap.parse_args()
    if args.uploads_only:
        args.uploads_only = args.uploads_only.resolve()  # AppTest resolves a relative path against this file
        sys.path.insert(0, str(args.uploads_only))
        u = uploads(args.reps, args.uploads_only)
        print(f"{args.uploads_only}: upload of one photo, cold {u['cold_s']:.2f} s, warm {u['warm_s']:.2f} s (median)")
        d = random_draws(args.reps, app_root=args.uploads_only)
        print(
            f"{args.uploads_only}: draw 4 random test images, warm: median {statistics.median(d):.2f} s, max {max(d):.2f} s"
        )
        return
    from cifar_dash import runtime

    print(f"machine: {runtime.info()['machine']}; keras {runtime.info()['versions']}")
    print(f"cold start (fresh process, imports + first Journey run): {cold_start():.2f} s")
    for page in PAGES[1:]:
        print(f"cold start of {page:22s} (fresh process, opened first): {cold_start(page):.2f} s")
    for page, s in warm_pages(args.reps).items():
        print(f"warm render {page:22s} {1000 * s:8.1f} ms (median of {args.reps})")
    p = predictions(args.reps)
    print(f"loading {len(p['stages'])} models: {p['load_all_models_s']:.2f} s")
    for n in (1, 16):
        print(
            f"upload-to-predictions, {n:2d} image(s) through all {len(p['stages'])} stages: "
            f"{1000 * p[f'{n}_images_all_stages_s']:.1f} ms"
        )
        for k, v in p[f"{n}_images_per_stage_s"].items():
            print(f"    {k:22s} {1000 * v:8.1f} ms")
    u = uploads(args.reps)
    print(f"upload of one photo to the finished page: cold {u['cold_s']:.2f} s, warm {u['warm_s']:.2f} s (median)")
    draws = random_draws(args.reps)
    print(
        f"draw 4 random test images, warm (all stages, calibrated, summary, detector): median "
        f"{statistics.median(draws):.2f} s, max {max(draws):.2f} s over {len(draws)} draw{'s' if len(draws) != 1 else ''}"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS with all stages loaded: {rss:.0f} MB")


if __name__ == "__main__":
    main()
