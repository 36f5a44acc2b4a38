"""The frame of every page: page config, navigation, the training sidebar and a running job's progress."""

from __future__ import annotations

import os
import time

import streamlit as st

from cifar_dash import (
    artifacts,
    continuation,
    data,
    figures,
    jobs,
    markdown,
    runs,
    runtime,
    speed,
    stages,
)
from cifar_dash.request import TrainingRequest
from pages._shared import all_results, md_escape, stage_label

NAV = (
    ("pages/journey.py", "Journey", ":material/trending_up:"),
    ("pages/explorer.py", "Stage explorer", ":material/search:"),
    ("pages/inside.py", "Inside the stages", ":material/scatter_plot:"),
    ("pages/compare.py", "Compare", ":material/compare_arrows:"),
    ("pages/predict.py", "Upload & predict", ":material/upload:"),
    ("pages/training.py", "Training", ":material/model_training:"),
)


ICON = artifacts.project_root() / "assets" / "icon.png"


def page_setup(title: str):
    """First call of every page: page config, navigation links and the training controls in the sidebar."""
    # the icon is a shipped file: a Material icon name would make the browser fetch it from the internet
    st.set_page_config(page_title=f"{title} · cifar-dash", page_icon=str(ICON), layout="wide")
    with st.sidebar:
        for path, label, icon in NAV:
            st.page_link(path, label=label, icon=icon)
        st.divider()
    training_sidebar()
    _job_banner()


def _done(p: dict) -> float:
    """The share of a run's steps done, 0..1, from its progress.json (0 before the first epoch has a step count)."""
    if not (p.get("epochs") and p.get("steps")):
        return 0.0
    done = ((p["epoch"] - 1) * p["steps"] + p.get("step", 0)) / (p["epochs"] * p["steps"])
    return min(max(done, 0.0), 1.0)


@st.fragment(run_every=2)
def _job_banner():
    """A running job's progress at the top of every page (the sidebar's card is out of view on a phone, where the
    sidebar is closed, and below the form on a short desktop window)."""
    for s in (s for s in jobs.all_status().values() if s.active):
        p = s.progress
        text = f"Training {s.stage}"
        if p.get("epochs") and p.get("steps"):
            text += f": epoch {p.get('epoch')}/{p.get('epochs')}, ETA {markdown.seconds(p.get('eta_seconds'))}"
        else:
            text += f": {s.state}"
        row = st.columns([4, 1], vertical_alignment="center")
        row[0].progress(_done(p), text=text)
        row[1].page_link("pages/training.py", label="Details", icon=":material/model_training:")


# ---- training sidebar -------------------------------------------------------------------------------------------


# the sidebar form's values travel in the page URL, so a reload (a new session) keeps them
_FORM = {
    "train_stage": str,
    "train_epochs": int,
    "train_limit": int,
    "train_batch": int,
    "train_bf16": lambda v: v == "1",
}
_FORM_RANGE = {"train_epochs": 500, "train_limit": 50000, "train_batch": 4096}


def _form_default(k: str, fallback):
    """The value a reloaded page's URL carries for sidebar field ``k`` (used as the widget's default), else
    ``fallback``. Widgets keep their own state within a session; this only matters for a new one."""
    if k not in st.query_params or k in st.session_state:
        return fallback
    try:
        value = _FORM[k](st.query_params[k])
    except (TypeError, ValueError):
        return fallback
    if k == "train_stage" and value not in stages.KEYS:
        return fallback
    if k in _FORM_RANGE and not 0 <= value <= _FORM_RANGE[k]:
        return fallback
    return value


def _save_form():
    for k in _FORM:
        v = st.session_state.get(k)
        if v is None:
            continue
        text = ("1" if v else "0") if isinstance(v, bool) else str(int(v) if isinstance(v, float) else v)
        if st.query_params.get(k) != text:
            st.query_params[k] = text


