"""Widgets the pages share: test-image galleries, saliency rows, the runs table, the touch shim for charts."""

from __future__ import annotations

import numpy as np
import streamlit as st

from cifar_dash import (
    markdown,
    predict,
    stages,
    testimages,
)
from pages._shared import md_escape, stage_model, stage_stamp, test_set, trained_results


@st.cache_data(show_spinner=False, max_entries=512)
def _saliency(key: str, stamp: tuple, digest: str, method: str, _img: np.ndarray) -> dict:
    from cifar_dash import saliency

    loaded = stage_model(key)
    return saliency.stage_map(loaded.model, _img, method=method, tta=loaded.tta)


SALIENCY_LABELS = {
    "occlusion": "Occlusion (probability drop when a patch is hidden)",
    "gradcam": "Grad-CAM for convolutional stages, occlusion for MLPs",
}


def saliency_method(key: str) -> str:
    return st.radio("Saliency method", list(SALIENCY_LABELS), format_func=SALIENCY_LABELS.get, key=key, horizontal=True)


def saliency_row(img: np.ndarray, keys: list[str], method: str = "occlusion"):
    """One map per stage over the same image, three to a row at 12x the input, each scaled to its own peak (one
    scale for all would leave the good models' maps nearly blank beside the weak ones'); the peak is in each
    caption and the colour bar above says what the colours mean."""
    from cifar_dash import saliency
    from cifar_dash.data import CLASS_NAMES

    digest = predict.image_digest(img)
    maps, failed = {}, {}
    bar = st.progress(0.0) if len(keys) > 1 else None
    for n, k in enumerate(keys):
        if bar is not None:
            bar.progress(n / len(keys), text=f"Saliency map {n + 1} of {len(keys)}: {k} (loading its model on first use)")
        try:
            maps[k] = _saliency(k, stage_stamp(k), digest, method, img)
        except Exception as e:  # a model that does not load: that stage says so, the others draw
            failed[k] = f"{k}: no map ({type(e).__name__}: {e})"
    if bar is not None:
        bar.empty()
    unit = "probability drop when a patch is hidden" if method == "occlusion" else "Grad-CAM weight (occlusion for MLPs)"
    legend = st.columns([1, 2])
    legend[0].image(saliency.colour_bar(), caption=f"0 (blue) → the map's peak (red): {unit}", width="stretch")
    per_row = 3
    for start in range(0, len(keys), per_row):
        cols = st.columns(per_row)
        for col, k in zip(cols, keys[start : start + per_row]):
            if k in failed:
                col.warning(md_escape(failed[k][:300]))
                continue
            m = maps[k]
            top = float(np.max(m["map"])) if np.size(m["map"]) else 0.0  # the colour scale's top
            # occlusion: the peak probability drop, the same figure in both modes; Grad-CAM has no unit of its own
            said = f"occlusion, peak drop {m['peak']:.2f}" if m["method"] == "occlusion" else "Grad-CAM, peak 1 (relative)"
            col.image(
                saliency.overlay(img, m["map"], max(top, 1e-6), scale=12),
                width="stretch",
                caption=f"{stages.get(k).label}: {CLASS_NAMES[m['target']]} {m['probability']:.0%} · {said}",
            )


def test_images_note(t: testimages.TestImages) -> None:
    if t.error:
        st.warning("Test images: " + md_escape(t.error))
    if t.source == "sample":
        st.caption(
            f"Test images from the sample shipped with the app ({t.n_available:,} of 10,000, the ones the pages "
            "show first); set CIFAR10_PATH to a CIFAR-10 copy to see every one."
        )


def upscale(img: np.ndarray, factor: int = 3) -> np.ndarray:
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


THUMB = 72  # px: four thumbnails side by side on a 390 px phone


_TOUCH_HOVER = """<script>
(() => {
  if (window.__cifarDashTouchHover) return;
  window.__cifarDashTouchHover = true;
  // A tap on a Plotly chart selects the point under the finger only if Plotly hovered it first, and a finger does not
  // hover: before Plotly sees the tap, move a mouse pointer to it.
  document.addEventListener("touchstart", (e) => {
    const t = e.touches && e.touches[0];
    if (!t || !e.target.closest || !e.target.closest(".js-plotly-plot")) return;
    const at = {clientX: t.clientX, clientY: t.clientY, bubbles: true, view: window};
    e.target.dispatchEvent(new MouseEvent("mousemove", at));
  }, {capture: true, passive: true});
})();
</script>"""


def touch_hover() -> None:
    """Make a tap on a chart select the tapped point (see _TOUCH_HOVER); once per page, invisible."""
    st.html(_TOUCH_HOVER, unsafe_allow_javascript=True, width="content")


def gallery(indices, captions, empty: str = "No images.", width: int = THUMB):
    t = test_set()
    if t.x is None:
        st.warning("Test images unavailable: " + md_escape(t.error))
        return
    indices = list(indices)
    if not indices:
        st.caption(empty)
        return
    evaluated_on = {(r.metrics or {}).get("test_data_fingerprint") for r in trained_results()} - {None}
    if t.source == "sample" and t.fingerprint and evaluated_on and t.fingerprint not in evaluated_on:
        st.warning(
            "The test-image sample shipped with the app is of the official CIFAR-10 test set, and these checkpoints "
            "were evaluated on other data: set CIFAR10_PATH to the data they were evaluated on."
        )
        return
    keep = t.have(indices)
    if len(keep) < len(indices):
        if t.source == "sample":
            st.caption(
                f"{len(keep)} of these {len(indices)} images are in the sample shipped with the app; set "
                "CIFAR10_PATH to a CIFAR-10 copy to see them all."
            )
        else:
            st.warning(
                f"{len(indices) - len(keep)} of these test images are not in the loaded data set "
                f"({len(t.x):,} test images); is CIFAR10_PATH the data the stages were evaluated on?"
            )
        indices, captions = [indices[k] for k in keep], [captions[k] for k in keep]
    # thumbnails that wrap: four to a row on a phone, a dozen on a desktop (columns would stack one per row on a
    # phone); each image's toolbar opens it full screen
    with st.container(horizontal=True, gap="small"):
        for i, cap in zip(indices, captions):
            st.image(upscale(t.x[i], 3 if width <= THUMB else 5), caption=cap, width=width)


def runs_table(listed: list) -> None:
    """A stage's runs as a table: the published one marked, accuracy in percent, time in words."""
    import pandas as pd

    rows = []
    for r in listed:
        d = r.row()
        rows.append(
            {
                "run": d["run"],
                "published": "yes" if d["published"] else "",
                "state": d["state"],
                "started": d["started"],
                "epochs": str(d["epochs"] or "-"),
                "test accuracy": f"{100 * d['test accuracy']:.2f}%" if d["test accuracy"] is not None else "-",
                "training time": markdown.seconds(d["train seconds"]),
                "machine": d["machine"] or "-",
                "note": d["note"] or "",
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
