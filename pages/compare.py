import numpy as np
import streamlit as st

from cifar_dash import analysis, figures
from cifar_dash.data import CLASS_NAMES
from pages import _frame, _shared, _widgets

_frame.page_setup("Compare")

st.title("Compare stages")
trained = [r.stage.key for r in _shared.trained_results()]
if len(trained) < 2:
    st.info("Comparing needs at least two trained stages. Train one from the sidebar.")
    st.stop()
c1, c2 = st.columns(2)
a = c1.selectbox("Earlier stage", trained, index=0, format_func=_shared.stage_label, key="cmp_a")
b = c2.selectbox("Later stage", trained, index=len(trained) - 1, format_func=_shared.stage_label, key="cmp_b")
if a == b:
    st.info(
        f"Both sides are {_shared.stage_label(a)}: a stage compared with itself fixes and breaks nothing. "
        "Pick two different stages above."
    )
pa, pb = _shared.stage_predictions(a), _shared.stage_predictions(b)

st.subheader(f"Per-class accuracy change: {a} → {b}")
st.plotly_chart(figures.per_class_delta(analysis.per_class_accuracy(pa), analysis.per_class_accuracy(pb), a, b), key="delta")

fb = analysis.fixed_and_broken(pa, pb)
n = len(fb["indices"])
m1, m2, m3, m4 = st.columns(4)
m1.metric("Fixed by the later stage", f"{len(fb['fixed']):,}")
m2.metric("Broken by the later stage", f"{len(fb['broken']):,}")
m3.metric("Both right", f"{fb['both_right']:,}")
m4.metric("Both wrong", f"{fb['both_wrong']:,}")
st.caption(f"Over the {n:,} test images both stages were evaluated on.")


def _captions(indices):
    pos_a = np.searchsorted(pa.indices, indices)
    pos_b = np.searchsorted(pb.indices, indices)
    return [
        f"{CLASS_NAMES[pa.labels[i]]}: {CLASS_NAMES[pa.predicted[i]]} → {CLASS_NAMES[pb.predicted[j]]}"
        for i, j in zip(pos_a, pos_b)
    ]


t1, t2 = st.tabs([f"Fixed ({len(fb['fixed'])})", f"Broken ({len(fb['broken'])})"])
with t1:
    show = fb["fixed"][:32]
    _widgets.gallery(show, _captions(show))
with t2:
    show = fb["broken"][:32]
    _widgets.gallery(show, _captions(show))

st.subheader("Agreement between all trained stages")
all_preds = {k: _shared.stage_predictions(k) for k in trained}
keys, mat = analysis.agreement_matrix(all_preds)
st.plotly_chart(figures.agreement_heatmap(keys, mat), key="agreement")
st.caption("Share of test images on which two stages predict the same class.")

st.subheader("Where the stages disagree most")
disputed = analysis.most_disputed(all_preds, 16)
_widgets.gallery(
    [d["index"] for d in disputed], [f"true {CLASS_NAMES[d['label']]}: {d['distinct']} different answers" for d in disputed]
)
with st.expander("Votes"):
    st.dataframe(
        [
            {"test image": d["index"], "true": CLASS_NAMES[d["label"]], **{k: CLASS_NAMES[v] for k, v in d["votes"].items()}}
            for d in disputed
        ],
        hide_index=True,
    )
