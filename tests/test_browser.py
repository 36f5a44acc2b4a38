"""Real browser: headless Debian Chromium driven by Playwright against `streamlit run app.py`."""

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    # skipped only outside CI: in CI (CI=true) a missing Chromium fails these tests (and .ci/run stops before them)
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
        reason="Debian's chromium is not installed (.ci/run installs it)",
    ),
]
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# every page's path and its heading
PAGES = [
    ("", re.compile(r"^CIFAR-10, from ")),
    ("explorer", "Stage explorer"),
    ("inside", "Inside the stages"),
    ("compare", "Compare stages"),
    ("predict", "Upload & predict"),
    ("training", "Training jobs"),
]
# an upload's answer card of one of the fixture's three stages: its name, then "class · NN%"
CARD = re.compile(r"^(MLP|Deep MLP|CNN)\n.* · \d+%")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_streamlit(env, log_path):
    """`streamlit run app.py` on a free port; returns (process, url) once it answers its health check."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
        ],
        cwd=ROOT,
        env=env,
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("streamlit did not start")


@pytest.fixture(scope="module")
def server(trained_root, cifar_npz, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser") / "checkpoints"
    shutil.copytree(trained_root, root)
    env = {
        **os.environ,
        "CIFAR_DASH_CHECKPOINTS": str(root),
        "CIFAR10_PATH": str(cifar_npz),
        "CIFAR_DASH_CACHE": str(tmp_path_factory.mktemp("browser_cache")),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    proc, url = _start_streamlit(env, tmp_path_factory.mktemp("log") / "streamlit.log")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(server, browser):
    pg = browser.new_page(viewport={"width": 1500, "height": 1000})
    pg.set_default_timeout(90_000)
    return pg


def _no_exception(pg):
    errors = pg.locator("[data-testid='stException']")
    assert errors.count() == 0, errors.first.inner_text()


def _cut_link_labels(pg) -> list[str]:
    """The page links whose label the browser cut short (a link's label does not wrap: it ends in an ellipsis)."""
    return pg.evaluate(
        """() => [...document.querySelectorAll("[data-testid='stPageLink-NavLink']")]
            .filter(a => [...a.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1))
            .map(a => a.innerText)"""
    )


@pytest.mark.parametrize("path, heading", PAGES)
def test_every_page_opens(page, server, path, heading):
    page.goto(f"{server}/{path}")
    page.get_by_role("heading", name=heading).wait_for()
    page.locator("[data-testid='stSidebar']").get_by_text("Retrain a stage").wait_for()  # on every page
    if path == "":
        page.locator(".js-plotly-plot").first.wait_for()
        assert page.locator("[data-testid='stPageLink-NavLink']").count() >= 9  # six in the sidebar, three here
    _no_exception(page)
    assert _cut_link_labels(page) == []


def test_a_deep_link_opened_first_gets_navigation_and_sidebar(server, browser):
    context = browser.new_context()  # a fresh session whose first request is a page URL
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(f"{server}/compare")
    pg.get_by_role("heading", name="Compare stages").wait_for()
    side = pg.locator("[data-testid='stSidebar']")
    side.get_by_text("Retrain a stage").wait_for()
    for label in ("Journey", "Stage explorer", "Compare", "Upload & predict", "Training"):
        side.get_by_role("link", name=label, exact=True).wait_for()
    side.get_by_role("link", name="Journey").click()
    pg.get_by_role("heading", name=re.compile(r"^CIFAR-10, from ")).wait_for()
    context.close()


def test_upload_png_gives_one_prediction_per_stage(page, server, tmp_path):
    img = tmp_path / "red_square.png"
    Image.new("RGB", (120, 80), (230, 20, 20)).save(img)
    page.goto(f"{server}/predict")
    page.get_by_role("heading", name="Upload & predict").wait_for()
    page.locator("input[type='file']").set_input_files(str(img))
    page.get_by_text(re.compile(r"^(All 3 stages agree|Stages disagree; weighted summary)")).first.wait_for()
    main = page.locator("[data-testid='stMain']")
    cards = main.locator("[data-testid='stMarkdownContainer']").filter(has_text=CARD)
    assert cards.count() == 3  # one card per trained stage, each with its name
    assert sorted(c.split("\n")[0] for c in cards.all_inner_texts()) == ["CNN", "Deep MLP", "MLP"]
    images_before = main.locator("[data-testid='stImage']").count()
    main.get_by_text("Show where each stage looks").click()
    page.get_by_text(re.compile(r"occlusion, peak")).first.wait_for()
    page.wait_for_function(
        f"document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stImage']\").length >= {images_before + 4}"
    )
    _no_exception(page)


def test_bad_upload_gets_a_clear_message(page, server, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    page.goto(f"{server}/predict")
    page.get_by_role("heading", name="Upload & predict").wait_for()
    page.locator("input[type='file']").set_input_files(str(bad))
    page.get_by_text("broken.png: ").first.wait_for()
    _no_exception(page)


def test_sidebar_retrain_runs_to_the_end(page, server):
    page.goto(f"{server}/")
    page.get_by_role("heading", name=re.compile(r"^CIFAR-10, from ")).wait_for()
    side = page.locator("[data-testid='stSidebar']")
    side.get_by_role("spinbutton", name="Epochs (0 = recipe)").fill("1")
    side.get_by_role("spinbutton", name="Epochs (0 = recipe)").press("Enter")
    side.get_by_role("spinbutton", name="Limit images (0 = all 50,000)").fill("200")
    side.get_by_role("spinbutton", name="Limit images (0 = all 50,000)").press("Enter")
    page.wait_for_timeout(500)
    side.get_by_role("button", name="Start training").click()
    done = side.get_by_test_id("stAlertContentSuccess").filter(has_text=re.compile(r"^Run \d{8}-\d{6}-\w{4} finished"))
    done.wait_for(timeout=180_000)
    assert "the published model is unchanged" in done.inner_text() and "(published: " in done.inner_text()
    run_id = done.inner_text().split()[1]
    # the run is kept beside the published model: compare it, then promote it after the confirmation
    side.get_by_role("link", name="Compare or promote it").click()
    page.get_by_role("heading", name="Training jobs and runs").wait_for()
    page.get_by_role("button", name="Promote…").click()
    dialog = page.get_by_role("dialog")  # a modal dialog: nothing is published before its confirmation
    dialog.get_by_text(f"Would become: {run_id}").wait_for()
    dialog.get_by_role("button", name="Confirm promotion").click()
    page.get_by_text(re.compile(f"^Published run {run_id}")).wait_for()
    dialog.wait_for(state="detached")
    _no_exception(page)
    _ = io


@pytest.mark.slow  # loads all nine shipped models (about 40 s); CI runs it with the other slow checks
def test_every_page_opens_on_the_shipped_checkpoints(browser, tmp_path):
    """The committed checkpoints/ as a user gets them (read only here: no training), with the real test images."""
    real = ROOT.parent / "shared" / "data" / "cifar10.npz"
    if not real.exists():
        pytest.skip(f"the real CIFAR-10 is not at {real}")
    env = {
        **os.environ,
        "CIFAR10_PATH": str(real),
        "CIFAR_DASH_CACHE": str(tmp_path / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop("CIFAR_DASH_CHECKPOINTS", None)
    proc, url = _start_streamlit(env, tmp_path / "streamlit.log")
    try:
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(120_000)
        for path, heading in [
            ("", re.compile(r"^CIFAR-10, from ")),
            ("compare", "Compare stages"),
            ("training", "Training jobs"),
        ]:
            pg.goto(f"{url}/{path}")
            pg.get_by_role("heading", name=heading).wait_for()
            pg.wait_for_timeout(1500)
            _no_exception(pg)
        # the explorer opens on the last stage and shows real test images of its largest confusion cell
        pg.goto(f"{url}/explorer")
        pg.get_by_role("heading", name="Stage explorer").wait_for()
        main = pg.locator("[data-testid='stMain']")
        main.get_by_text("test images of").first.wait_for()
        pg.wait_for_function("document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stImage']\").length >= 8")
        assert not main.get_by_text("Test images unavailable").count()
        _no_exception(pg)
        # an upload is answered by all nine shipped stages
        img = tmp_path / "blue.png"
        Image.new("RGB", (64, 64), (20, 40, 220)).save(img)
        pg.goto(f"{url}/predict")
        pg.get_by_role("heading", name="Upload & predict").wait_for()
        pg.locator("input[type='file']").set_input_files(str(img))
        pg.get_by_text(re.compile(r"^(All 9 stages agree|Stages disagree; weighted summary)")).first.wait_for()
        _no_exception(pg)
        # a photo of a coffee cup (scikit-image's coffee.png, CC0): the ResNets call it a cat, the detector flags it.
        # A fresh session: the blue square's answers (flagged too) would otherwise stay on screen while this one runs
        pg.goto(f"{url}/predict")
        pg.get_by_role("heading", name="Upload & predict").wait_for()
        pg.locator("input[type='file']").set_input_files(str(ROOT / "tests" / "data" / "coffee.jpg"))
        pg.get_by_text("coffee.jpg").first.wait_for()
        main = pg.locator("[data-testid='stMain']")
        main.get_by_text("Probably none of these ten classes").first.wait_for()
        record = json.loads((ROOT / "checkpoints" / "ood.json").read_text())
        main.get_by_text(f"it fires on {record['false_alarm_rate']:.1%} of the 10,000 real", exact=False).first.wait_for()
        _no_exception(pg)
        pg.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_click_on_a_confusion_matrix_cell_shows_that_cells_images(page, server):
    page.goto(f"{server}/explorer")
    page.get_by_role("heading", name="Stage explorer").wait_for()
    main = page.locator("[data-testid='stMain']")
    main.get_by_text("test images of").first.wait_for()
    grid = "Array.from(document.querySelectorAll('.js-plotly-plot')).find(p => p.querySelectorAll('.point').length === 100)"
    page.wait_for_function(f"!!({grid})")  # the matrix: one square per (true, predicted) pair
    page.wait_for_timeout(3000)  # the page's other charts settle
    target = 2 * 10 + 7  # true bird (row 2), predicted horse (column 7)
    box = page.evaluate(
        f"() => {{ const p = {grid}; p.scrollIntoView(); const r = p.querySelectorAll('.point')[{target}]"
        ".getBoundingClientRect(); return {x: r.x + r.width / 2, y: r.y + r.height / 2}; }"
    )
    page.mouse.click(box["x"], box["y"])
    main.get_by_text(re.compile(r"test images of bird predicted as horse")).wait_for(timeout=60_000)
    _no_exception(page)


_MAP = "Array.from(document.querySelectorAll('.js-plotly-plot')).filter(p => p.data && p.data[0].type === 'scattergl')"


def _map_points(pg, n_map=0):
    """Screen positions of the map's points (Plotly's own axis conversion), with their test indices."""
    return pg.evaluate(
        f"() => {{ const p = {_MAP}[{n_map}]; p.scrollIntoView({{block: 'center'}}); const L = p._fullLayout, "
        "r = p.getBoundingClientRect(), out = []; p._fullData.forEach(t => Array.from(t.x).forEach((x, i) => out.push({"
        "x: r.x + L._size.l + L.xaxis.l2p(x), y: r.y + L._size.t + L.yaxis.l2p(t.y[i]), index: t.customdata[i]})));"
        " return out; }"
    )


def test_a_lasso_on_the_feature_map_shows_the_selected_images(page, server):
    """Draw a lasso around a patch of the MLP's map: the page lists exactly the images inside it, as thumbnails."""
    page.goto(f"{server}/inside")
    page.get_by_role("heading", name="Inside the stages").wait_for()
    page.wait_for_function(f"{_MAP}.length === 2 && {_MAP}.every(p => p._fullLayout)")
    page.locator("[data-testid='stMain']").get_by_text("Draw a lasso", exact=True).click()  # taps select by default
    page.wait_for_function(f"{_MAP}.length === 2 && {_MAP}.every(p => p._fullLayout && p._fullLayout.dragmode === 'lasso')")
    page.wait_for_timeout(2000)
    pts = _map_points(page)
    # a square around one point, wide enough to hold its 20 nearest neighbours, drawn as a lasso (four corners)
    c = pts[len(pts) // 3]
    reach = sorted(max(abs(p["x"] - c["x"]), abs(p["y"] - c["y"])) for p in pts)[20] + 2
    x0, x1, y0, y1 = c["x"] - reach, c["x"] + reach, c["y"] - reach, c["y"] + reach
    inside = {p["index"] for p in pts if x0 < p["x"] < x1 and y0 < p["y"] < y1}
    assert 5 <= len(inside) < len(pts)
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in ((x1, y0), (x1, y1), (x0, y1), (x0, y0 + 1)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    main = page.locator("[data-testid='stMain']")
    said = main.get_by_text(re.compile(r"Selected on the mlp map: [\d,]+ images"))
    said.wait_for(timeout=60_000)
    n = int(re.search(r"map: ([\d,]+) images", said.inner_text()).group(1).replace(",", ""))
    assert abs(n - len(inside)) <= 2  # points on the lasso's edge may fall either way
    page.wait_for_timeout(1500)
    thumbs = main.locator("[data-testid='stImage'] img")
    assert thumbs.count() >= min(n, 48)
    _no_exception(page)


@pytest.mark.slow  # six pages at 390 px (about 40 s); CI runs it with the slow checks
def test_every_page_on_a_phone(server, browser, tmp_path):
    """390 px wide: every page opens without an error or a page-wide horizontal scroll, and an upload's answers
    are cards that each name their stage."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.set_default_timeout(90_000)
    for path, heading in PAGES:
        pg.goto(f"{server}/{path}")
        pg.get_by_role("heading", name=heading).wait_for()
        pg.wait_for_timeout(1000)
        _no_exception(pg)
        width = pg.evaluate("document.querySelector(\"[data-testid='stMain']\").scrollWidth")
        assert width <= 400, (path, width)
    img = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), (200, 150, 40)).save(img)
    pg.goto(f"{server}/predict")
    pg.get_by_role("heading", name="Upload & predict").wait_for()
    pg.locator("input[type='file']").set_input_files(str(img))
    pg.get_by_text(re.compile(r"^(All 3 stages agree|Stages disagree; weighted summary)")).first.wait_for()
    cards = pg.locator("[data-testid='stMarkdownContainer']").filter(has_text=CARD)
    assert cards.count() == 3
    boxes = [cards.nth(i).bounding_box() for i in range(3)]
    assert all(b["width"] > 250 for b in boxes)  # stacked full-width cards, not three slivers
    _no_exception(pg)
    context.close()


@pytest.mark.slow  # a server and a phone-sized browser of its own (about a minute); CI runs it with the slow checks
def test_on_a_phone_a_tap_selects_the_tapped_confusion_cell_and_galleries_are_grids(server, browser, trained_root):
    """390 px wide, touch: tapping a cell of the confusion matrix shows that cell's images (not a neighbour's),
    every class name is on both axes, and the cell's gallery is a grid of thumbnails, not one image per row. The cell
    tapped is the fullest one of the diagonal (many images to show), never the one the page opens on."""
    import json

    import numpy as np

    cm = np.array(json.loads((trained_root / "cnn" / "metrics.json").read_text())["confusion_matrix"])
    diagonal = np.diag(cm).copy()
    true_c = int(diagonal.argmax())
    assert diagonal[true_c] >= 8, diagonal
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.set_default_timeout(90_000)
    pg.goto(f"{server}/explorer")
    pg.get_by_role("heading", name="Stage explorer").wait_for()
    main = pg.locator("[data-testid='stMain']")
    main.get_by_text("test images of").first.wait_for()
    grid = "Array.from(document.querySelectorAll('.js-plotly-plot')).find(p => p.querySelectorAll('.point').length === 100)"
    pg.wait_for_function(f"!!({grid})")
    pg.wait_for_timeout(2000)
    labels = pg.evaluate(
        f"() => {{ const p = {grid}; return ['xtick', 'ytick'].map(c => Array.from(p.querySelectorAll('.' + c + ' text'))"
        ".filter(t => t.getBoundingClientRect().width > 0).map(t => t.textContent)); }"
    )
    assert [sorted(a) for a in labels] == [sorted(CLASSES)] * 2  # no class name skipped on either axis
    target = true_c * 10 + true_c
    box = pg.evaluate(
        f"() => {{ const p = {grid}; p.scrollIntoView({{block: 'center'}}); const r = p.querySelectorAll('.point')"
        f"[{target}].getBoundingClientRect(); return {{x: r.x + r.width / 2, y: r.y + r.height / 2, w: r.width}}; }}"
    )
    neighbours = pg.evaluate(
        f"() => {{ const p = {grid}; const a = p.querySelectorAll('.point')[{target}].getBoundingClientRect(), "
        f"b = p.querySelectorAll('.point')[{target + 1}].getBoundingClientRect(); return b.x - a.x; }}"
    )
    assert box["w"] < neighbours  # the cells' markers do not overlap
    pg.touchscreen.tap(box["x"], box["y"])
    main.get_by_text(f"test images of {CLASSES[true_c]} predicted as {CLASSES[true_c]}").wait_for(timeout=60_000)
    pg.wait_for_timeout(1500)
    thumbs = pg.evaluate(
        "() => Array.from(document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stImage'] img\"))"
        ".map(i => i.getBoundingClientRect()).filter(r => r.width > 0 && r.width < 120)"
        ".map(r => [r.top + window.scrollY, r.bottom + window.scrollY])"
    )
    thumbs.sort()
    first = [thumbs[0]]  # the cell's gallery: the thumbnails up to the first gap of more than a row
    for t in thumbs[1:]:
        if t[0] - first[-1][1] > 150:
            break
        first.append(t)
    thumbs = first
    assert len(thumbs) >= 4, thumbs
    tops = sorted({round(t) for t, _ in thumbs})
    assert len(thumbs) / len(tops) >= 3  # three or more thumbnails to a row
    span = max(b for _, b in thumbs) - min(t for t, _ in thumbs)
    assert span <= 2 * 844, span  # the gallery fits in two screens
    _no_exception(pg)
    context.close()


@pytest.mark.slow  # a phone-sized browser on the fixture server (about a minute); CI runs it with the slow checks
def test_on_a_phone_a_tap_on_the_feature_map_selects_that_image(server, browser):
    """390 px wide, touch: the two maps stack full width, and tapping a dot lists exactly that test image."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.set_default_timeout(90_000)
    pg.goto(f"{server}/inside")
    pg.get_by_role("heading", name="Inside the stages").wait_for()
    pg.wait_for_function(f"{_MAP}.length === 2 && {_MAP}.every(p => p._fullLayout)")
    pg.wait_for_timeout(2000)
    widths = pg.evaluate(f"() => {_MAP}.map(p => p.getBoundingClientRect().width)")
    assert all(w > 300 for w in widths), widths  # stacked, not two slivers
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    main = pg.locator("[data-testid='stMain']")
    selected = main.get_by_text(re.compile(r"Selected on the mlp map: 1 image\b"))
    for attempt in range(3):  # on a busy machine the page may still move after the dots were measured: measure again
        pts = _map_points(pg)

        # the dot farthest from any other, so the tap can only mean that one
        def room(p, pts=pts):
            return min(abs(p["x"] - q["x"]) + abs(p["y"] - q["y"]) for q in pts if q is not p)

        lonely = max(pts, key=room)
        assert room(lonely) > 8
        pg.touchscreen.tap(lonely["x"], lonely["y"])
        try:
            selected.wait_for(timeout=30_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    pg.wait_for_timeout(1000)
    captions = main.locator("[data-testid='stImage']").all_inner_texts()
    assert any("→" in c for c in captions)
    _no_exception(pg)
    context.close()
