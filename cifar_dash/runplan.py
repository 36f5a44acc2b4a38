"""What a training request resolves to before any training: ``plan`` (the run folder, new or the interrupted one to
resume; the recipe with its precision and XLA choice; the run a continuation starts from; the devices), then
``prepare`` (the data and the run's train_info record). Every refusal happens here, before a run writes anything but
its folder; ``plan``'s before the folder exists."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from . import artifacts, distribute, keras_workarounds, models, runs, runtime, stages
from . import data as data_mod
from . import speed as speed_mod
from .continuation import ContinueError, prior_of
from .request import TrainingRequest

VALIDATION_BATCH = 256


class AlreadyTraining(ValueError):
    """Another live process is training this run."""


@dataclass
class RunPlan:
    request: TrainingRequest  # as started: a resumed run's own request, with this call's data path and devices
    stage: stages.Stage
    recipe: stages.Recipe
    folder: Path
    placement: distribute.Plan
    choice: object | None  # speed.Choice of a new run; None when resuming (the recipe keeps its own)
    info: dict | None  # the resumed run's train_info; None for a new run until ``describe`` makes it
    progress: dict  # the resumed run's progress.json as it was (put back when the resumption is refused); {} if new
    prior: dict | None  # the run a continuation starts from (continuation.prior_of), read before the folder


def plan(request: TrainingRequest, recipe: stages.Recipe | None = None, stream=sys.stderr) -> RunPlan:
    """Check ``request`` and resolve it (``recipe`` replaces the stage's own: ablations) into a run folder and its
    settings: a new run's, or the interrupted run's that ``request.resume`` names (its own recipe and request, with
    this call's data path and devices)."""
    stage, recipe = request.resolve(recipe)
    out = Path(request.out_dir) if request.out_dir else artifacts.stage_dir(stage.key)
    root = runs.runs_root(stage.key, where=out)
    ensure_writable(root)  # before any training: a run that cannot be written is refused up front
    choice = info = None
    progress = {}
    if request.resume:
        folder, progress, request, recipe, info = _resumed(request, stage, out, stream)
    else:
        recipe, choice = speed_mod.setting(stage.key, recipe, request.speed, request.mixed_precision, request.xla)
        folder = root / (request.run_id or runs.new_run_id())
        if folder.exists():
            raise ValueError(f"run {folder.name} already exists in {root}")
    prior = None
    if request.continue_from:
        try:
            finished = runs.finished_run(request.continue_from, stage.key, out)
        except runs.RunError as e:
            raise ContinueError(str(e)) from e
        prior = prior_of(finished, stage.key, recipe, request.limit)
    placement = distribute.plan(request.devices, recipe.batch_size)  # a bad setting fails before a new run's folder
    xla_off = _xla_problem(recipe, placement)
    if xla_off:
        recipe = dataclasses.replace(recipe, jit_compile=False)
    if choice is None:
        print(f"resuming {stage.key} run {folder.name}" + (f" ({xla_off})" if xla_off else ""), file=stream)
    else:
        if xla_off:
            choice = choice._replace(xla=False, source=f"{choice.source}; {xla_off}")
        if keras.backend.backend() == "jax":  # jit_compile "auto" compiles there too (keras_workarounds.allow_jit)
            xla_text = "compiled step (JAX compiles with or without --xla)"
        else:
            xla_text = "XLA on" if choice.xla else "XLA off"
        print(f"{stage.key}: {choice.precision}, {xla_text} ({choice.source})", file=stream)
    if info is None:
        folder.mkdir(parents=True)
    return RunPlan(request, stage, recipe, folder, placement, choice, info, progress, prior)


def _xla_problem(recipe: stages.Recipe, placement: distribute.Plan) -> str:
    """Why this run's step must not be XLA-compiled under TensorFlow ("" when it may), for new and resumed runs."""
    if not recipe.jit_compile or keras.backend.backend() != "tensorflow":
        return ""
    if placement.devices:  # XLA cannot reach a MirroredStrategy's per-device variables (TensorFlow's XLA known issue
        return "XLA off: several TensorFlow devices"  # "tf.Variable on a different device"): the step runs as a graph
    if recipe.backbone and recipe.backbone_input > 32 and recipe.interpolation == "bilinear":
        error = keras_workarounds.xla_bilinear_error()
        if error > keras_workarounds.XLA_BILINEAR_TOLERANCE:
            return f"XLA off: TensorFlow's XLA upsamples bilinearly wrong here, {error:.0f} grey levels off"
    return ""


def _resumed(request: TrainingRequest, stage, out: Path, stream):
    """The interrupted run to resume: its folder and progress, its own request (with this call's data path and
    devices), its recipe and train_info."""
    folder, progress = _resume_folder(stage.key, out, request.resume)
    info = json.loads((folder / artifacts.TRAIN_INFO).read_text())
    stored = info["request"]
    recipe = stages.recipe_from_dict(info["recipe"])
    if request.batch_size is not None and request.batch_size != recipe.batch_size:
        raise ValueError(
            f"run {folder.name} trains with batch size {recipe.batch_size} and a resumed run keeps it; "
            f"start a new run for --batch-size {request.batch_size}"
        )
    request = dataclasses.replace(
        request,
        limit=stored["limit"],
        evaluate=stored.get("evaluate", True),
        backbone_weights=stored.get("backbone_weights_path"),
        data_path=request.data_path or stored.get("data_path"),
        continue_from=stored.get("continue_from"),
        devices=request.devices or stored.get("devices"),
    )
    return folder, progress, request, recipe, info


@dataclass
class Prepared:
    """What a planned run trains and is assessed on, and its train_info; read once, handed down."""

    train: tuple  # (images, labels)
    validation: tuple  # (images, labels); empty when the recipe holds none out
    test: tuple  # (images, labels)
    info: dict  # the run's train_info: the resumed run's, or the new run's (written to its folder)

    @property
    def backbone_weights(self):
        """What a fresh build of the backbone loads: the run's weights file, "imagenet" (Keras' download) or None."""
        if not self.info["recipe"].get("backbone"):
            return None
        return self.info["request"].get("backbone_weights_path") or (
            None if (self.info.get("backbone_weights") or {}).get("source") == "random" else "imagenet"
        )


def prepare(p: RunPlan) -> Prepared:
    """Load the run's data; refuse data a resumed or continued run was not trained on, or batches the devices cannot
    split; write the run's train_info."""
    prior = p.prior
    info = p.info if p.info is not None else describe(p)  # what the run was asked; its data is added below
    cifar = data_mod.load(p.request.data_path)
    splits = data_mod.split(cifar, p.request.limit, p.recipe.validation_size)
    (x_tr, _), (x_val, _), _ = splits
    prints = cifar.fingerprints()
    if prior and prior["train_data_fingerprint"] != prints["train"]:
        raise ContinueError(f"{prior['folder']} was trained on other data (fingerprint {prior['train_data_fingerprint']})")
    if p.info and p.info["train_data_fingerprint"] != prints["train"]:
        raise ValueError(
            f"run {p.folder.name} was trained on other data (fingerprint {p.info['train_data_fingerprint'][:12]}, "
            f"this data {prints['train'][:12]}); give --data the same CIFAR-10"
        )
    n_devices = len(p.placement.devices or ())
    sizes = batch_sizes(p.recipe, len(x_tr), len(x_val))
    if n_devices and (problem := distribute.uneven(n_devices, sizes)):
        if p.info is None:  # a new run (train leaves no folder of a refused one)
            raise distribute.DeviceError(f"{problem}; {even_limits(p.placement, p.recipe, cifar, p.request.limit)}")
        raise distribute.DeviceError(
            f"{problem}; run {p.folder.name} keeps its --limit when resumed: resume it with --devices "
            + " or ".join(map(str, distribute.even_counts(n_devices, sizes)))
        )
    if p.info is None:  # what the new run trains on
        info.update(
            n_train=len(x_tr),
            n_validation=len(x_val),
            data_source=cifar.source,
            data_fingerprint=prints["all"],
            train_data_fingerprint=prints["train"],
            test_data_fingerprint=prints["test"],
        )
    else:  # where the rest of a resumed run trains: the devices (and XLA) may differ from where it started
        resumed = {"time": time.time(), "devices": p.placement.record, "jit_compile": p.recipe.jit_compile}
        info["resumed"] = [*info.get("resumed", []), {**resumed, "machine": runtime.info()["machine"]}]
    artifacts.write_json(p.folder / artifacts.TRAIN_INFO, info)
    return Prepared(*splits, info)


def describe(p: RunPlan) -> dict:
    """A new run's train_info before its data is loaded (``prepare`` adds what it trains on): the recipe, weights,
    machine and the request it can be resumed with."""
    req, recipe, prior = p.request, p.recipe, p.prior
    weights = resolve_backbone_weights(recipe, req.backbone_weights)
    info = {
        "stage": p.stage.key,
        "run_id": p.folder.name,
        "title": p.stage.title,
        "epochs": recipe.epochs,
        "limit": req.limit,
        "recipe": recipe.to_dict(),
        "backbone": recipe.backbone,
        "backbone_weights": prior["backbone_weights"] if prior else describe_weights(recipe, weights),
        "mixed_precision": recipe.mixed_precision,
        "speed": p.choice.as_dict() if p.choice else None,
        "started": time.time(),
        "finished": None,
        "train_runtime": runtime.info(),
        "devices": p.placement.record,
        "request": {
            "devices": req.devices,
            "limit": req.limit,
            "evaluate": req.evaluate,
            "data_path": str(req.data_path) if req.data_path else None,
            "backbone_weights_path": weights if weights != "imagenet" else None,
            "continue_from": str(req.continue_from) if req.continue_from else None,
        },
    }
    if prior:
        info["continued_from"] = prior["record"]
    return info


def batch_sizes(recipe, n_train: int, n_val: int) -> dict[str, tuple[int, int]]:
    """What the devices split: (images, batch size) of the training and the validation pass."""
    return {"training": (n_train, recipe.batch_size), "validation": (n_val, VALIDATION_BATCH)}


def even_limits(placement, recipe, cifar, limit) -> str:
    """What to change: the nearest --limit values whose batches all split, or --devices 1."""
    total = len(cifar.x_train)
    fits = []
    for lim in range(max(2, (limit or total) - 2000), min(total, (limit or total) + 2000) + 1):
        (x, _), (v, _), _ = data_mod.split(cifar, lim, recipe.validation_size)
        if not distribute.uneven(len(placement.devices), batch_sizes(recipe, len(x), len(v))):
            fits.append(lim)
    near = sorted(fits, key=lambda lim: (abs(lim - (limit or total)), lim))[:2]
    return f"choose --limit {' or '.join(map(str, sorted(near)))}, or --devices 1" if near else "choose --devices 1"


def _resume_folder(stage_key: str, out: Path, resume) -> tuple[Path, dict]:
    root = runs.runs_root(stage_key, where=out)
    if resume is True:
        candidates = runs.interrupted_folders(stage_key, where=out)
        if not candidates:
            raise ValueError(f"{stage_key} has no interrupted run to resume (`python -m cifar_dash runs {stage_key}`)")
        folder = candidates[-1]
    else:
        folder = runs.run_dir(stage_key, str(resume), where=out)
        if not folder.is_dir():
            raise ValueError(f"{stage_key} has no run {resume!r} in {root}")
    progress = runs.read_progress(folder)
    if runs.is_live(progress):
        raise AlreadyTraining(
            f"{stage_key} run {folder.name} is already training (pid {progress['pid']}); wait for it or cancel it"
        )
    if not (folder / artifacts.TRAIN_INFO).exists():
        raise ValueError(f"run {folder.name} has no train_info.json: it cannot be resumed; delete it")
    return folder, progress


class PublishError(OSError):
    """The runs folder cannot be written; str(e) names the setting to change."""


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and write a file in it, or raise PublishError naming the setting to change."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PublishError(f"cannot write into {folder} ({e.strerror or e}); choose another --out") from e


def resolve_backbone_weights(recipe, explicit):
    """An explicit path, else $CIFAR_DASH_<BACKBONE>_WEIGHTS, else "imagenet" (the Keras download)."""
    if not recipe.backbone:
        return None
    path = explicit or os.environ.get(models.BACKBONE_WEIGHT_ENV[recipe.backbone])
    if path == "none":  # random init: smoke tests and from-scratch experiments
        return None
    if path:
        if not Path(path).exists():
            raise models.BackboneWeightsError(f"backbone weights file {path} does not exist")
        return str(path)
    return "imagenet"


def describe_weights(recipe, weights):
    if not recipe.backbone:
        return None
    if weights in (None, "imagenet"):
        return {"source": weights or "random"}
    return {"source": "file", "file": Path(weights).name, "sha256": artifacts.file_sha256(Path(weights))}