def training_sidebar():
    with st.sidebar:
        st.subheader("Retrain a stage")
        keys = list(stages.KEYS)
        key = st.selectbox(
            "Stage",
            keys,
            index=keys.index(_form_default("train_stage", keys[0])),
            key="train_stage",
            format_func=stage_label,
        )
        recipe = stages.get(key).recipe
        epochs = _epochs_input(key, recipe)
        limit = st.number_input(
            "Limit images (0 = all 50,000)",
            min_value=0,
            max_value=50000,
            value=_form_default("train_limit", 0),
            step=100,
            key="train_limit",
            help="Train on the first N training images and test on the first N test images: a quick smoke run.",
        )
        batch_size = st.number_input(
            f"Batch size (0 = recipe's {recipe.batch_size})",
            min_value=0,
            max_value=_FORM_RANGE["train_batch"],
            value=_form_default("train_batch", 0),
            step=1,
            key="train_batch",
            help="Images per training step. A smaller batch needs less memory (the fix when a run runs out of it); "
            "the learning rate stays the recipe's.",
        )
        backbone = _backbone_input(key)
        extend = _continue_input(key, recipe, epochs, int(limit) or None)
        bf16 = _precision_input(key, recipe)
        st.caption(
            "A new run never replaces the published model: it is kept as a run you can compare and promote on the "
            "Training page."
        )
        if st.button("Start training", key="train_start"):
            request = TrainingRequest(
                key,
                epochs=epochs,
                limit=int(limit) or None,
                data_path=os.environ.get(data.ENV_VAR),
                backbone=backbone,
                mixed_precision=bf16,
                continue_from="published" if extend else None,
                batch_size=int(batch_size) or None,
            )
            try:
                jobs.start(request)
                st.toast(f"Started training {key}")
            except (jobs.JobRunning, ValueError) as e:  # a live run, or a setting the request refuses
                st.warning(md_escape(str(e)))
        _save_form()
        _job_panel()


def _epochs_input(key: str, recipe):
    """Epochs for the whole recipe, or one field per phase (e.g. a frozen-backbone head phase, then fine-tuning)."""
    if len(recipe.phases) == 1:
        value = st.number_input(
            "Epochs (0 = recipe)",
            min_value=0,
            max_value=500,
            value=_form_default("train_epochs", 0),
            step=1,
            key="train_epochs",
            help=f"The recipe runs {recipe.epochs} epochs.",
        )
        return int(value) or None
    st.caption("Epochs per phase (0 = recipe)")
    cols = st.columns(len(recipe.phases))
    counts = tuple(
        int(
            c.number_input(
                p.name,
                min_value=0,
                max_value=500,
                value=0,
                step=1,
                key=f"train_epochs_{key}_{p.name}",
                help=f"The recipe runs {p.epochs} {p.name} epochs.",
            )
        )
        for c, p in zip(cols, recipe.phases)
    )
    return counts if any(counts) else None


def _backbone_input(key: str):
    options = list(stages.get(key).backbone_options)
    if len(options) < 2:
        return None
    shipped = next((r.metrics or {}).get("backbone") for r in all_results() if r.stage.key == key)
    return st.selectbox(
        "Backbone",
        options,
        index=options.index(shipped) if shipped in options else 0,
        key="train_backbone",
        help="ImageNet weights come from the Keras download, or from the file named by "
        "CIFAR_DASH_<BACKBONE>_WEIGHTS (e.g. CIFAR_DASH_RESNET50_WEIGHTS) when set.",
    )


def _continue_input(key: str, recipe, epochs, limit) -> bool:
    """The box that continues the published run, and what stops it (runs.continuation_problems says)."""
    published = next(r for r in all_results() if r.stage.key == key)
    done = (published.metrics or {}).get("epochs") if published.status == "trained" else None
    if not (done and recipe.extendable):
        return False
    extend = st.checkbox(
        f"Continue the published {done}-epoch run",
        key="train_continue",
        help="A new run that starts from the published model and its history and trains the missing epochs "
        "(the optimizer starts afresh; the learning rate follows the history). The epochs above are the new total.",
    )
    if extend:
        for problem in continuation.continuation_problems(published.metrics, stages.get(key), epochs, limit):
            st.warning(f"To continue: {problem}.")
    return extend


