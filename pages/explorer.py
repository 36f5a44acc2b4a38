import pandas as pd
import streamlit as st

from cifar_dash import analysis, artifacts, figures, markdown, report, stages
from cifar_dash.data import CLASS_NAMES
from pages import _frame, _shared, _widgets

_frame.page_setup("Stage explorer")

st.title("Stage explorer")
res = {r.stage.key: r for r in _shared.all_results()}
trained = [k for k, r in res.items() if r.metrics]
key = st.selectbox(
    "Stage",
    list(stages.KEYS),
    index=list(stages.KEYS).index(trained[-1]) if trained else 0,
    format_func=_shared.stage_label,
    key="explorer_stage",
)
r = res[key]
s = r.stage

left, right = st.columns([2, 3])
with left:
    st.subheader(s.title)
    st.markdown(f"**What changes:** {s.changed}")
    st.markdown(f"**The seed says:** {s.seed_says}")
    st.metric(
        "Test accuracy",
        f"{100 * r.accuracy:.2f}%" if r.metrics else "—",
        delta=f"{100 * r.accuracy - s.reported_accuracy:+.2f} vs reported {s.reported_accuracy:.2f}%" if r.metrics else None,
    )
with right:
    recipe = (r.metrics or {}).get("recipe") or s.recipe.to_dict()
    st.markdown("**Recipe" + (" actually used**" if r.metrics else " (not trained yet)**"))
    phases = recipe.pop("phases", [])
    st.dataframe(pd.DataFrame(phases), hide_index=True, width="stretch")
    st.dataframe(
        pd.DataFrame([{"setting": k, "value": str(v)} for k, v in recipe.items()]),
        hide_index=True,
        width="stretch",
        height=240,
    )

if r.status == "damaged":
    st.error(f"{key} is damaged: " + _shared.md_escape(r.error))
    st.stop()
if not r.metrics:
    st.info(f"{key} is not trained yet: start it from the sidebar, or `python -m cifar_dash train {key}`.")
    st.stop()
if r.status == "stale":
    st.warning(_shared.md_escape(r.error))

m = r.metrics
ev = (
    f"{m['n_test']:,} test images · {markdown.plural(m.get('epochs'), 'epoch')} · "
    f"{markdown.seconds(m.get('train_seconds'))} "
    f"training on {m.get('train_machine')} · {m['params']:,} parameters ({m['trainable_params']:,} trainable) · "
    f"Keras {m.get('keras_version')} ({m.get('backend')})"
)
if m.get("backbone"):
    w = m.get("backbone_weights") or {}
    ev += f" · backbone {analysis.backbone_label(r)}"
    if isinstance(w, dict) and w.get("file"):
        ev += f" ({w['file']})"
st.caption(ev)
differs = report.deviations(r)
if differs:
    st.caption("Differs from the stage's recipe: " + "; ".join(differs) + ".")
if m.get("tta_accuracy"):
    names = {"none": "one view", "flip": "+ flip (2 views)", "flip_shift": "+ 1-pixel shifts (6 views)"}
    st.caption(
        "Test-time augmentation, same model: "
        + " · ".join(f"{names.get(k, k)} {100 * v:.2f}%" for k, v in m["tta_accuracy"].items())
    )
try:
    seeds = artifacts.read_json(r.folder / artifacts.SEEDS)
    sd = seeds.get("std_test_accuracy")
    st.markdown(
        f"**Run-to-run:** {seeds['n_runs']} seeds, test accuracy {100 * seeds['mean_test_accuracy']:.2f}%"
        + (f" ± {100 * sd:.2f} (sample standard deviation)" if sd is not None else "")
        + (f", {seeds['mean_train_seconds'] / 60:.1f} min training on average" if seeds.get("mean_train_seconds") else "")
        + "."
    )
except artifacts.ArtifactError:
    pass
try:
    protocol, ablations = report.ablation_table(artifacts.read_json(r.folder / artifacts.ABLATIONS))
except artifacts.ArtifactError as e:
    protocol, ablations = "", []
    if (r.folder / artifacts.ABLATIONS).exists():
        st.warning(_shared.md_escape(str(e)))
if ablations:
    st.subheader("What each trick is worth")
    st.caption(f"The recipe retrained with one trick removed at a time (`benchmarks/ablate_speedrun.py`): {protocol}.")
    st.dataframe(pd.DataFrame(ablations), hide_index=True, width="stretch")

stage_runs = _shared.stage_runs(key)
others = [x for x in stage_runs if not x.published]
with st.expander(f"Runs of this stage: {len(stage_runs)} ({len(others)} besides the published one)"):
    _widgets.runs_table(stage_runs)
    st.page_link("pages/training.py", label="Compare, promote or delete runs", icon=":material/compare_arrows:")

st.subheader("Training curves")
spans = report.lineage(r.train_info or {}, m.get("epochs"))
tab_acc, tab_loss, tab_lr = st.tabs(["accuracy", "loss", "learning rate"])
with tab_acc:
    st.plotly_chart(figures.training_curves(r.history, "accuracy", spans), key="curve_acc")
with tab_loss:
    st.plotly_chart(figures.training_curves(r.history, "loss", spans), key="curve_loss")
with tab_lr:  # the rate at the end of each epoch (one-cycle recipes change it every step)
    st.plotly_chart(figures.training_curves(r.history, "learning_rate", spans), key="curve_lr")
    st.caption(
        f"Rate schedule of this run: {str(recipe.get('lr_schedule', 'constant')).replace('_', ' ')}; the rate "
        "each epoch ended with."
    )
