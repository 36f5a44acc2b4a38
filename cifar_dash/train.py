"""Train a stage's recipe: resumable after a kill, progress another process can poll, artifacts published
atomically. Keras APIs only, so it runs under any Keras backend (TensorFlow by default, JAX on a GPU box)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import keras
import numpy as np

from . import artifacts, models, runtime, stages
from . import data as data_mod
from . import evaluate as evaluate_mod
from .artifacts import write_json
from .data import NUM_CLASSES
from .layers import LookaheadSGD, TriangularSchedule
from .runstate import (  # noqa: F401  (re-exported: the run-state files and helpers predate runstate.py)
    ACTIVE,
    JOB_PROGRESS_ENV,
    PROGRESS,
    STATE,
    WORK_MODEL,
    live_run,
    pid_alive,
    saved_run,
    write_progress,
)


class Cancelled(Exception):
    pass


class AlreadyTraining(ValueError):
    """Another live process is training the same stage into the same folder."""


class Batches(keras.utils.PyDataset):
    """Shuffled mini-batches of raw images and one-hot (optionally MixUp-blended) labels, optionally augmented here
    in NumPy (``augment``: "flip_alternate", "crop:N"; see stages.Recipe.loader_augmentation). Every random choice
    comes from (seed, epoch, batch), so a resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, x, y, batch_size, mixup_alpha=0.0, seed=0, augment=()):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.mixup_alpha = mixup_alpha
        self.seed = seed
        self.flip = self.pad = None
        for spec in augment:
            kind, _, arg = spec.partition(":")
            if kind == "flip_alternate":
                self.flip = np.random.default_rng((seed, 7)).random(len(x)) < 0.5  # the first epoch's flips
            elif kind == "crop":
                self.pad = int(arg)
            else:
                raise ValueError(f"unknown loader augmentation {spec!r}")
        if self.pad:  # padded once, cropped per batch
            p = self.pad
            self.x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        self.set_epoch(0)

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self._order = np.random.default_rng((self.seed, epoch)).permutation(len(self.x))

    def on_epoch_end(self):
        pass  # Keras also calls this before the first epoch; EpochOrder sets the epoch from fit's own count

    def _augmented(self, idx, i):
        if self.pad:
            p, n = self.pad, len(idx)
            rng = np.random.default_rng((self.seed, self.epoch, i, 2))
            dy, dx = rng.integers(0, 2 * p + 1, size=(2, n))
            rows = dy[:, None] + np.arange(self.x.shape[1] - 2 * p)
            cols = dx[:, None] + np.arange(self.x.shape[2] - 2 * p)
            xb = self.x[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
        else:
            xb = self.x[idx]
        if self.flip is not None:
            flip = self.flip[idx] ^ bool(self.epoch % 2)
            xb = np.where(flip[:, None, None, None], xb[:, :, ::-1], xb)
        return xb

    def __getitem__(self, i):
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        xb = self._augmented(idx, i).astype("float32")
        yb = np.eye(NUM_CLASSES, dtype="float32")[self.y[idx]]
        if self.mixup_alpha > 0:
            rng = np.random.default_rng((self.seed, self.epoch, i, 1))
            lam = rng.beta(self.mixup_alpha, self.mixup_alpha, size=(len(idx), 1)).astype("float32")
            perm = rng.permutation(len(idx))
            xb = lam[:, :, None, None] * xb + (1 - lam[:, :, None, None]) * xb[perm]
            yb = lam * yb + (1 - lam) * yb[perm]
        return xb, yb


class EpochOrder(keras.callbacks.Callback):
    """Each epoch's batches come from fit's epoch number (Batches.set_epoch), so a run resumed at epoch or step k
    sees the batches an uninterrupted run saw. fit must not shuffle the batches itself (shuffle=False)."""

    def __init__(self, batches: Batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)


class EpochTail(keras.utils.PyDataset):
    """The batches of one epoch of ``Batches`` from step ``start`` on: a run resumed mid-epoch sees the same batches
    an uninterrupted one would have."""

    def __init__(self, batches: Batches, epoch: int, start: int):
        super().__init__()
        self.batches, self.start = batches, start
        batches.set_epoch(epoch)

    def __len__(self):
        return len(self.batches) - self.start

    def __getitem__(self, i):
        return self.batches[self.start + i]

    def on_epoch_end(self):
        pass


def images_before(step: int, batch_size: int, n: int) -> int:
    return min(step * batch_size, n)


def with_earlier_part(partial, epoch, logs: dict, step: int, batch_size: int, n_train: int) -> dict:
    """``logs`` (running means over this process's steps of ``epoch``, up to ``step``) over the whole epoch so far,
    when the epoch began in an earlier process (``partial``, the saved state it resumed from)."""
    if not partial or partial["epoch"] != epoch:
        return logs
    n_before = images_before(partial["step"], batch_size, n_train)
    n_now = images_before(step, batch_size, n_train) - n_before
    return {**logs, **merge_means(partial["metrics"], n_before, logs, n_now)}


def merge_means(a: dict, n_a: int, b: dict, n_b: int) -> dict:
    """Per-image means over two parts of an epoch (Keras' epoch loss and accuracy are per-image means)."""
    total = n_a + n_b
    return {k: (a[k] * n_a + b[k] * n_b) / total for k in a if k in b} if total else dict(b)


def make_optimizer(recipe: stages.Recipe, learning_rate, steps_per_epoch: int = 1, total_steps: int = 1):
    if recipe.optimizer == "sgd_nesterov" and recipe.lookahead:
        start_epoch, base, power, every = recipe.lookahead
        return LookaheadSGD(
            learning_rate,
            momentum=recipe.momentum,
            nesterov=True,
            weight_decay=recipe.weight_decay or None,
            start_step=int(start_epoch * steps_per_epoch),
            total_steps=total_steps,
            every=int(every),
            base=base,
            power=power,
        )
    if recipe.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate)
    if recipe.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd_nesterov":
        return keras.optimizers.SGD(
            learning_rate, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay or None
        )
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def compile_for_phase(model, recipe, phase, steps_per_epoch):
    models.set_trainable(model, phase.trainable, bn_trainable=recipe.backbone_bn_training)
    lr = phase.learning_rate
    if recipe.lr_schedule == "onecycle":
        peak_at, start, end = recipe.onecycle
        lr = TriangularSchedule(phase.learning_rate, steps_per_epoch * phase.epochs, warmup=peak_at, start=start, end=end)
    model.compile(
        optimizer=make_optimizer(recipe, lr, steps_per_epoch, steps_per_epoch * phase.epochs),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
        jit_compile=True if recipe.jit_compile else "auto",
    )


