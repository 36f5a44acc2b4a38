"""Read back what training and evaluation stored: one StageResult per stage, with a clear status."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import artifacts, stages


@dataclass
class StageResult:
    stage: stages.Stage
    status: str  # trained | untrained | error | stale
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


def load_result(key: str, root: Path | None = None) -> StageResult:
    stage = stages.get(key)
    folder = artifacts.stage_dir(key, root)
    if not folder.exists() or not any(folder.iterdir()):
        return StageResult(stage, "untrained", folder=folder)
    try:
        metrics = artifacts.read_json(folder / artifacts.METRICS)
        info = artifacts.read_json(folder / artifacts.TRAIN_INFO)
        history = artifacts.read_json(folder / artifacts.HISTORY).get("epochs", [])
        if not (folder / artifacts.MODEL).exists():
            raise artifacts.ArtifactError(f"{folder / artifacts.MODEL} is missing")
        for field in ("test_accuracy", "confusion_matrix", "per_class", "calibration"):
            if field not in metrics:
                raise artifacts.ArtifactError(f"{folder / artifacts.METRICS} lacks {field!r}")
        n = len(artifacts.load_predictions(folder / artifacts.PREDICTIONS).labels)
        if n != metrics.get("n_test"):
            raise artifacts.ArtifactError(
                f"{folder / artifacts.PREDICTIONS} holds {n} predictions, metrics say {metrics.get('n_test')}"
            )
    except artifacts.ArtifactError as e:
        return StageResult(stage, "error", error=str(e), folder=folder)
    status = "trained"
    if metrics.get("run_id") and info.get("run_id") and metrics["run_id"] != info["run_id"]:
        status = "stale"
    return StageResult(
        stage,
        status,
        metrics=metrics,
        history=history,
        train_info=info,
        folder=folder,
        error="model was retrained but not evaluated; metrics belong to the previous model" if status == "stale" else None,
    )


def load_all(root: Path | None = None) -> list[StageResult]:
    return [load_result(s.key, root) for s in stages.STAGES]


def predictions(key: str, root: Path | None = None) -> artifacts.Predictions:
    return artifacts.load_predictions(artifacts.stage_dir(key, root) / artifacts.PREDICTIONS)
