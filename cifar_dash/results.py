"""Read back what training and evaluation stored: one StageResult per stage, with a clear status."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import artifacts, stages
from .data import NUM_CLASSES as N_CLASSES


@dataclass
class StageResult:
    stage: stages.Stage
    status: str  # trained | untrained | damaged | stale
    metrics: dict | None = None
    history: list | None = None
    train_info: dict | None = None
    error: str | None = None
    folder: Path | None = None

    @property
    def accuracy(self) -> float | None:
        return self.metrics["test_accuracy"] if self.metrics else None

    @property
    def ok(self) -> bool:
        return self.status == "trained"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def metrics_problems(m) -> list[str]:
    """What is wrong with a metrics.json's content (types, shapes, ranges the pages rely on); [] when sound."""
    if not isinstance(m, dict):
        return [f"is a {type(m).__name__}, not an object"]
    out = []
    if not (_number(m.get("test_accuracy")) and 0 <= m["test_accuracy"] <= 1):
        out.append(f"test_accuracy {m.get('test_accuracy')!r} is not a number from 0 to 1")
    if not (_count(m.get("n_test")) and m["n_test"] > 0):
        out.append(f"n_test {m.get('n_test')!r} is not a positive whole number")
    cm = m.get("confusion_matrix")
    if not (
        isinstance(cm, list)
        and len(cm) == N_CLASSES
        and all(isinstance(row, list) and len(row) == N_CLASSES and all(_count(v) for v in row) for row in cm)
    ):
        out.append("confusion_matrix is not a 10x10 table of counts")
    elif _count(m.get("n_test")) and sum(map(sum, cm)) != m["n_test"]:
        out.append(f"confusion_matrix counts {sum(map(sum, cm))} images, n_test says {m['n_test']}")
    pc = m.get("per_class")
    if not (
        isinstance(pc, list)
        and len(pc) == N_CLASSES
        and all(isinstance(r, dict) and all(_number(r.get(k)) for k in ("precision", "recall", "f1")) for r in pc)
    ):
        out.append("per_class is not ten rows of numeric precision, recall and f1")
    cal = m.get("calibration")
    bins_ok = isinstance(cal, dict) and isinstance(cal.get("bins"), list)
    if not (
        bins_ok
        and _number(cal.get("ece"))
        and _number(cal.get("mean_confidence"))
        and _count(cal.get("n_bins"))
        and cal["n_bins"] > 0
        and all(
            isinstance(b, dict) and _count(b.get("count")) and all(_number(b.get(k)) for k in ("lower", "upper"))
            for b in cal["bins"]
        )
        and all(_number(b.get("accuracy")) for b in cal["bins"] if b.get("count"))
    ):
        out.append("calibration lacks numeric ece, mean_confidence, n_bins or bins")
    for k in ("params", "trainable_params", "epochs"):
        if k in m and m[k] is not None and not _count(m[k]):
            out.append(f"{k} {m[k]!r} is not a whole number")
    for k in ("train_seconds", "eval_seconds"):
        if k in m and m[k] is not None and not (_number(m[k]) and m[k] >= 0):
            out.append(f"{k} {m[k]!r} is not a number of seconds")
    return out


def history_problems(rows) -> list[str]:
    """What is wrong with history.json's epochs: each a row with numeric accuracy and loss (val_* when present)."""
    if not isinstance(rows, list):
        return [f"epochs is a {type(rows).__name__}, not a list"]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            return [f"epoch row {i + 1} is not an object"]
        for k in ("accuracy", "loss", "val_accuracy", "val_loss", "learning_rate"):
            if (k in row or k in ("accuracy", "loss")) and not _number(row.get(k)):
                return [f"epoch row {i + 1}: {k} {row.get(k)!r} is not a number"]
    return []


def model_problem(path: Path) -> str | None:
    """Why a .keras file cannot be a model (missing, not a zip, truncated, a member failing its CRC), without
    loading Keras; None when the archive is whole."""
    if not path.exists():
        return f"{path} is missing"
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if not {"config.json", "model.weights.h5"} <= names:
                return f"{path} lacks config.json or model.weights.h5"
            bad = z.testzip()
            if bad:
                return f"{path}: {bad} fails its checksum"
        stat = path.stat()
        unknown = _unknown_classes(str(path), stat.st_mtime_ns, stat.st_size)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"{path} is not a whole .keras archive ({type(e).__name__}: {e})"
    if unknown:
        return f"{path} names classes that do not exist here, so it cannot be loaded: {', '.join(unknown[:5])}"
    return None