def _fmt_seconds(s):
    if s is None or not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress(keras.callbacks.Callback):
    """Writes progress.json (for the dashboard) and draws a progress bar on stderr."""

    def __init__(self, path, stage, total_epochs, steps, stream=sys.stderr, n_train=0, batch_size=1):
        super().__init__()
        self.path, self.stage = Path(path), stage
        self.total_epochs, self.steps = total_epochs, steps
        self.stream = stream
        self.tty = stream.isatty()
        self.phase = ""
        self.epoch = 0
        self.step_times = []
        self.offset = 0  # steps of the current epoch done before a mid-epoch resume
        self.resumed = None  # that earlier part's state ("partial"), whose running means the shown ones include
        self.n_train, self.batch_size = n_train, batch_size
        self.last_write = 0.0
        self.last_line_fraction = -1
        self.trace = []  # [epochs done as a fraction, loss, accuracy]: the live per-step curve, at most TRACE points

    TRACE = 400

    def write(self, state, **extra):
        payload = {
            "stage": self.stage,
            "state": state,
            "pid": os.getpid(),
            "phase": self.phase,
            "epoch": self.epoch + 1,
            "epochs": self.total_epochs,
            "updated": time.time(),
            **extra,
        }
        write_progress(self.path, payload)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        batch += self.offset
        now = time.time()
        self.step_times.append(now)
        if len(self.step_times) > 50:
            self.step_times.pop(0)
        span = self.step_times[-1] - self.step_times[0]
        rate = (len(self.step_times) - 1) / span if len(self.step_times) > 2 and span > 0 else None
        remaining_steps = (self.steps - batch - 1) + (self.total_epochs - self.epoch - 1) * self.steps
        eta = remaining_steps / rate if rate else None
        logs = self._whole_epoch({k: float(v) for k, v in (logs or {}).items()}, batch + 1)
        if now - self.last_write > 0.5 or batch + 1 == self.steps:
            self.last_write = now
            self.trace.append([round(self.epoch + (batch + 1) / self.steps, 4), logs.get("loss"), logs.get("accuracy")])
            if len(self.trace) > self.TRACE:  # keep the whole run's shape in a bounded file: drop every other point
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
            width = 24
            filled = int(frac * width)
            print(f"\r[{'=' * filled}{'.' * (width - filled)}] {text}", end="", file=self.stream, flush=True)
        elif int(frac * 4) != self.last_line_fraction:
            self.last_line_fraction = int(frac * 4)
            print(text, file=self.stream, flush=True)

    def _whole_epoch(self, logs, step):
        """Running means over the whole epoch when it began in an earlier process."""
        return with_earlier_part(self.resumed, self.epoch, logs, step, self.batch_size, self.n_train)

    def on_epoch_end(self, epoch, logs=None):
        logs = self._whole_epoch({k: float(v) for k, v in (logs or {}).items()}, self.steps)
        self.offset, self.resumed = 0, None
        val = f"val_loss {logs['val_loss']:.4f} val_acc {logs.get('val_accuracy', 0):.4f} " if "val_loss" in logs else ""
        line = (
            f"epoch {epoch + 1}/{self.total_epochs} ({self.phase}) loss {logs.get('loss', 0):.4f} "
            f"acc {logs.get('accuracy', 0):.4f} {val}{time.time() - self.epoch_start:.0f}s"
        )
        print(("\r" if self.tty else "") + line, file=self.stream, flush=True)
        self.last_line_fraction = -1


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: history row, the full model with optimizer state, and state.json, all atomic."""

    def __init__(self, work, state, phase_index, n_train=0, batch_size=1):
        super().__init__()
        self.work, self.state, self.phase_index = Path(work), state, phase_index
        self.n_train, self.batch_size = n_train, batch_size
        self.resumed = None  # the "partial" state this process started from, when it resumed mid-epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        # Reached only when every batch and the validation ran: a cancel raises in the batch callbacks (after
        # StepCheckpoint saved the epoch so far). One that arrives after the last batch lets this epoch be saved;
        # CancelOnSignal stops the run before the next epoch begins.
        seconds = time.time() - self.t0
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))  # the schedule's value now
        logs = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        self.state.pop("partial", None)
        partial, self.resumed = self.resumed, None
        if partial and partial["epoch"] == epoch:  # the epoch began in an earlier process
            seconds += partial["seconds"]
            logs = with_earlier_part(partial, epoch, logs, math.inf, self.batch_size, self.n_train)
        row = {
            "epoch": epoch + 1,
            "phase": self.state["phases"][self.phase_index],
            "seconds": round(seconds, 2),
            "learning_rate": lr,
        }
        row.update(logs)
        self.state["history"].append(row)
        self.state["epochs_done"] = epoch + 1
        self.state["train_seconds"] += seconds
        with artifacts.atomic_path(self.work / WORK_MODEL) as tmp:
            self.model.save(tmp)
        write_json(self.work / STATE, self.state)


class StepCheckpoint(keras.callbacks.Callback):
    """Inside a long epoch: every ``every`` seconds, and when a cancel is requested, save the model with its
    optimizer and the epoch's step, running means and seconds, so a kill loses at most ``every`` seconds and a
    cancel nothing. (ResNet epochs take hours on a CPU.)"""

    def __init__(self, work, state, every: float, n_train: int, batch_size: int, canceller=None):
        super().__init__()
        self.work, self.state, self.every = Path(work), state, every
        self.n_train, self.batch_size = n_train, batch_size
        self.canceller = canceller
        self.resumed = None  # as EpochCheckpoint.resumed
        self.offset = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.t0, self.last = epoch, time.time(), time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.offset, self.resumed = 0, None

    def on_train_batch_end(self, batch, logs=None):
        now = time.time()
        cancelling = self.canceller is not None and self.canceller.requested
        if not (cancelling or (self.every and now - self.last >= self.every)):
            return
        step = self.offset + batch + 1
        if step * self.batch_size >= self.n_train:
            return  # the epoch's last step: its end-of-epoch checkpoint follows
        metrics = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        seconds = now - self.t0
        metrics = with_earlier_part(self.resumed, self.epoch, metrics, step, self.batch_size, self.n_train)
        if self.resumed and self.resumed["epoch"] == self.epoch:  # this process resumed the epoch part way through
            seconds += self.resumed["seconds"]
        with artifacts.atomic_path(self.work / WORK_MODEL) as tmp:
            self.model.save(tmp)
        self.state["partial"] = {"epoch": self.epoch, "step": step, "metrics": metrics, "seconds": round(seconds, 2)}
        write_json(self.work / STATE, self.state)
        self.last = time.time()
        self.t0 += self.last - now  # saving is not training time


class CancelOnSignal(keras.callbacks.Callback):
    """SIGTERM (the dashboard's Cancel) or Ctrl-C stops the run at the next batch, after the epoch so far is saved;
    on an epoch's last batch or during its validation, once that epoch is finished and saved (a mid-epoch save cannot
    hold a finished epoch). A second Ctrl-C interrupts at once. ``restore`` puts the previous handlers back."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

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
        # Raise rather than set stop_training: Keras would still run the whole validation pass (minutes for the
        # ResNet stages) before returning. Not on the epoch's last batch: StepCheckpoint leaves that one to the
        # epoch-end checkpoint, which then saves the epoch; the run stops as the next epoch begins.
        if self.requested and batch + 1 < (self.params or {}).get("steps", batch + 2):
            raise Cancelled()

    def on_epoch_begin(self, epoch, logs=None):
        if self.requested:  # arrived while the previous epoch ended (and was saved)
            raise Cancelled()


class Plateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau that starts from a given (best, wait) instead of forgetting them: a resumed or continued run
    halves its rate exactly when an uninterrupted one would have."""

    def __init__(self, *args, start=(None, 0), **kwargs):
        super().__init__(*args, **kwargs)
        self.start = start

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best, self.wait = self.start


def plateau_replay(rows, learning_rate, factor, patience, min_lr=1e-7, min_delta=1e-4):
    """Replay Keras' ReduceLROnPlateau (monitor val_accuracy, mode max, no cooldown) over finished epochs of one
    phase. ``rows`` are history rows (``val_accuracy``, the ``learning_rate`` the epoch ran at); ``learning_rate``
    is the phase's starting rate. Returns (best, wait, rate for the next epoch)."""
    best, wait, lr = None, 0, float(learning_rate)
    for row in rows:
        lr = float(row.get("learning_rate", lr))
        current = row["val_accuracy"]
        if best is None or current - min_delta > best:
            best, wait = current, 0
        else:
            wait += 1
            if wait >= patience:
                if lr > np.float32(min_lr):
                    lr = max(lr * factor, min_lr)
                wait = 0
    return best, wait, lr


class ContinueError(ValueError):
    """A published checkpoint that cannot be continued with the requested recipe."""


def _comparable(recipe: dict) -> dict:
    """A stored recipe without what a continuation may change: epochs and the compute precision."""
    out = {k: v for k, v in stages.stored_recipe(json.loads(json.dumps(recipe))).items() if k != "mixed_precision"}
    out["phases"] = [{k: v for k, v in p.items() if k != "epochs"} for p in out["phases"]]
    return out


