"""Train a stage's recipe into a new run folder (``checkpoints/STAGE/runs/RUN_ID/``, see runs.py): Keras' own
machinery does the work (``fit``, BackupAndRestore for resuming after a kill, ReduceLROnPlateau and learning-rate
schedules, CSVLogger and TensorBoard logs); this module holds the fit loop and one progress callback. The published
model is never touched here: ``runs.promote`` publishes a finished run. Keras APIs only, so it runs under any Keras
backend (TensorFlow by default, JAX on a GPU box)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np

from . import artifacts, distribute, embedding, heldout, models, runs, runtime, stages
from . import data as data_mod
from . import evaluate as evaluate_mod
from .artifacts import write_json
from .batches import Batches, EpochOrder
from .compiling import compile_for_phase
from .data import NUM_CLASSES
from .failures import OutOfMemory, is_out_of_memory, out_of_memory_advice
from .keras_workarounds import Backup, EpochTensorBoard, Plateau, plateau_replay
from .runs import continued_from_record, read_continuation


class Cancelled(Exception):
    pass


class AlreadyTraining(ValueError):
    """Another live process is training this run."""


def _fmt_seconds(s):
    if s is None or not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress(keras.callbacks.Callback):
    """The one progress callback: writes the run's progress.json (for the dashboard and any other process), draws a
    progress bar on stderr, and adds what the epoch's log row should say (its phase, seconds and learning rate) to
    the logs, ahead of CSVLogger.

    ``async_safe``: Keras may call the per-batch hook from a worker thread (JAX, torch), so reading a step's loss
    does not make the next step wait for it; a lock keeps the calls one at a time."""

    TRACE = 400  # points of the live per-step curve kept (every other one dropped when full)
    async_safe = True  # keras_workarounds.py: Keras' per-batch dispatch off the main thread reads this

    def __init__(self, folder, stage, total_epochs, steps, stream=sys.stderr):
        super().__init__()
        self.folder, self.stage = Path(folder), stage
        self.total_epochs, self.steps = total_epochs, steps
        self.stream = stream
        self.tty = stream.isatty()
        self.phase = ""
        self.epoch = 0
        self.step_times = []
        self.last_write = 0.0
        self.last_line_fraction = -1
        self.trace = []  # [epochs done as a fraction, loss, accuracy]
        self.lock = threading.Lock()

    def write(self, state, **extra):
        payload = {
            "stage": self.stage,
            "run_id": self.folder.name,
            "state": state,
            "pid": os.getpid(),
            "phase": self.phase,
            "epoch": self.epoch + 1,
            "epochs": self.total_epochs,
            "updated": time.time(),
            **extra,
        }
        runs.write_progress(self.folder, payload)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        with self.lock:
            self._batch_end(batch, logs)

    def _batch_end(self, batch, logs):
        now = time.time()
        self.step_times = [*self.step_times[-49:], now]
        span = self.step_times[-1] - self.step_times[0]
        rate = (len(self.step_times) - 1) / span if len(self.step_times) > 2 and span > 0 else None
        remaining_steps = (self.steps - batch - 1) + (self.total_epochs - self.epoch - 1) * self.steps
        eta = remaining_steps / rate if rate else None
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if now - self.last_write > 0.5 or batch + 1 == self.steps:
            self.last_write = now
            self.trace.append([round(self.epoch + (batch + 1) / self.steps, 4), logs.get("loss"), logs.get("accuracy")])
            if len(self.trace) > self.TRACE:
                self.trace = self.trace[::2]
            self.write("running", step=batch + 1, steps=self.steps, metrics=logs, eta_seconds=eta, trace=self.trace)
        self._bar(batch + 1, logs, eta)

    def _bar(self, step, logs, eta):
        frac = step / self.steps
        text = (
            f"{self.stage} {self.phase} epoch {self.epoch + 1}/{self.total_epochs} step {step}/{self.steps} "
            f"loss {logs.get('loss', float('nan')):.4f} acc {logs.get('accuracy', float('nan')):.4f} "
            f"ETA {_fmt_seconds(eta)}"
        )
        if self.tty:
            filled = int(frac * 24)
            print(f"\r[{'=' * filled}{'.' * (24 - filled)}] {text}", end="", file=self.stream, flush=True)
        elif int(frac * 4) != self.last_line_fraction:
            self.last_line_fraction = int(frac * 4)
            print(text, file=self.stream, flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        seconds = time.time() - self.epoch_start
        logs["phase"] = self.phase
        logs["seconds"] = round(seconds, 2)
        logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        val = f"val_loss {logs['val_loss']:.4f} val_acc {logs.get('val_accuracy', 0):.4f} " if "val_loss" in logs else ""
        line = (
            f"epoch {epoch + 1}/{self.total_epochs} ({self.phase}) loss {logs.get('loss', 0):.4f} "
            f"acc {logs.get('accuracy', 0):.4f} {val}{seconds:.0f}s"
        )
        print(("\r" if self.tty else "") + line, file=self.stream, flush=True)
        self.last_line_fraction = -1


class CancelOnSignal(keras.callbacks.Callback):
    """SIGTERM (the dashboard's Cancel) or Ctrl-C stops the run at the next batch; the run keeps its last backup
    (BackupAndRestore's, taken at each epoch end or every ``save_every`` steps) and resumes from it. A second Ctrl-C
    interrupts at once. ``restore`` puts the previous handlers back."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    async_safe = True  # reads a flag; Keras re-raises the Cancelled of a worker thread in fit's own

    def __init__(self):
        super().__init__()
        self.requested = False
        self.previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def on_train_batch_end(self, batch, logs=None):
        # raise rather than set stop_training: Keras would still run the epoch's validation and BackupAndRestore
        # would then record the unfinished epoch as finished
        if self.requested:
            raise Cancelled()

    def on_epoch_begin(self, epoch, logs=None):
        if self.requested:
            raise Cancelled()


def _tensorboard_available() -> bool:
    import importlib.util

    return keras.backend.backend() == "tensorflow" and importlib.util.find_spec("tensorboard") is not None


def default_save_every(steps_per_epoch: int) -> int | str:
    """Backups at each epoch end, and for long epochs (the ResNet stages on a CPU: hours) every 100 steps too."""
    return "epoch" if steps_per_epoch <= 200 else 100


def _log_rows(folder: Path, start_epoch: int, end_epoch: int, prior: list) -> list:
    """History rows (1-based ``epoch``) of epochs start..end-1: from a continued run's history, then this run's log."""
    rows = [dict(r) for r in prior] + runs.read_log(folder)
    by_epoch = {r["epoch"]: r for r in rows}
    return [by_epoch[e] for e in sorted(by_epoch) if start_epoch < e <= end_epoch]


def history_rows(folder: Path, prior: list) -> list:
    """The run's whole history (continued run's epochs first), one row per epoch, in the order of history.json."""
    out = []
    for r in _log_rows(folder, 0, 10**9, prior):
        row = {"epoch": r["epoch"], "phase": r.get("phase"), "seconds": r.get("seconds")}
        row.update({k: v for k, v in r.items() if k not in row})
        out.append(row)
    return out


def resolve_continuation(value, stage_key: str, where: Path) -> Path:
    """``--continue-from``: "published" (the stage folder ``where``), a run id of the stage, or a folder."""
    if str(value) == "published":
        return Path(where)
    if runs.valid_run_id(str(value)) and (folder := runs.runs_root(stage_key, where=where) / str(value)).is_dir():
        return folder
    return Path(value)


def train(
    stage_key: str,
    epochs: int | tuple[int, ...] | None = None,
    limit: int | None = None,
    data_path=None,
    backbone: str | None = None,
    backbone_weights=None,
    out_dir=None,
    resume: bool | str = False,
    evaluate: bool = True,
    mixed_precision: bool = False,
    xla: bool | None = None,
    speed: str = "recipe",
    seed: int | None = None,
    recipe: stages.Recipe | None = None,
    continue_from=None,
    save_every: int | str | None = None,
    run_id: str | None = None,
    devices: str | None = None,
    batch_size: int | None = None,
    stream=sys.stderr,
) -> Path:
    """Train ``stage_key`` into a new run folder ``OUT/runs/RUN_ID/`` (OUT: ``out_dir``, default checkpoints/STAGE)
    and return that folder. Nothing in OUT itself changes: ``runs.promote`` publishes a run.

    ``resume``: True for the stage's latest interrupted run, or a run id; the run continues with the settings it
    was started with (only ``data_path`` may differ, and the data must be the same). ``recipe`` replaces the stage's
    own (ablations); ``epochs``, ``backbone`` and ``seed`` still apply on top. ``continue_from``: "published", a
    run id or a folder holding a finished run of the same recipe with fewer epochs; the new run starts from its
    weights and history and adds the missing epochs with a fresh optimizer at the rate its history reached.
    ``save_every``: BackupAndRestore's frequency, "epoch" or a number of steps (default: default_save_every).
    ``devices``: distribute.parse's setting ("all", a count, "0,1"; default: every accelerator when there are
    several); the batch is split across them by Keras (DataParallel under JAX, MirroredStrategy under TensorFlow).
    ``batch_size`` replaces the recipe's (for a device with less memory; the learning rate stays the recipe's).
    Running out of memory raises OutOfMemory, whose message names the settings that need less."""
    stage = stages.get(stage_key)
    out = Path(out_dir) if out_dir else artifacts.stage_dir(stage.key)
    root = runs.runs_root(stage.key, where=out)
    ensure_writable(root)  # before any training: a run that cannot be written is refused up front
    if resume:
        folder = _resume_folder(stage.key, out, resume)
        info = json.loads((folder / artifacts.TRAIN_INFO).read_text())
        request = info["request"]
        recipe = stages.recipe_from_dict(info["recipe"])
        if batch_size is not None and batch_size != recipe.batch_size:
            raise ValueError(
                f"run {folder.name} trains with batch size {recipe.batch_size} and a resumed run keeps it; "
                f"start a new run for --batch-size {batch_size}"
            )
        limit, evaluate = request["limit"], request.get("evaluate", True)
        backbone_weights = request.get("backbone_weights_path")
        data_path = data_path or request.get("data_path")
        continue_from = request.get("continue_from")
        devices = devices or request.get("devices")
        print(f"resuming {stage.key} run {folder.name}", file=stream)
        choice = None  # the run keeps the precision and XLA setting it started with (in its recipe)
    else:
        recipe = stages.recipe_for(
            dataclasses.replace(stage, recipe=recipe) if recipe else stage, epochs, backbone, seed, batch_size
        )
        recipe, choice = _speed_setting(stage.key, recipe, speed, mixed_precision, xla)
        placement = distribute.plan(devices, recipe.batch_size)  # a bad setting fails before the run has a folder
        if placement.devices and keras.backend.backend() == "tensorflow" and recipe.jit_compile:
            # XLA cannot reach a MirroredStrategy's per-device variables (TensorFlow's XLA known issue
            # "tf.Variable on a different device"): the step runs as a graph there
            recipe = dataclasses.replace(recipe, jit_compile=False)
            choice = choice._replace(xla=False, source=f"{choice.source}; XLA off: several TensorFlow devices")
        if keras.backend.backend() == "jax":  # jit_compile "auto" compiles there too (keras_workarounds.allow_jit)
            xla_text = "compiled step (JAX compiles with or without --xla)"
        else:
            xla_text = "XLA on" if choice.xla else "XLA off"
        print(f"{stage.key}: {choice.precision}, {xla_text} ({choice.source})", file=stream)
        folder = root / (run_id or runs.new_run_id())
        if folder.exists():
            raise ValueError(f"run {folder.name} already exists in {root}")
        folder.mkdir(parents=True)
        info = None
    if resume:
        placement = distribute.plan(devices, recipe.batch_size)
    progress_payload = {"stage": stage.key, "run_id": folder.name, "pid": os.getpid()}

    def say(state, **extra):
        runs.write_progress(folder, {**progress_payload, "state": state, "updated": time.time(), **extra})

    policy = keras.mixed_precision.global_policy()
    canceller = None
    doing = "loading"  # what an out-of-memory interrupted
    try:
        say("loading")
        cifar = data_mod.load(data_path)
        prints = cifar.fingerprints()
        (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data_mod.split(cifar, limit, recipe.validation_size)
        if placement.devices and info is None:  # a new run: refused before it writes anything but its progress
            problem = _uneven_batches(placement, recipe, len(x_tr), len(x_val))
            if problem:
                shutil.rmtree(folder, ignore_errors=True)
                raise distribute.DeviceError(f"{problem}; {_even_limits(placement, recipe, cifar, limit)}")
        if info and info["train_data_fingerprint"] != prints["train"]:
            raise ValueError(
                f"run {folder.name} was trained on other data (fingerprint {info['train_data_fingerprint'][:12]}, "
                f"this data {prints['train'][:12]}); give --data the same CIFAR-10"
            )
        prior = None
        if continue_from:
            prior = read_continuation(
                resolve_continuation(continue_from, stage.key, out),
                stage.key,
                recipe,
                limit,
                prints["train"],
            )
        if info is None:
            resolved_weights = resolve_backbone_weights(recipe, backbone_weights)
            info = {
                "stage": stage.key,
                "run_id": folder.name,
                "title": stage.title,
                "epochs": recipe.epochs,
                "n_train": len(x_tr),
                "n_validation": len(x_val),
                "limit": limit,
                "recipe": recipe.to_dict(),
                "backbone": recipe.backbone,
                "backbone_weights": prior["backbone_weights"] if prior else describe_weights(recipe, resolved_weights),
                "data_fingerprint": prints["all"],
                "train_data_fingerprint": prints["train"],
                "test_data_fingerprint": prints["test"],
                "data_source": cifar.source,
                "mixed_precision": recipe.mixed_precision,
                "speed": choice.as_dict() if choice else None,
                "started": time.time(),
                "finished": None,
                "train_runtime": runtime.info(),
                "devices": placement.describe(),
                "request": {
                    "devices": devices,
                    "limit": limit,
                    "evaluate": evaluate,
                    "data_path": str(data_path) if data_path else None,
                    "backbone_weights_path": resolved_weights if resolved_weights != "imagenet" else None,
                    "continue_from": str(continue_from) if continue_from else None,
                },
            }
            if prior:
                info["continued_from"] = continued_from_record(prior)
            write_json(folder / artifacts.TRAIN_INFO, info)
        doing = "running"
        if info.get("finished") is None:
            canceller = CancelOnSignal()
            if placement.devices:
                print(f"training on {len(placement.devices)} devices: {', '.join(placement.devices)}", file=stream)
            with placement.scope():
                model = _fit(stage, recipe, info, folder, prior, (x_tr, y_tr), (x_val, y_val), save_every, canceller, stream)
            _finish(stage, recipe, info, folder, model, prior, x_tr)
        if evaluate:
            doing = "evaluating"
            say("evaluating", epoch=recipe.epochs, epochs=recipe.epochs)
            keras.mixed_precision.set_global_policy("float32")
            clean = artifacts.load_model(folder / artifacts.MODEL)
            evaluate_mod.evaluate_into(clean, info, x_te, y_te, folder, stream=stream)
            # the run's temperature, on its own validation images (none held out: cross-fit on the test set)
            heldout.calibrate_folder(folder, x_val, y_val, model=clean, stream=stream)
            embedding.embed_folder(folder, x_te, model=clean, stream=stream)  # the feature map the explorer draws
        shutil.rmtree(folder / runs.BACKUP, ignore_errors=True)
        say("done", epoch=recipe.epochs, epochs=recipe.epochs, out=str(folder))
        print(
            f"run {folder.name} finished in {folder}; publish it with: python -m cifar_dash promote {stage.key} "
            f"{folder.name}",
            file=stream,
        )
        return folder
    except Cancelled:
        say("cancelled", message="cancelled on request; the run keeps its last backup and can be resumed")
        raise
    except BaseException as e:
        error = e
        if not isinstance(e, OutOfMemory) and is_out_of_memory(e):
            error = OutOfMemory(
                out_of_memory_advice(stage.key, recipe, placement, doing, e, resumed=bool(resume), run_id=folder.name)
            )
        if folder.exists():
            say("failed", message=f"{type(error).__name__}: {error}")
        if error is not e:
            raise error from e
        raise
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if canceller is not None:
            canceller.restore()


VALIDATION_BATCH = 256


def _uneven_batches(placement, recipe, n_train: int, n_val: int) -> str | None:
    sizes = {"training": (n_train, recipe.batch_size), "validation": (n_val, VALIDATION_BATCH)}
    return distribute.uneven(len(placement.devices), sizes)


def _even_limits(placement, recipe, cifar, limit) -> str:
    """What to change: the nearest --limit values whose batches all split, or --devices 1."""
    total = len(cifar.x_train)
    fits = []
    for lim in range(max(2, (limit or total) - 2000), min(total, (limit or total) + 2000) + 1):
        (x, _), (v, _), _ = data_mod.split(cifar, lim, recipe.validation_size)
        if not _uneven_batches(placement, recipe, len(x), len(v)):
            fits.append(lim)
    near = sorted(fits, key=lambda lim: (abs(lim - (limit or total)), lim))[:2]
    return f"choose --limit {' or '.join(map(str, sorted(near)))}, or --devices 1" if near else "choose --devices 1"


def _speed_setting(stage_key, recipe, speed, mixed_precision, xla):
    """The recipe with the precision and XLA setting to train with, and why: asked for (``mixed_precision``,
    ``xla``), this machine's measured or ruled fastest (``speed="auto"``, see speed.py), or the recipe's own."""
    from . import speed as speed_mod

    if mixed_precision or xla is not None:
        precision = "mixed_bfloat16" if mixed_precision or recipe.mixed_precision else "float32"
        choice = speed_mod.Choice(precision, recipe.jit_compile if xla is None else bool(xla), "asked for")
    elif speed == "auto":
        choice = speed_mod.choose(stage_key, recipe)
    elif speed == "recipe":
        choice = speed_mod.of_recipe(recipe)
    else:
        raise ValueError(f"speed must be 'auto' or 'recipe', not {speed!r}")
    recipe = dataclasses.replace(recipe, mixed_precision=choice.precision == "mixed_bfloat16", jit_compile=choice.xla)
    return recipe, choice


def _resume_folder(stage_key: str, out: Path, resume) -> Path:
    root = runs.runs_root(stage_key, where=out)
    if resume is True:
        candidates = [r for r in runs.list_runs(stage_key, where=out) if r.resumable]
        if not candidates:
            raise ValueError(f"{stage_key} has no interrupted run to resume (`python -m cifar_dash runs {stage_key}`)")
        folder = candidates[-1].folder
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
    return folder


def _fit(stage, recipe, info, folder, prior, train_data, val_data, save_every, canceller, stream):
    """Run the recipe's phases with Keras' fit; every phase resumes from its own BackupAndRestore folder. Returns the
    trained model."""
    (x_tr, y_tr), (x_val, y_val) = train_data, val_data
    if recipe.mixed_precision:  # bfloat16 compute, float32 variables; recorded in train_info
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(recipe.seed)
    train_batches = Batches(x_tr, y_tr, recipe.batch_size, recipe.mixup_alpha, recipe.seed, recipe.loader_augmentation)
    validation = (x_val, np.eye(NUM_CLASSES, dtype="float32")[y_val]) if len(x_val) else None
    steps = len(train_batches)
    # TensorFlow: the same batches as a tf.data pipeline (no Python per batch); JAX: Keras iterates the PyDataset and
    # the pixels move on the device (Batches.on_device)
    feed = train_batches.tf_dataset() if keras.backend.backend() == "tensorflow" else train_batches
    save_freq = save_every or default_save_every(steps)
    prior_rows = list(prior["history"]) if prior else []
    progress = Progress(folder, stage.key, recipe.epochs, steps, stream)
    model, start = None, 0
    weights_file = info["request"].get("backbone_weights_path") or (
        None if (info.get("backbone_weights") or {}).get("source") == "random" else "imagenet"
    )
    for i, phase in enumerate(recipe.phases):
        end = start + phase.epochs
        done_file = folder / f"phase-{i}.keras"
        if (prior and prior["epochs"] >= end) or done_file.exists():
            start = end
            continue
        if model is None:
            model = stages.build(stage, recipe, backbone_weights=weights_file if recipe.backbone and not prior else None)
            earlier = folder / f"phase-{i - 1}.keras"
            if prior and start <= prior["epochs"]:
                model.set_weights(artifacts.load_model(Path(prior["folder"]) / artifacts.MODEL).get_weights())
            elif i and earlier.exists():
                model.set_weights(artifacts.load_model(earlier).get_weights())
            else:
                models.init_from_data(model, x_tr)
        compile_for_phase(model, recipe, phase, steps)
        first = max(start, prior["epochs"]) if prior else start
        if prior and first > start:  # a continuation: fresh optimizer at the rate the continued run reached
            rows = _log_rows(folder, start, first, prior_rows)
            model.optimizer.learning_rate = (
                plateau_replay(rows, phase.learning_rate, recipe.plateau_factor, recipe.plateau_patience)[2]
                if recipe.lr_schedule == "reduce_on_plateau"
                else rows[-1].get("learning_rate", phase.learning_rate)
            )
        callbacks = [
            EpochOrder(train_batches),
            canceller,
        ]
        if _tensorboard_available():  # Keras' TensorBoard writes through tf.summary; before Progress adds text
            callbacks.append(EpochTensorBoard(str(folder / runs.TENSORBOARD), write_graph=False))
        callbacks += [
            progress,
            keras.callbacks.CSVLogger(str(folder / runs.LOG), append=True),
        ]
        if recipe.lr_schedule == "reduce_on_plateau":
            callbacks.append(
                Plateau(
                    lambda s=start: _log_rows(folder, s, 10**9, prior_rows),
                    phase.learning_rate,
                    monitor="val_accuracy",
                    mode="max",
                    factor=recipe.plateau_factor,
                    patience=recipe.plateau_patience,
                    min_lr=1e-7,
                    verbose=0,
                )
            )
        # last: an epoch is backed up after its log row is written and the plateau rule has set the next rate (a
        # kill in between repeats the epoch and its row, which read_log counts once)
        # With every callback's per-batch hook safe off the main thread, Keras dispatches them asynchronously where
        # the backend allows (JAX): the step's loss is read while the next step runs (keras_workarounds.py)
        backup = Backup(
            str(folder / runs.BACKUP / f"phase-{i}"),
            save_freq=save_freq,
            double_checkpoint=True,
            delete_checkpoint=False,
        )
        callbacks.append(backup)
        progress.phase = phase.name
        model.fit(
            feed,
            validation_data=validation,
            validation_batch_size=VALIDATION_BATCH,
            epochs=end,
            initial_epoch=first,
            callbacks=callbacks,
            verbose=0,
            shuffle=False,
        )
        if i < len(recipe.phases) - 1:  # the next phase starts from these weights, also after a kill
            with artifacts.atomic_path(done_file) as tmp:
                model.save(tmp)
            shutil.rmtree(folder / runs.BACKUP / f"phase-{i}", ignore_errors=True)
        start = end
    if model is None:  # every phase already done (killed between the last phase and the final save)
        model = stages.build(stage, recipe, backbone_weights=None)
        last = folder / f"phase-{len(recipe.phases) - 1}.keras"
        model.set_weights(artifacts.load_model(last).get_weights())
    return model


def _finish(stage, recipe, info, folder, model, prior, x_tr):
    """The run's final float32 model, history and completed train_info (its ``finished`` time marks training done)."""
    keras.mixed_precision.set_global_policy("float32")
    clean = stages.build(stage, recipe, backbone_weights=None)
    clean.set_weights(model.get_weights())
    with artifacts.atomic_path(folder / artifacts.MODEL) as tmp:
        clean.save(tmp)
    history = history_rows(folder, list(prior["history"]) if prior else [])
    write_json(folder / artifacts.HISTORY, {"stage": stage.key, "run_id": folder.name, "epochs": history})
    seconds = sum(float(r.get("seconds") or 0) for r in history)
    total, trainable = models.count_params(model)
    info.update(
        train_seconds=round(seconds, 2),
        train_images_per_second=round(len(x_tr) * recipe.epochs / seconds, 1) if seconds else None,
        params=total,
        trainable_params=trainable,
        flops_per_image=models.flops_per_image(clean),
        train_runtime=runtime.info(),
        finished=time.time(),
    )
    if prior:
        info["started"] = prior.get("started") or info["started"]
    write_json(folder / artifacts.TRAIN_INFO, info)
    for f in folder.glob("phase-*.keras"):
        f.unlink()


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
