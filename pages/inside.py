import os

import numpy as np
import pandas as pd
import streamlit as st

from cifar_dash import artifacts, embedding, inside_figures, label_issues, markdown, stages
from cifar_dash.data import CLASS_NAMES
from pages import _frame, _shared, _widgets

_frame.page_setup("Inside the stages")


def _file_stamp(path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


@st.cache_data(show_spinner=False, max_entries=32)
def _embedding(folder: str, stamp: int | None):
    try:
        return embedding.load(folder)
    except artifacts.ArtifactError as e:
        return str(e)


@st.cache_data(show_spinner=False, max_entries=4)
def _label_issues(root: str, stamp: int | None):
    try:
        return label_issues.load(root)
    except artifacts.ArtifactError as e:
        return str(e)


def stage_map(key: str, slot: str, drag: str) -> list[int]:
    """One stage's map with its separation figure; returns the test indices the user selected on it."""
    folder = artifacts.stage_dir(key)
    emb = _embedding(str(folder), _file_stamp(folder / artifacts.EMBEDDING))
    r = results_by_key[key]
    if isinstance(emb, str):
        missing = not (folder / artifacts.EMBEDDING).exists()
        st.info(
            (f"No feature map for {key} yet" if missing else _shared.md_escape(emb))
            + f": `python -m cifar_dash embed {key}` computes it (`python -m cifar_dash embed` does every stage)."
        )
        return []
    preds = _shared.stage_predictions(key)
    predicted = np.full(len(emb.indices), -1)
    pos = {int(i): j for j, i in enumerate(preds.indices)}
    have = [pos.get(int(i)) for i in emb.indices]
    if any(h is None for h in have):
        st.warning(f"{key}'s map is of other test images than its predictions: recompute it with `embed {key}`.")
        return []
    predicted = preds.predicted[have]
    labels = preds.labels[have]
    sep = (r.metrics or {}).get("separation") or emb.meta.get("separation") or {}
    title = f"{key}: accuracy {100 * r.accuracy:.1f}%" if r.metrics else key
    if sep.get("knn_accuracy") is not None:
        title += f" · kNN separation {100 * sep['knn_accuracy']:.1f}%"
    fig = inside_figures.embedding_map(emb.xy, labels, predicted, emb.indices, title=title, drag=drag)
    event = st.plotly_chart(
        fig,
        key=f"map_{slot}_{key}",
        on_select="rerun",
        selection_mode=("lasso", "box", "points"),
        config={"displaylogo": False, "modeBarButtonsToRemove": ["toImage"]},
    )
    st.caption(
        f"{len(emb.xy):,} test images; crosses are the ones {key} gets wrong. {emb.meta.get('method')} "
        f"(perplexity {emb.meta.get('perplexity'):.0f}, {emb.meta.get('preprocessing')}) of the "
        f"{emb.meta.get('feature_dims')}-dimensional {emb.meta.get('features')}. Distances between far-apart "
        "clusters mean little in such a map; the separation figure is measured in the features themselves."
    )
    points = ((event or {}).get("selection") or {}).get("points") or []
    return [int(np.ravel([p["customdata"]])[0]) for p in points if p.get("customdata") is not None]


st.title("Inside the stages")
res = _shared.all_results()
results_by_key = {r.stage.key: r for r in res}
trained = [r.stage.key for r in res if r.metrics]
if not trained:
    st.info("No stage is trained yet: start one from the sidebar, or `python -m cifar_dash train mlp`.")
    st.stop()

st.subheader("How the classes separate, stage by stage")
st.markdown(
    "Each dot is one of the 10,000 test images, placed by the stage's penultimate features (what its last layer "
    "reads): images the stage sees as alike land together. Watch the ten colours pull apart from the MLP to the "
    "ResNet. **Tap a dot, or draw a lasso or a box** (choose below) to see the images you selected."
)
DRAG = {"tap": "Tap or click dots", "lasso": "Draw a lasso", "box": "Draw a box"}
drag = (
    st.segmented_control(
        "Select on the maps",
        list(DRAG),
        default="tap",
        format_func=DRAG.get,
        key="map_drag",
        help="Tapping keeps the page scrolling on a phone; a lasso or a box selects many images at once.",
    )
    or "tap"
)
c1, c2 = st.columns(2)
best = max([k for k in trained if k != trained[0]] or trained, key=lambda k: results_by_key[k].accuracy)
left = c1.selectbox(
    "Left", list(stages.KEYS), index=list(stages.KEYS).index(trained[0]), key="map_left", format_func=_shared.stage_label
)
right = c2.selectbox(
    "Right", list(stages.KEYS), index=list(stages.KEYS).index(best), key="map_right", format_func=_shared.stage_label
)
selected = {}
with c1:
    selected[left] = stage_map(left, "left", drag) if left in trained else st.info(f"{left} is not trained yet.") or []
with c2:
    selected[right] = stage_map(right, "right", drag) if right in trained else st.info(f"{right} is not trained yet.") or []
_widgets.touch_hover()  # a tap on a phone selects the dot under the finger

for key, picked in selected.items():
    if not picked:
        continue
    preds = _shared.stage_predictions(key)
    pos = {int(i): j for j, i in enumerate(preds.indices)}
    rows = [pos[i] for i in picked if i in pos]
    correct = int((preds.predicted[rows] == preds.labels[rows]).sum())
    counts = pd.Series([CLASS_NAMES[preds.labels[j]] for j in rows]).value_counts()
    st.markdown(
        f"**Selected on the {key} map: {markdown.plural(len(rows), 'image')}**, {correct:,} predicted right "
        f"({100 * correct / max(len(rows), 1):.0f}%); true classes: " + ", ".join(f"{c} {n}" for c, n in counts.items())
    )
    shown = rows[:48]
    _widgets.gallery(
        [int(preds.indices[j]) for j in shown],
        [f"{CLASS_NAMES[preds.labels[j]]} → {CLASS_NAMES[preds.predicted[j]]}" for j in shown],
    )
    if len(rows) > len(shown):
        st.caption(f"The first {len(shown)} of {len(rows):,} shown; draw a smaller selection to see the others.")

st.plotly_chart(inside_figures.separation_chart(res), key="separation_chart")
st.caption(
    "kNN separation: the share of test images whose 10 nearest other test images (cosine distance in the stage's "
    "penultimate features) mostly share their true class. It measures the features, not the stage's classifier."
)

st.subheader("Test labels the strongest stages say are wrong")
root = artifacts.checkpoints_root()
li = _label_issues(str(root), _file_stamp(root / label_issues.FILE))
st.markdown(
    "Test labels are not always right: CIFAR-10's test set is known to hold some wrong labels (Northcutt et al., "
    "2021, *Pervasive Label Errors in Test Sets Destabilize Machine Learning Benchmarks*). These are the test "
    "images whose given label the three most accurate stages contradict most confidently: judge them yourself."
)
if isinstance(li, str):
    missing = not (root / label_issues.FILE).exists()
    st.info(
        ("No ranking yet" if missing else _shared.md_escape(li))
        + ": `python -m cifar_dash label-issues` ranks them from the stored test predictions (seconds)."
    )
    st.stop()
nc = li.get("noise_check") or {}
st.caption(
    f"Rule: {li['rule']}. Checked by planting noise: with {nc.get('n_flipped')} test labels ({nc.get('fraction', 0):.0%}) "
    f"changed at random, {100 * nc.get('recall_at', {}).get('100', 0):.0f}% of them rank in the top 100 and "
    f"{100 * nc.get('recall_at', {}).get('200', 0):.0f}% in the top 200 (mean of {len(nc.get('seeds', []))} seeds)."
)
n_show = st.select_slider("Suspects shown", [12, 24, 48, 96], value=24, key="suspects_n")
entries = li["entries"][:n_show]
_widgets.gallery(
    [e["index"] for e in entries],
    [
        f"#{k + 1} given {CLASS_NAMES[e['label']]} · suggested {CLASS_NAMES[e['suggested']]} "
        f"({e['agree']}/{len(li['stages'])} stages)"
        for k, e in enumerate(entries)
    ],
    width=_widgets.THUMB * 2,
)
st.dataframe(
    pd.DataFrame(
        [
            {
                "rank": k + 1,
                "test image": e["index"],
                "given": CLASS_NAMES[e["label"]],
                "suggested": CLASS_NAMES[e["suggested"]],
                "score": e["score"],
                "flagged": e.get("flagged", False),
                **{s: CLASS_NAMES[v] for s, v in zip(li["stages"], e.get("votes", []))},
            }
            for k, e in enumerate(entries)
        ]
    ),
    hide_index=True,
    width="stretch",
    height=300,
)
st.caption(
    "score: cleanlab's label quality (0-1, lower = more suspect); flagged: called a label issue by cleanlab's "
    "confident learning; one column per stage: its answer."
)
wi = li.get("what_if") or {}
if wi:
    st.markdown(f"**What if** the {li['n_flagged']} flagged images were left out? (a what-if, not a measurement)")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "stage": k,
                    "measured %": round(100 * v["accuracy"], 2),
                    f"without the {v['left_out']} flagged %": round(100 * v["accuracy_without"], 2),
                    "difference (points)": round(100 * (v["accuracy_without"] - v["accuracy"]), 2),
                }
                for k, v in wi.items()
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    st.caption(
        "The measured figure stays the stage's accuracy. The flagged images were chosen by the three strongest "
        "stages, so leaving them out favours those stages most."
    )