def _precision_input(key: str, recipe) -> bool:
    bf16 = st.checkbox(
        "Force bfloat16 compute",
        value=_form_default("train_bf16", recipe.mixed_precision),
        key="train_bf16",
        help="Mixed precision: bfloat16 maths, float32 weights. Faster on GPUs and on CPUs with "
        "AVX512-BF16 or AMX; slower on CPUs without them.",
    )
    if bf16 and (note := runtime.bfloat16_warning()):
        st.caption(f"On this machine: {note}.")
    elif not bf16 and not (host := runtime.host_info())["gpu"]:
        chosen = speed.choose(key, recipe, host)
        st.caption(  # unticked is "let this machine choose", which may well be bfloat16: say which
            f"Not forced: this machine's choice is used: {chosen.precision}, XLA {'on' if chosen.xla else 'off'} "
            f"({chosen.source}; `python -m cifar_dash tune {key}` measures it)."
        )
    return bf16


@st.fragment(run_every=2)
def _job_panel():
    statuses = jobs.all_status()
    active = {k for k, s in statuses.items() if s.active}
    finished = st.session_state.get("_active_jobs", set()) - active
    st.session_state["_active_jobs"] = active
    if finished:  # a job just ended: redraw every chart from the new artifacts
        st.rerun(scope="app")
    shown = [s for s in statuses.values() if s.state != runs.IDLE]
    if not shown:
        st.caption("No training jobs yet.")
        return
    for s in sorted(shown, key=lambda s: -(s.job or {}).get("started", 0)):
        _job_card(s)


def _job_card(s: jobs.JobStatus):
    p = s.progress
    box = st.container(border=True)
    head = f"**{s.stage}** · {s.state}"
    if s.active and p.get("epochs"):
        head += f" · epoch {p.get('epoch')}/{p.get('epochs')}"
    box.markdown(head)
    if s.external:
        box.caption(s.message)
    if s.active:
        if p.get("steps"):
            box.progress(
                _done(p),
                text=f"step {p.get('step')}/{p.get('steps')} · ETA {markdown.seconds(p.get('eta_seconds'))}",
            )
            m = p.get("metrics") or {}
            if m:
                box.caption(f"loss {m.get('loss', float('nan')):.3f} · accuracy {m.get('accuracy', float('nan')):.3f}")
        if box.button("Cancel", key=f"cancel_{s.stage}"):
            jobs.cancel(s.stage)
            box.info("Cancelling after the current batch...")
        if p.get("trace"):  # per step, so a long first epoch is drawn while it runs
            box.plotly_chart(
                figures.step_curve(p["trace"]),
                key=f"steps_{s.stage}_{len(p['trace'])}_{p.get('step')}",
                config={"displayModeBar": False},
            )
        if s.history:
            box.plotly_chart(
                figures.training_curves(s.history), key=f"live_{s.stage}_{len(s.history)}", config={"displayModeBar": False}
            )
    elif s.state == "done":
        run = runs.read_run(s.stage, jobs.run_folder(s.job)) if s.job else None
        published = next(x for x in all_results() if x.stage.key == s.stage)  # cached on the artifacts' mtimes
        if run is not None and run.test_accuracy is not None:
            versus = f" (published: {100 * published.accuracy:.2f}%)" if published.accuracy is not None else ""
            box.success(
                f"Run {run.run_id} finished {time.strftime('%H:%M', time.localtime(p.get('updated', 0)))}: "
                f"{100 * run.test_accuracy:.2f}%{versus}. It is kept as a run; the published model is unchanged."
            )
            box.page_link("pages/training.py", label="Compare or promote it", icon=":material/compare_arrows:")
        else:
            box.success("Finished.")
    elif s.state in ("failed", "cancelled", "killed"):
        text = s.message or s.state
        if "published model" not in text:
            text += "; the published model is untouched"
        (box.info if s.state == "cancelled" else box.error)(md_escape(text[0].upper() + text[1:] + "."))
        saved = jobs.resumable(s.stage)
        if saved:
            box.caption(
                f"Run {saved['run_id']}: {saved['epochs_done']} of {saved['epochs']} epochs logged"
                + (f"; {saved['note']}" if saved.get("note") else "")
                + "."
            )
            if box.button(
                "Resume",
                key=f"resume_{s.stage}",
                help="Continue the run from its last backup (Keras BackupAndRestore), with the settings it began with.",
            ):
                try:
                    jobs.resume(s.stage)
                    st.rerun(scope="app")
                except (jobs.JobRunning, ValueError) as e:
                    box.warning(md_escape(str(e)))
    with box.expander("Log"):
        st.code(
            "(printed in the terminal that started this run)" if s.external else jobs.tail_log(s.stage, 25) or "(empty)",
            language=None,
        )