def read_continuation(folder, stage_key: str, recipe: stages.Recipe, limit, fingerprint: str) -> dict:
    """Check that the published run in ``folder`` is ``recipe`` cut short (same stage, data, limit, settings; fewer
    epochs in its last phase, every earlier phase complete) and return what a continuation needs from it."""
    folder = Path(folder)
    try:
        info = artifacts.read_json(folder / artifacts.TRAIN_INFO)
        history = artifacts.read_json(folder / artifacts.HISTORY)["epochs"]
    except (artifacts.ArtifactError, KeyError, TypeError) as e:
        raise ContinueError(f"{folder} holds no finished run to continue ({e})") from e
    if not (folder / artifacts.MODEL).exists():
        raise ContinueError(f"{folder / artifacts.MODEL} is missing: nothing to continue")
    if info.get("stage") != stage_key:
        raise ContinueError(f"{folder} holds stage {info.get('stage')!r}, not {stage_key!r}")
    if info.get("limit") != limit:
        raise ContinueError(f"{folder} was trained with limit {info.get('limit')}, not {limit}")
    if info.get("train_data_fingerprint") != fingerprint:
        raise ContinueError(f"{folder} was trained on other data (fingerprint {info.get('train_data_fingerprint')})")
    stored = info.get("recipe") or {}
    a, b = _comparable(stored), _comparable(recipe.to_dict())
    if a != b:
        changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        raise ContinueError(
            f"{folder} was trained with other settings ({', '.join(changed) or 'phases'}); "
            "a continuation may only add epochs"
        )
    if not recipe.extendable:
        raise ContinueError(
            "this recipe's schedule spans the whole run (one-cycle rate or Lookahead), so it cannot "
            "be extended; train afresh with --epochs"
        )
    done = [p["epochs"] for p in stored["phases"]]
    problem = stages.extension_problem(done, [p.epochs for p in recipe.phases])
    if problem:
        raise ContinueError(f"{folder}: {problem}" + (" (--epochs takes one count per phase)" if len(done) > 1 else ""))
    if len(history) != sum(done):
        raise ContinueError(f"{folder}: history has {len(history)} epochs, train_info {sum(done)}")
    try:  # what the published run measured (its own evaluation, not a stale one), kept beside the continuation's
        metrics = artifacts.read_json(folder / artifacts.METRICS)
        test_accuracy = metrics.get("test_accuracy") if metrics.get("run_id") == info.get("run_id") else None
    except (artifacts.ArtifactError, AttributeError):
        test_accuracy = None
    return {
        "folder": str(folder),
        "run_id": info.get("run_id"),
        "epochs": sum(done),
        "train_seconds": float(info.get("train_seconds") or 0.0),
        "history": history,
        "started": info.get("started"),
        "backbone_weights": info.get("backbone_weights"),
        "mixed_precision": bool(info.get("mixed_precision")),
        "train_runtime": info.get("train_runtime"),
        "test_accuracy": test_accuracy,
        "continued_from": info.get("continued_from"),
    }


