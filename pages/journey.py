"""The Journey page (home): the accuracy growth curve, the stage table, separation, cost, the seed's claims."""

import os

import pandas as pd
import streamlit as st

from cifar_dash import analysis, claims, data, figures, inside_figures, jobs
from pages import _frame, _shared

_frame.page_setup("Journey")

res = _shared.all_results()
st.title(analysis.journey_title(res))
st.caption(
    "Each stage changes one idea. Dashed grey: the seed deck's reported figure. Blue: what this project's "
    "code measured on the 10,000 CIFAR-10 test images, with the evidence on hover."
)
# one link a line: a link's label does not wrap, and in four columns Streamlit cut these short with an ellipsis
st.page_link("pages/predict.py", label="Upload a photo: watch every stage answer", icon=":material/upload:")
st.page_link("pages/explorer.py", label="Explore a stage: its mistakes and curves", icon=":material/search:")
st.page_link("pages/inside.py", label="Inside the stages: feature maps, doubtful labels", icon=":material/scatter_plot:")
st.caption("Retrain any stage from the sidebar; a run's progress shows there and on the Training page.")
st.plotly_chart(figures.growth_curve(res), key="growth_curve")
for note in analysis.order_inversions(res):
    st.info(note, icon=":material/swap_vert:")

rows = analysis.stage_rows(res)
df = pd.DataFrame(rows).drop(columns=["error"])
# the columns a reader compares first, then the evidence; numbers with thousands separators
first = [
    "stage",
    "title",
    "reported %",
    "measured %",
    "kNN separation %",
    "backbone",
    "epochs",
    "train s",
    "params",
    "status",
]
df = df[first + [c for c in df.columns if c not in first]]
df["backbone"] = df["backbone"].fillna("-")
st.subheader("Stages")
st.dataframe(
    df,
    hide_index=True,
    width="stretch",
    column_config={
        "title": st.column_config.TextColumn(width="medium"),
        "reported %": st.column_config.NumberColumn(format="%.2f"),
        "measured %": st.column_config.NumberColumn(format="%.2f"),
        "kNN separation %": st.column_config.NumberColumn(
            format="%.2f", help="how well the classes separate in the stage's features: Inside the stages"
        ),
        "train s": st.column_config.NumberColumn("train time (s)", format="localized"),
        "params": st.column_config.NumberColumn(format="localized"),
        "trainable": st.column_config.NumberColumn(format="localized"),
        "test images": st.column_config.NumberColumn(format="localized"),
    },
)
missing = [r for r in res if r.status != "trained"]
for r in missing:
    if r.status == "untrained":
        c1, c2 = st.columns([5, 1])
        c1.info(
            f"**{r.stage.key}** is not trained yet: {r.stage.recipe.epochs} epochs of its recipe, or run "
            f"`python -m cifar_dash train {r.stage.key}`."
        )
        if c2.button("Train now", key=f"train_now_{r.stage.key}"):
            try:
                jobs.start(r.stage.key, data_path=os.environ.get(data.ENV_VAR))
                st.toast(f"Started training {r.stage.key}; progress is in the sidebar")
            except jobs.JobRunning as e:
                st.warning(_shared.md_escape(str(e)))
    else:
        st.error(f"**{r.stage.key}**: " + _shared.md_escape(r.error))

st.subheader("Accuracy beside class separation")
st.plotly_chart(inside_figures.separation_chart(res), key="separation_chart")
st.caption(
    "kNN separation: leave-one-out 10-nearest-neighbour accuracy of the true labels in each stage's penultimate "
    "features (cosine distance), measured by `python -m cifar_dash embed`. See the maps on *Inside the stages*."
)

st.subheader("Accuracy against cost")
axis = st.radio(
    "Cost",
    ["params", "train_seconds", "flops_per_image"],
    horizontal=True,
    key="cost_axis",
    format_func=lambda v: {
        "params": "parameters",
        "train_seconds": "training seconds",
        "flops_per_image": "FLOPs per image (forward)",
    }[v],
)
st.plotly_chart(figures.cost_scatter(res, axis), key="cost_scatter")
st.caption("Training seconds are wall-clock on the machine named in each stage's evidence; compare within one machine.")

st.subheader("What the data says")
st.caption(
    "Each claim of the seed deck, checked against this project's measurements (computed from the stored "
    "artifacts, not typed)."
)
icons = {
    "supported": ":material/check_circle:",
    "contradicted": ":material/cancel:",
    "within noise": ":material/balance:",
    "not measured": ":material/help:",
}
for c in claims.evaluate_claims(res):
    st.markdown(f"{icons[c.verdict]} **{c.claim}** — *{c.verdict}*. {c.evidence}")

rb = _shared.robustness_by_stage()
st.subheader("Robustness: accuracy when the input changes")
if rb:
    st.plotly_chart(figures.robustness_chart(rb), key="robustness")
    st.caption(
        "Colour only = heavy blur (shapes gone); shape only = grayscale edges (colours gone). Measured by "
        "`python -m cifar_dash robustness STAGE` on the first test images (count in the hover of each file)."
    )
else:
    st.info("No robustness sweep yet: run `python -m cifar_dash robustness STAGE`.")
st.subheader("Calibration across stages")
st.plotly_chart(figures.calibration_chart(res), key="calibration")
st.caption(
    "A well-calibrated model is less confident when it is wrong; ECE is the gap between confidence and "
    "accuracy, averaged over 15 confidence bins."
)
