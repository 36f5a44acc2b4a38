"""Streamlit glue shared by the pages: cached readers of the stored artifacts and the training sidebar.
All computation lives in cifar_dash; this file only caches and arranges."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import streamlit as st

from cifar_dash import (
    artifacts,
    data,
    figures,
    jobs,
    ood,
    predict,
    results,
    runs,
    runtime,
    speed,
    stages,
    testimages,
)


def _stamp(key: str) -> tuple:
    folder = artifacts.stage_dir(key)
    out = []
    for name in (
        artifacts.METRICS,
        artifacts.HISTORY,
        artifacts.TRAIN_INFO,
        artifacts.MODEL,
        artifacts.PREDICTIONS,
        artifacts.ROBUSTNESS,
        artifacts.SEEDS,
    ):
        try:
            out.append(os.stat(folder / name).st_mtime_ns)
        except OSError:
            out.append(None)
    return tuple(out)


@st.cache_data(show_spinner=False, max_entries=64)
def _result(key: str, root: str, stamp: tuple) -> results.StageResult:
    return results.load_result(key)


def all_results() -> list[results.StageResult]:
    root = str(artifacts.checkpoints_root())
    return [_result(s.key, root, _stamp(s.key)) for s in stages.STAGES]


def trained_results() -> list[results.StageResult]:
    return [r for r in all_results() if r.status in ("trained", "stale")]


@st.cache_data(show_spinner=False, max_entries=64)
def _robustness(key: str, root: str, stamp: tuple):
    from cifar_dash import claims

    return claims.robustness_of(results.load_result(key))


def robustness_by_stage() -> dict:
    root = str(artifacts.checkpoints_root())
    out = {}
    for r in trained_results():
        rb = _robustness(r.stage.key, root, _stamp(r.stage.key))
        if rb:
            out[r.stage.key] = rb
    return out


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
            maps[k] = _saliency(k, _stamp(k), digest, method, img)
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


@st.cache_data(show_spinner=False, max_entries=64)
def _predictions(key: str, root: str, stamp: tuple):
    return results.predictions(key)


@st.cache_resource(show_spinner=False, max_entries=4)
def _detector(root: str, stamp: tuple):
    return ood.load(Path(root))


def detector():
    """The fitted none-of-these-classes detector (ood.json and its bank), or the ArtifactError saying how to fit it."""
    root = artifacts.checkpoints_root()
    stamp = []
    for name in (ood.OOD_JSON, ood.BANK_FILE):
        try:
            stamp.append(os.stat(root / name).st_mtime_ns)
        except OSError:
            stamp.append(None)
    try:
        return _detector(str(root), tuple(stamp))
    except artifacts.ArtifactError as e:
        return e


def stage_predictions(key: str):
    return _predictions(key, str(artifacts.checkpoints_root()), _stamp(key))


@st.cache_resource(show_spinner="Loading model...", max_entries=16)
def _model(key: str, root: str, stamp: tuple):
    return predict.load_stage(key)


def stage_model(key: str):
    return _model(key, str(artifacts.checkpoints_root()), _stamp(key))


@st.cache_resource(show_spinner="Loading CIFAR-10 test images...")
def _test_set(source: str | None, assets: str) -> testimages.TestImages:
    return testimages.load(source)


def test_set() -> testimages.TestImages:
    """The test images galleries show: every one from CIFAR10_PATH, else the sample shipped in the repository.
    Predictions alone come from the stored files."""
    return _test_set(os.environ.get(data.ENV_VAR), str(testimages.assets_dir()))


def test_images_note(t: testimages.TestImages) -> None:
    if t.error:
        st.warning("Test images: " + md_escape(t.error))
    if t.source == "sample":
        st.caption(
            f"Test images from the sample shipped with the app ({t.n_available:,} of 10,000, the ones the pages "
            "show first); set CIFAR10_PATH to a CIFAR-10 copy to see every one."
        )


_MD_SPECIAL = set("\\`*_{}[]()#+-.!|<>~$:")


def md_escape(text: str) -> str:
    """Text from outside (file names, error messages) shown through Markdown as typed, not rendered."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))


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


def _runs_stamp(key: str) -> tuple:
    folder = runs.runs_root(key)
    out = [_stamp(key)]
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return tuple(out)
    for d in entries:
        for name in (artifacts.TRAIN_INFO, artifacts.METRICS, runs.PROGRESS):
            try:
                out.append((d.name, name, os.stat(d / name).st_mtime_ns))
            except OSError:
                out.append((d.name, name, None))
    return tuple(out)