@functools.lru_cache(maxsize=64)
def _unknown_classes(path: str, mtime_ns: int, size: int) -> list[str]:
    """The "module.Class" names in the archive's config.json that the installed Keras (or this project's layers)
    does not define, read from their source files without importing Keras; cached per file stamp. A module this
    check cannot find the source of is not judged (loading will say)."""
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    named, stack = set(), [config]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if isinstance(o.get("class_name"), str) and isinstance(o.get("module"), str):
                named.add((o["module"], o["class_name"]))
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    out = []
    for module, name in sorted(named):
        defined = _defined_names(module)
        if defined is not None and name not in defined:
            out.append(f"{module}.{name}")
    return out


@functools.lru_cache(maxsize=64)
def _defined_names(module: str) -> frozenset | None:
    """Names a module defines or re-exports, from its source text (Keras' public API modules are lists of
    ``from ... import X as X``); None where its source is not found."""
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level package is located, not imported
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest.split(".")) if rest else None
    base = base or Path(next(iter(spec.submodule_search_locations)))
    for source in (base / "__init__.py", base.with_suffix(".py")):
        if source.is_file():
            text = source.read_text(errors="replace")
            return frozenset(re.findall(r"^class (\w+)", text, re.M) + re.findall(r"\b\w+ as (\w+)", text))
    return None


# What a stage's view takes from train_info.json (the one record of how the model was trained): metrics.json keeps
# only what evaluation measured. Older metrics files also carry copies of these; the record wins.
TRAIN_FACTS = (
    "epochs",
    "train_seconds",
    "train_images_per_second",
    "n_train",
    "limit",
    "recipe",
    "backbone",
    "backbone_weights",
    "mixed_precision",
    "trainable_params",
    "train_runtime",
    "data_fingerprint",
    "train_data_fingerprint",
)


def joined(metrics: dict, info: dict) -> dict:
    """metrics.json's evaluation with the training facts of train_info.json: what pages, tables and claims read."""
    out = {k: v for k, v in metrics.items() if k not in TRAIN_FACTS and k != "train_machine"}
    for k in TRAIN_FACTS:
        if k in info:
            out[k] = info[k]
        elif k in metrics:
            out[k] = metrics[k]
    out["train_machine"] = (info.get("train_runtime") or {}).get("machine") or metrics.get("train_machine")
    return out


def load_result(key: str, root: Path | None = None) -> StageResult:
    """The stage's published artifacts, checked: a file that is missing, unreadable or of the wrong shape makes the
    stage "damaged" with the reason, never an exception."""
    return load_folder(key, artifacts.stage_dir(key, root))


def load_folder(key: str, folder: Path) -> StageResult:
    """A folder of a stage's artifacts (the published one or a finished run's), checked as ``load_result`` does."""
    stage = stages.get(key)
    folder = Path(folder)
    core = (artifacts.MODEL, artifacts.METRICS, artifacts.TRAIN_INFO, artifacts.HISTORY, artifacts.PREDICTIONS)
    if not any((folder / name).exists() for name in core):  # runs/ alone: trained here, nothing published yet
        return StageResult(stage, "untrained", folder=folder)
    try:
        metrics = artifacts.read_json(folder / artifacts.METRICS)
        info = artifacts.read_json(folder / artifacts.TRAIN_INFO)
        if not isinstance(info, dict):
            raise artifacts.ArtifactError(f"{folder / artifacts.TRAIN_INFO} is not an object")
        hist = artifacts.read_json(folder / artifacts.HISTORY)
        history = hist.get("epochs", []) if isinstance(hist, dict) else hist
        for name, problems in (
            (artifacts.METRICS, metrics_problems(metrics)),
            (artifacts.HISTORY, history_problems(history)),
        ):
            if problems:
                raise artifacts.ArtifactError(f"{folder / name}: " + "; ".join(problems))
        if problem := model_problem(folder / artifacts.MODEL):
            raise artifacts.ArtifactError(problem)
        preds = artifacts.load_predictions(folder / artifacts.PREDICTIONS)
        n = len(preds.labels)
        if n != metrics.get("n_test"):
            raise artifacts.ArtifactError(
                f"{folder / artifacts.PREDICTIONS} holds {n} predictions, metrics say {metrics.get('n_test')}"
            )
    except artifacts.ArtifactError as e:
        return StageResult(stage, "damaged", error=str(e), folder=folder)
    status = "trained"
    if metrics.get("run_id") and info.get("run_id") and metrics["run_id"] != info["run_id"]:
        status = "stale"
    return StageResult(
        stage,
        status,
        metrics=joined(metrics, info),
        history=history,
        train_info=info,
        folder=folder,
        error="model was retrained but not evaluated; metrics belong to the previous model" if status == "stale" else None,
    )


def load_all(root: Path | None = None) -> list[StageResult]:
    return [load_result(s.key, root) for s in stages.STAGES]


def predictions(key: str, root: Path | None = None) -> artifacts.Predictions:
    return artifacts.load_predictions(artifacts.stage_dir(key, root) / artifacts.PREDICTIONS)