if r.history:
    last = r.history[-1]
    if "val_accuracy" in last:
        gap = last.get("accuracy", 0) - last["val_accuracy"]
        held = f"validation {last['val_accuracy']:.3f} (gap {gap:+.3f})"
    else:
        n_train = m.get("n_train")
        held = "no validation curve: this recipe holds no training images out" + (
            f" (it trained on all {n_train:,})" if n_train else ""
        )
    st.caption(
        f"Last epoch: train accuracy {last.get('accuracy', 0):.3f}, {held}. Training accuracy is measured "
        "with augmentation/MixUp on, where the recipe has them."
        + (
            " A dashed line marks where the run was continued from a published run (the optimizer restarted there)."
            if len(spans) > 1
            else ""
        )
    )

st.subheader("Confusion matrix")
normalize = st.toggle("Row-normalised", key="cm_norm")
event = st.plotly_chart(
    figures.confusion_heatmap(m["confusion_matrix"], normalize), key="cm_chart", on_select="rerun", selection_mode="points"
)
_widgets.touch_hover()
points = [p for p in ((event or {}).get("selection", {}).get("points", []) if event else []) if p.get("x") in CLASS_NAMES]
preds = _shared.stage_predictions(key)
cm = pd.DataFrame(m["confusion_matrix"]).to_numpy()
off = cm.copy()
for i in range(len(off)):
    off[i, i] = 0
default_true, default_pred = divmod(int(off.argmax()), len(CLASS_NAMES))
if points:
    default_true = CLASS_NAMES.index(points[0]["y"])
    default_pred = CLASS_NAMES.index(points[0]["x"])
c1, c2 = st.columns(2)
true_c = c1.selectbox("True class", CLASS_NAMES, index=default_true, key=f"cell_true_{default_true}_{default_pred}")
pred_c = c2.selectbox("Predicted as", CLASS_NAMES, index=default_pred, key=f"cell_pred_{default_true}_{default_pred}")
ti, pi = CLASS_NAMES.index(true_c), CLASS_NAMES.index(pred_c)
idx = analysis.cell_indices(preds, ti, pi)
st.markdown(
    f"**{len(idx)}** test images of *{true_c}* predicted as *{pred_c}* (most confident first; click a cell "
    "in the matrix or pick the classes)."
)
shown = idx[:32]
_widgets.gallery(
    preds.indices[shown],
    [f"{CLASS_NAMES[preds.labels[j]]} → {CLASS_NAMES[preds.predicted[j]]} {preds.confidence[j]:.0%}" for j in shown],
)

if len(shown):
    # a toggle, not an expander: an expander's body runs (and would load every model) even while it is collapsed
    if st.toggle(
        "Where does each stage look? (saliency maps of every trained stage for one image of this cell)",
        key="explain_on",
        help="Loads each trained stage's model (the first time, about a minute for all nine on a 2-core CPU).",
    ):
        t = _shared.test_set()
        choices = [int(preds.indices[j]) for j in shown]
        choices = [choices[k] for k in t.have(choices)]
        if t.x is None:
            st.warning(_shared.md_escape(t.error))
        elif not choices:
            st.caption("None of this cell's images is in the shipped sample; set CIFAR10_PATH to see them.")
        else:
            pick = st.selectbox("Test image", choices, key="explain_pick")
            method = _widgets.saliency_method("explorer_saliency_method")
            keys = [r.stage.key for r in _shared.trained_results()]
            _widgets.saliency_row(t.x[pick], keys, method=method)
            st.caption("Red = the region the stage's answer depends on most; each map is scaled to its own peak.")

c1, c2 = st.columns(2)
with c1:
    st.subheader("Per-class precision, recall, F1")
    st.plotly_chart(figures.per_class_bars(m["per_class"]), key="per_class")
    st.dataframe(pd.DataFrame(m["per_class"]).round(3), hide_index=True, width="stretch")
with c2:
    st.subheader("Calibration")
    st.plotly_chart(figures.reliability_diagram(m["calibration"]), key="reliability")
    cal = m["calibration"]
    said = (
        f"Mean confidence {cal['mean_confidence']:.3f}; on right answers "
        f"{cal['mean_confidence_correct'] or 0:.3f}, on wrong answers {cal['mean_confidence_wrong'] or 0:.3f}."
    )
    if cal.get("temperature") is not None:
        fit = "validation images" if cal.get("fit_on") == "validation" else str(cal.get("fit_on"))
        said += (
            f" Temperature {cal['temperature']:.2f} ({'over' if cal['temperature'] > 1 else 'under'}-confident "
            f"before scaling), fit on {cal.get('n_fit', 0):,} {fit}; the upload page shows scaled probabilities."
        )
    else:
        said += f" No temperature fitted yet: `python -m cifar_dash calibrate {key}`."
    st.caption(said)

st.subheader("Most confident mistakes")
st.page_link(
    "pages/inside.py",
    label="Some of these may be wrong test labels: see the ones the strongest stages doubt, and this stage's map",
    icon=":material/scatter_plot:",
)
worst = analysis.confident_mistakes(preds, 24)
_widgets.gallery(
    preds.indices[worst],
    [
        f"true {CLASS_NAMES[preds.labels[j]]}, said {CLASS_NAMES[preds.predicted[j]]} {preds.confidence[j]:.0%}"
        for j in worst
    ],
    empty="No mistakes.",
)
