"""The callbacks of a training run: the progress record and bar, cancelling on a signal, the plateau rule, Keras'
TensorBoard and BackupAndRestore declared safe off the main thread (keras_workarounds.py, item 2), and the list one
phase trains with (``for_phase``)."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import keras

from . import plateau, runlog, runs
from .batches import EpochOrder


class Cancelled(Exception):
    """A run stopped on request (SIGTERM, Ctrl-C or the dashboard's Cancel); it keeps its last backup."""


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


class PlateauRule(keras.callbacks.Callback):
    """The recipe's plateau rule (plateau.py) at each epoch end, through the optimizer's public ``learning_rate``. Its
    memory starts from the epochs this phase already finished (``rows_before()``: the run's log, or a continued
    run's history), so a resumed run lowers its rate when an uninterrupted one would have."""

    def __init__(self, rows_before, phase_rate: float, factor: float, patience: int):
        super().__init__()
        self.rows_before, self.phase_rate = rows_before, phase_rate
        self.factor, self.patience = factor, patience
        self.memory = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.memory is None:  # the epoch fit really starts at (after BackupAndRestore restored its own)
            rows = [r for r in self.rows_before() if r["epoch"] < epoch]
            self.memory, _ = plateau.fold(rows, self.phase_rate, self.factor, self.patience)

    def on_epoch_end(self, epoch, logs=None):
        if not logs or logs.get("val_accuracy") is None:  # no validation images: nothing to react to
            return
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.memory, new = plateau.step(self.memory, float(logs["val_accuracy"]), rate, self.factor, self.patience)
        if new != rate:
            self.model.optimizer.learning_rate = new


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard, declared safe off the main thread: it writes epoch summaries only (no per-batch data)."""

    async_safe = True


class Backup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, declared safe off the main thread when it saves at epoch ends only (a backup every N
    steps reads the weights mid-epoch, so it stays on the main thread)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.async_safe = kwargs.get("save_freq", "epoch") == "epoch"


def _tensorboard_available() -> bool:
    import importlib.util

    return keras.backend.backend() == "tensorflow" and importlib.util.find_spec("tensorboard") is not None


def default_save_every(steps_per_epoch: int) -> int | str:
    """Backups at each epoch end, and for long epochs (the ResNet stages on a CPU: hours) every 100 steps too."""
    return "epoch" if steps_per_epoch <= 200 else 100


def for_phase(*, folder: Path, i: int, phase, recipe, train_batches, canceller, progress, save_freq, rows_before):
    """Phase ``i``'s callbacks, in the order they must run at an epoch end."""
    callbacks = [EpochOrder(train_batches), canceller]
    if _tensorboard_available():  # Keras' TensorBoard writes through tf.summary; before Progress adds text
        callbacks.append(EpochTensorBoard(str(folder / runs.TENSORBOARD), write_graph=False))
    callbacks += [progress, keras.callbacks.CSVLogger(str(folder / runlog.LOG), append=True)]
    if recipe.lr_schedule == "reduce_on_plateau":
        callbacks.append(PlateauRule(rows_before, phase.learning_rate, recipe.plateau_factor, recipe.plateau_patience))
    # last: an epoch is backed up after its log row is written and the plateau rule has set the next rate (a kill in
    # between repeats the epoch and its row, which read_log counts once)
    callbacks.append(
        Backup(
            str(folder / runs.BACKUP / f"phase-{i}"), save_freq=save_freq, double_checkpoint=True, delete_checkpoint=False
        )
    )
    return callbacks
