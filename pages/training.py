import time

import pandas as pd
import streamlit as st

from cifar_dash import figures, jobs, markdown, publish, runs, stages
from pages import _frame, _shared, _widgets

_frame.page_setup("Training")

st.title("Training jobs and runs")
st.caption(
    "Every training is a run of its own, kept in `checkpoints/STAGE/runs/RUN_ID/` (model, history, metrics, "
    "`log.csv`, TensorBoard logs). A run never replaces the published model: compare it below and promote it if "
    "it is better. Jobs run `python -m cifar_dash train STAGE` in the background; a cancelled or killed run resumes "
    "from its last backup (each epoch end, and every 100 steps in long epochs)."
)


@st.fragment(run_every=2)
def _table():
    rows = []
    for key in stages.KEYS:
        s = jobs.status(key)
        p = s.progress
        rows.append(
            {
                "stage": key,
                "state": s.state,
                "run": (s.job or {}).get("run_id") or p.get("run_id") or "",
                "epoch": f"{p.get('epoch')}/{p.get('epochs')}" if p.get("epochs") else "",
                "ETA": markdown.seconds(p.get("eta_seconds")) if s.active else "",
                "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(s.job["started"]))
                if s.job
                else ("outside the dashboard" if s.external else ""),
                "message": s.message or "",
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    for key in stages.KEYS:
        if jobs.status(key).job:
            with st.expander(f"{key} log"):
                st.code(jobs.tail_log(key, 60) or "(empty)", language=None)


_table()

st.header("Runs")
keys = list(stages.KEYS)
stage = st.selectbox(
    "Stage",
    keys,
    index=keys.index(st.session_state.get("train_stage", keys[0])),
    format_func=_shared.stage_label,
    key="runs_stage",
)
listed = runs.list_runs(stage)  # uncached: this page acts on them
if not listed:
    st.info(f"No runs of {stage} yet. Start one from the sidebar.")
    st.stop()
# a line between the selector and the table: the table's toolbar (on hover, at its top right) covered the selector
st.caption(f"{markdown.plural(len(listed), 'run')} of {stage}, oldest first; the published one is marked.")
_widgets.runs_table(listed)
st.caption(f"Open every run's curves in TensorBoard: `tensorboard --logdir checkpoints/{stage}/runs`.")

finished = [r for r in listed if r.state == "finished"]
by_id = {r.run_id: r for r in listed}

st.subheader("Compare two runs")
if len(finished) < 2:
    st.caption("Comparing needs two finished runs of this stage.")
else:
    ids = [r.run_id for r in finished]
    published = next((r.run_id for r in finished if r.published), ids[0])
    other = next((i for i in reversed(ids) if i != published), ids[-1])
    c1, c2 = st.columns(2)
    label = lambda i: by_id[i].label  # noqa: E731
    a = c1.selectbox("Run A", ids, index=ids.index(published), key=f"cmp_run_a_{stage}", format_func=label)
    b = c2.selectbox("Run B", ids, index=ids.index(other), key=f"cmp_run_b_{stage}", format_func=label)
    d = runs.compare(by_id[a], by_id[b])
    acc_a, acc_b, change = d["test_accuracy"]
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Run A test accuracy", f"{100 * acc_a:.2f}%")
    m2.metric("Run B test accuracy", f"{100 * acc_b:.2f}%", delta=f"{100 * change:+.2f} points")
    m3.metric("Epochs (A / B)", f"{d['epochs'][0]} / {d['epochs'][1]}")
    m4.metric(
        "Training time (A / B)",
        markdown.seconds_pair(*d["train_seconds"]),
    )
    if d["n_test"][0] != d["n_test"][1]:
        st.warning(f"The runs were tested on different numbers of images ({d['n_test'][0]:,} and {d['n_test'][1]:,}).")
    if d["machine"][0] != d["machine"][1]:
        st.caption(f"Trained on: A {d['machine'][0]}; B {d['machine'][1]}.")
    pc = [row for row in d["per_class"] if row["change"] is not None]
    if pc:
        st.plotly_chart(
            figures.per_class_delta([r["a"] for r in pc], [r["b"] for r in pc], "A", "B"), key=f"runs_delta_{stage}"
        )
    st.plotly_chart(
        figures.runs_curves({f"A {a}": by_id[a].history(), f"B {b}": by_id[b].history()}), key=f"runs_curves_{stage}"
    )

st.subheader("Publish or delete a run")


def _forget(key: str):
    st.session_state.pop(key, None)


@st.dialog("Promote a run", width="medium", on_dismiss=lambda: _forget("promote_pending"))
def _promote_dialog(new, old):
    """The confirmation: what is published now beside what would be; Confirm publishes, Cancel or closing keeps all."""
    st.markdown(f"**Promote run {new.run_id}?** It becomes the published {stage} model on every page.")
    c1, c2 = st.columns(2)
    if old is not None:
        c1.metric(f"Published now: {old.run_id}", f"{100 * old.test_accuracy:.2f}%" if old.test_accuracy else "-")
        c1.caption(f"{markdown.plural(old.epochs, 'epoch')} · {markdown.seconds(old.train_seconds)} · {old.machine or '-'}")
    diff = (new.test_accuracy - old.test_accuracy) if old is not None and old.test_accuracy else None
    c2.metric(
        f"Would become: {new.run_id}",
        f"{100 * new.test_accuracy:.2f}%",
        delta=f"{100 * diff:+.2f} points" if diff is not None else None,
    )
    c2.caption(f"{markdown.plural(new.epochs, 'epoch')} · {markdown.seconds(new.train_seconds)} · {new.machine or '-'}")
    if diff is not None and diff < 0:
        st.warning("This run scores lower than the published one.")
    st.caption("The published run is kept as a run: promote it again to undo.")
    b1, b2 = st.columns(2)
    if b1.button("Confirm promotion", type="primary", key="promote_confirm"):
        try:
            st.session_state["promote_done"] = publish.promote(stage, new.run_id)
            _forget("promote_pending")
            st.rerun()
        except runs.RunError as e:
            st.error(_shared.md_escape(str(e)))
    if b2.button("Cancel", key="promote_cancel"):
        _forget("promote_pending")
        st.rerun()


@st.dialog("Delete a run", on_dismiss=lambda: _forget("delete_pending"))
def _delete_dialog(run_id: str):
    st.warning(f"Delete run {run_id} and all its files? This cannot be undone.")
    b1, b2 = st.columns(2)
    if b1.button("Delete for good", key="delete_confirm"):
        try:
            publish.delete(stage, run_id)
            st.toast(f"Deleted run {run_id}")
        except runs.RunError as e:
            st.error(_shared.md_escape(str(e)))
            return
        _forget("delete_pending")
        st.rerun()
    if b2.button("Keep it", key="delete_cancel"):
        _forget("delete_pending")
        st.rerun()


candidates = [r.run_id for r in finished if not r.published]
if candidates:
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    choice = c1.selectbox("Finished run", candidates, index=len(candidates) - 1, key=f"promote_pick_{stage}")
    if c2.button("Promote…", key="promote_ask"):
        st.session_state["promote_pending"] = (stage, choice)
else:
    st.caption("No finished run other than the published one.")
pending = st.session_state.get("promote_pending")
if pending and pending[0] == stage and pending[1] in by_id:  # kept in the session so a rerun keeps the dialog open
    _promote_dialog(by_id[pending[1]], next((r for r in listed if r.published), None))
if done := st.session_state.pop("promote_done", None):
    st.success(
        f"Published run {done['promoted']}" + (f"; {done['replaced']} is kept as a run." if done["replaced"] else ".")
    )

deletable = [r.run_id for r in listed if not r.published and r.state != "training" and r.folder is not None]
if deletable:
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    pick = c1.selectbox("Run to delete", deletable, key=f"delete_pick_{stage}", format_func=lambda i: by_id[i].label)
    if c2.button("Delete…", key="delete_ask"):
        st.session_state["delete_pending"] = (stage, pick)
    doomed = st.session_state.get("delete_pending")
    if doomed and doomed[0] == stage and doomed[1] in by_id:
        _delete_dialog(doomed[1])