@st.cache_data(show_spinner=False, max_entries=32, ttl=5)
def _stage_runs(key: str, root: str, stamp: tuple) -> list:
    return runs.list_runs(key)


def stage_runs(key: str) -> list:
    """The stage's runs (runs.list_runs), re-read when a run folder's record changes (and at most every 5 s, so a
    run whose process died is seen as interrupted)."""
    return _stage_runs(key, str(artifacts.checkpoints_root()), _runs_stamp(key))


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
                "training time": fmt_seconds(d["train seconds"]) if d["train seconds"] is not None else "-",
                "machine": d["machine"] or "-",
                "note": d["note"] or "",
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def stage_label(key: str) -> str:
    s = stages.get(key)
    return f"{key} — {s.title}"


def fmt_seconds(s) -> str:
    return figures._fmt_seconds(s)


# ---- page frame: navigation + training sidebar ------------------------------------------------------------------

NAV = (
    ("app.py", "Journey", ":material/trending_up:"),
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
            text += f": epoch {p.get('epoch')}/{p.get('epochs')}, ETA {fmt_seconds(p.get('eta_seconds'))}"
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
        if len(recipe.phases) == 1:
            epochs = (
                int(
                    st.number_input(
                        "Epochs (0 = recipe)",
                        min_value=0,
                        max_value=500,
                        value=_form_default("train_epochs", 0),
                        step=1,
                        key="train_epochs",
                        help=f"The recipe runs {recipe.epochs} epochs.",
                    )
                )
                or None
            )
        else:  # one field per phase, e.g. a frozen-backbone head phase, then fine-tuning
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
            epochs = counts if any(counts) else None
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
        backbone = None
        options = list(stages.get(key).backbone_options)
        if len(options) > 1:
            shipped = next((r.metrics or {}).get("backbone") for r in all_results() if r.stage.key == key)
            backbone = st.selectbox(
                "Backbone",
                options,
                index=options.index(shipped) if shipped in options else 0,
                key="train_backbone",
                help="ImageNet weights come from the Keras download, or from the file named by "
                "CIFAR_DASH_<BACKBONE>_WEIGHTS (e.g. CIFAR_DASH_RESNET50_WEIGHTS) when set.",
            )
        published = next(r for r in all_results() if r.stage.key == key)
        done = (published.metrics or {}).get("epochs") if published.status == "trained" else None
        extend = False
        if done and recipe.extendable:
            extend = st.checkbox(
                f"Continue the published {done}-epoch run",
                key="train_continue",
                help="A new run that starts from the published model and its history and trains the missing epochs "
                "(the optimizer starts afresh; the learning rate follows the history). The epochs above are the new "
                "total.",
            )
            done_phases = [p["epochs"] for p in (published.metrics.get("recipe") or {}).get("phases", [])]
            wanted = [p.epochs for p in stages.recipe_for(stages.get(key), epochs).phases]
            problem = stages.extension_problem(done_phases, wanted) if extend else None
            if problem:
                st.warning(f"To continue: {problem}.")
            published_limit = published.metrics.get("limit")
            if extend and published_limit != (int(limit) or None):
                st.warning(
                    "The published run was trained on "
                    + (
                        f"the first {published_limit:,} images: set 'Limit images' to {published_limit:,}"
                        if published_limit
                        else "all images: set 'Limit images' to 0"
                    )
                    + " to continue it."
                )
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
        st.caption(
            "A new run never replaces the published model: it is kept as a run you can compare and promote on the "
            "Training page."
        )
        if st.button("Start training", key="train_start"):
            try:
                jobs.start(
                    key,
                    epochs=epochs,
                    limit=int(limit) or None,
                    data_path=os.environ.get(data.ENV_VAR),
                    backbone=backbone,
                    mixed_precision=bf16,
                    continue_from="published" if extend else None,
                    batch_size=int(batch_size) or None,
                )
                st.toast(f"Started training {key}")
            except jobs.JobRunning as e:
                st.warning(md_escape(str(e)))
        _save_form()
        _job_panel()


@st.fragment(run_every=2)
def _job_panel():
    statuses = jobs.all_status()
    active = {k for k, s in statuses.items() if s.active}
    finished = st.session_state.get("_active_jobs", set()) - active
    st.session_state["_active_jobs"] = active
    if finished:  # a job just ended: redraw every chart from the new artifacts
        st.rerun(scope="app")
    shown = [s for s in statuses.values() if s.state != "idle"]
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
                text=f"step {p.get('step')}/{p.get('steps')} · ETA {fmt_seconds(p.get('eta_seconds'))}",
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


if __name__ == "__main__":  # opened as a page by URL: there is nothing to show here
    st.switch_page("app.py")
