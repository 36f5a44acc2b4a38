"""The pages' cached readers of the stored artifacts and small formatting helpers. All computation lives in
cifar_dash; this file only caches."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from cifar_dash import (
    artifacts,
    data,
    ood,
    predict,
    results,
    runs,
    stages,
    testimages,
)


def stage_stamp(key: str) -> tuple:
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
    return [_result(s.key, root, stage_stamp(s.key)) for s in stages.STAGES]


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
        rb = _robustness(r.stage.key, root, stage_stamp(r.stage.key))
        if rb:
            out[r.stage.key] = rb
    return out


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
    return _predictions(key, str(artifacts.checkpoints_root()), stage_stamp(key))


def stored_predictions(key: str):
    """The stage's stored test predictions, or None where they are missing or damaged."""
    try:
        return stage_predictions(key)
    except artifacts.ArtifactError:
        return None


@st.cache_resource(show_spinner="Loading model...", max_entries=16)
def _model(key: str, root: str, stamp: tuple):
    return predict.load_stage(key)


def stage_model(key: str):
    return _model(key, str(artifacts.checkpoints_root()), stage_stamp(key))


@st.cache_resource(show_spinner="Loading CIFAR-10 test images...")
def _test_set(source: str | None, assets: str) -> testimages.TestImages:
    return testimages.load(source)


def test_set() -> testimages.TestImages:
    """The test images galleries show: every one from CIFAR10_PATH, else the sample shipped in the repository.
    Predictions alone come from the stored files."""
    return _test_set(os.environ.get(data.ENV_VAR), str(testimages.assets_dir()))


_MD_SPECIAL = set("\\`*_{}[]()#+-.!|<>~$:")


def md_escape(text: str) -> str:
    """Text from outside (file names, error messages) shown through Markdown as typed, not rendered."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))


def _runs_stamp(key: str) -> tuple:
    folder = runs.runs_root(key)
    out = [stage_stamp(key)]
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


def stage_label(key: str) -> str:
    s = stages.get(key)
    return f"{key} — {s.title}"