def _continued_from(prior: dict) -> dict:
    """What train_info records of the published run a continuation started from, with the run that one continued
    (nested, oldest innermost), so every epoch keeps where and in which precision it was trained."""
    out = {k: prior[k] for k in ("run_id", "epochs", "train_seconds", "mixed_precision", "train_runtime", "test_accuracy")}
    if prior.get("continued_from"):
        out["continued_from"] = prior["continued_from"]
    return out


def _config_key(stage_key, recipe, limit, fingerprint, continued_from=None):
    key = {"stage": stage_key, "recipe": recipe.to_dict(), "limit": limit, "data_fingerprint": fingerprint}
    if continued_from:
        key["continued_from"] = continued_from
    return key


def train(
    stage_key: str,
    epochs: int | tuple[int, ...] | None = None,
    limit: int | None = None,
    data_path=None,
    backbone: str | None = None,
    backbone_weights=None,
    out_dir=None,
    resume: bool = False,
    evaluate: bool = True,
    mixed_precision: bool = False,
    seed: int | None = None,
    recipe: stages.Recipe | None = None,
    continue_from=None,
    save_every: float = 600.0,
    stream=sys.stderr,
) -> Path:
    """Train ``stage_key`` and publish its artifacts into ``out_dir`` (default checkpoints/STAGE). Returns out_dir.
    ``recipe`` replaces the stage's own (ablations); ``epochs``, ``backbone`` and ``seed`` still apply on top.
    ``continue_from``: a published run of the same recipe with fewer epochs (e.g. checkpoints/STAGE); training
    starts from its weights and history and adds the missing epochs. A published model keeps no optimizer state, so
    the optimizer (Adam's moments) starts afresh at the first added epoch; the rate and the plateau counter are
    replayed from its history. train_info records the run it continued.
    ``save_every``: seconds between mid-epoch checkpoints (0: only at epoch ends); a cancel also saves one."""
    stage = stages.get(stage_key)
    recipe = stages.recipe_for(dataclasses.replace(stage, recipe=recipe) if recipe else stage, epochs, backbone, seed)
    if mixed_precision and not recipe.mixed_precision:
        recipe = dataclasses.replace(recipe, mixed_precision=True)
    mixed_precision = recipe.mixed_precision
    out = Path(out_dir) if out_dir else artifacts.stage_dir(stage.key)
    ensure_writable(out)  # before any training: a run that cannot be published is refused up front
    work = artifacts.work_dir(stage.key, out)
    work.mkdir(parents=True, exist_ok=True)
    progress_path = work / PROGRESS
    other = live_run(work)
    if other:  # checked before this run writes anything: the other run's state stays as it is
        raise AlreadyTraining(
            f"{stage.key} is already training into {out} (pid {other['pid']}, {other['state']}); "
            "wait for it or cancel it (a cancel keeps its progress for --resume)"
        )

    def fail(state, message):
        write_progress(
            progress_path,
            {"stage": stage.key, "state": state, "pid": os.getpid(), "message": message, "updated": time.time()},
        )

    policy = keras.mixed_precision.global_policy()
    canceller = None
    try:
        write_progress(progress_path, {"stage": stage.key, "state": "loading", "pid": os.getpid(), "updated": time.time()})
        cifar = data_mod.load(data_path)
        prints = cifar.fingerprints()
        fingerprint = prints["train"]
        (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data_mod.split(cifar, limit, recipe.validation_size)
        keras.utils.set_random_seed(recipe.seed)
        prior = read_continuation(continue_from, stage.key, recipe, limit, fingerprint) if continue_from else None
        config = _config_key(stage.key, recipe, limit, fingerprint, prior and prior["run_id"])
        if mixed_precision:  # bfloat16 compute, float32 variables (fresh or resumed); recorded in train_info
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        state = None
        if resume and (work / STATE).exists() and (work / WORK_MODEL).exists():
            old = json.loads((work / STATE).read_text())
            if old.get("config") == json.loads(json.dumps(config)):
                state = old
                if prior:  # the same published run (its id is in the config); re-read, so older states gain new fields
                    state["continued_from"] = _continued_from(prior)
                print(f"resuming {stage.key} after epoch {state['epochs_done']}/{recipe.epochs}", file=stream)
            else:
                print(f"not resuming {stage.key}: the earlier run used other settings; starting afresh", file=stream)
        if state is None:
            for f in (STATE, WORK_MODEL):
                (work / f).unlink(missing_ok=True)
            state = {
                "config": config,
                "run_id": uuid.uuid4().hex,
                "phases": [p.name for p in recipe.phases],
                "epochs_done": 0,
                "train_seconds": 0.0,
                "history": [],
                "started": time.time(),
                "backbone_weights": str(backbone_weights) if backbone_weights else None,
            }
            if prior:
                model = stages.build(stage, recipe, backbone_weights=None)
                model.set_weights(artifacts.load_model(Path(prior["folder"]) / artifacts.MODEL).get_weights())
                state.update(
                    epochs_done=prior["epochs"],
                    train_seconds=prior["train_seconds"],
                    history=list(prior["history"]),
                    started=prior["started"] or state["started"],
                    backbone_weights=prior["backbone_weights"],
                    continued_from=_continued_from(prior),
                )
                print(
                    f"continuing {stage.key} (run {prior['run_id']}) after epoch {prior['epochs']}/"
                    f"{recipe.epochs}; the optimizer starts afresh",
                    file=stream,
                )
            else:
                resolved_weights = resolve_backbone_weights(recipe, backbone_weights)
                model = stages.build(stage, recipe, backbone_weights=resolved_weights)
                models.init_from_data(model, x_tr)
                state["backbone_weights"] = describe_weights(recipe, resolved_weights)
        else:
            model = artifacts.load_model_compiled(work / WORK_MODEL)
        state["pid"] = os.getpid()  # saved with every checkpoint: which process's run this state is

        train_batches = Batches(x_tr, y_tr, recipe.batch_size, recipe.mixup_alpha, recipe.seed, recipe.loader_augmentation)
        validation = (x_val, np.eye(NUM_CLASSES, dtype="float32")[y_val]) if len(x_val) else None
        canceller = CancelOnSignal()
        sizes = {"n_train": len(x_tr), "batch_size": recipe.batch_size}
        progress = Progress(progress_path, stage.key, recipe.epochs, len(train_batches), stream, **sizes)
        start_epoch = 0
        for i, phase in enumerate(recipe.phases):
            end_epoch = start_epoch + phase.epochs
            if state["epochs_done"] >= end_epoch:
                start_epoch = end_epoch
                continue
            epoch_ckpt = EpochCheckpoint(work, state, i, **sizes)
            step_ckpt = StepCheckpoint(work, state, save_every, canceller=canceller, **sizes)
            # step_ckpt before canceller: a cancel saves the epoch so far before the run stops
            callbacks = [EpochOrder(train_batches), step_ckpt, canceller, progress, epoch_ckpt]
            plateau_cb = None
            if recipe.lr_schedule == "reduce_on_plateau":
                plateau_cb = Plateau(
                    monitor="val_accuracy",
                    mode="max",
                    factor=recipe.plateau_factor,
                    patience=recipe.plateau_patience,
                    min_lr=1e-7,
                    verbose=0,
                )
                callbacks.append(plateau_cb)
            progress.phase = phase.name
            while state["epochs_done"] < end_epoch:
                partial = state.get("partial")
                resuming_mid_phase = state["epochs_done"] > start_epoch or partial is not None
                done_rows = state["history"][start_epoch : state["epochs_done"]]  # this phase's finished epochs
                plateau = plateau_replay(done_rows, phase.learning_rate, recipe.plateau_factor, recipe.plateau_patience)
                if not resuming_mid_phase or getattr(model, "optimizer", None) is None:
                    compile_for_phase(model, recipe, phase, len(train_batches))
                    if resuming_mid_phase and plateau_cb:  # continuation: fresh optimizer at the replayed rate
                        model.optimizer.learning_rate = plateau[2]
                if plateau_cb:
                    plateau_cb.start = plateau[:2]
                if partial:  # finish the epoch a killed or cancelled run left part way through
                    print(
                        f"resuming {stage.key} in epoch {partial['epoch'] + 1} at step {partial['step']}/"
                        f"{len(train_batches)}",
                        file=stream,
                    )
                    epoch_ckpt.resumed = step_ckpt.resumed = progress.resumed = partial
                    progress.offset = step_ckpt.offset = partial["step"]
                    data, epochs = EpochTail(train_batches, partial["epoch"], partial["step"]), partial["epoch"] + 1
                else:
                    data, epochs = train_batches, end_epoch
                model.fit(
                    data,
                    validation_data=validation,
                    validation_batch_size=256,
                    epochs=epochs,
                    initial_epoch=state["epochs_done"],
                    callbacks=callbacks,
                    verbose=0,
                    shuffle=False,
                )
                if canceller.requested:
                    raise Cancelled()
            start_epoch = end_epoch

        # staged inside the output folder, so that publishing is a rename on one filesystem
        final = out / f".staging-{state['run_id']}"
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir(parents=True)
        keras.mixed_precision.set_global_policy("float32")
        clean = stages.build(stage, recipe, backbone_weights=None)
        clean.set_weights(model.get_weights())
        clean.save(final / artifacts.MODEL)
        n_images = len(x_tr) * recipe.epochs
        info = {
            "stage": stage.key,
            "run_id": state["run_id"],
            "title": stage.title,
            "epochs": recipe.epochs,
            "train_seconds": round(state["train_seconds"], 2),
            "train_images_per_second": round(n_images / state["train_seconds"], 1) if state["train_seconds"] else None,
            "n_train": len(x_tr),
            "n_validation": len(x_val),
            "limit": limit,
            "recipe": recipe.to_dict(),
            "backbone": recipe.backbone,
            "backbone_weights": state["backbone_weights"],
            "data_fingerprint": prints["all"],
            "train_data_fingerprint": fingerprint,
            "test_data_fingerprint": prints["test"],
            "data_source": cifar.source,
            "mixed_precision": mixed_precision,
            "started": state["started"],
            "finished": time.time(),
            "train_runtime": runtime.info(),
        }
        if state.get("continued_from"):
            info["continued_from"] = state["continued_from"]
        total, trainable = models.count_params(model)
        info["params"], info["trainable_params"] = total, trainable
        info["flops_per_image"] = models.flops_per_image(clean)
        write_json(final / artifacts.TRAIN_INFO, info)
        write_json(final / artifacts.HISTORY, {"stage": stage.key, "run_id": state["run_id"], "epochs": state["history"]})
        if evaluate:
            write_progress(
                progress_path,
                {
                    "stage": stage.key,
                    "state": "evaluating",
                    "pid": os.getpid(),
                    "updated": time.time(),
                    "epoch": recipe.epochs,
                    "epochs": recipe.epochs,
                },
            )
            evaluate_mod.evaluate_into(clean, info, x_te, y_te, final, stream=stream)
        publish(final, out)
        for f in (STATE, WORK_MODEL):
            (work / f).unlink(missing_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        write_progress(
            progress_path,
            {
                "stage": stage.key,
                "state": "done",
                "pid": os.getpid(),
                "updated": time.time(),
                "epoch": recipe.epochs,
                "epochs": recipe.epochs,
                "out": str(out),
            },
        )
        return out
    except Cancelled:
        fail(
            "cancelled",
            "cancelled on request; the previous checkpoint is untouched and the epoch so far is saved "
            "(resume with --resume)",
        )
        raise
    except BaseException as e:
        fail("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if canceller is not None:
            canceller.restore()


class PublishError(OSError):
    """The output folder cannot take the run; str(e) says where the finished artifacts are kept."""


def ensure_writable(out: Path) -> None:
    """Create ``out`` and write a file in it, or raise PublishError naming the setting to change."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PublishError(f"cannot write into {out} ({e.strerror or e}); choose another --out") from e


def publish(src: Path, out: Path) -> None:
    """Move finished artifacts from ``src`` (a folder inside ``out``) into ``out``, one atomic rename each, metrics
    last so readers never see new metrics with an old model. A model retrained without evaluation leaves stale
    metrics that readers detect by run_id. On failure the artifacts not yet moved stay in ``src`` and the error says
    so: a finished run is never lost."""
    order = [artifacts.MODEL, artifacts.TRAIN_INFO, artifacts.HISTORY, artifacts.PREDICTIONS, artifacts.METRICS]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in order:
            if (src / name).exists():
                os.replace(src / name, out / name)
    except OSError as e:
        raise PublishError(
            f"the finished run could not be published into {out} ({e.strerror or e}); its files are kept in {src}"
        ) from e


def resolve_backbone_weights(recipe, explicit):
    """An explicit path, else $CIFAR_DASH_<BACKBONE>_WEIGHTS, else "imagenet" (the Keras download)."""
    if not recipe.backbone:
        return None
    path = explicit or os.environ.get(stages.BACKBONE_WEIGHT_ENV[recipe.backbone])
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
