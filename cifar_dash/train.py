"""Train a stage's recipe into a new run folder (``checkpoints/STAGE/runs/RUN_ID/``, see runs.py): build -> compile
per phase -> Keras' ``fit`` -> evaluate the saved model. Keras' own machinery does the work (BackupAndRestore for
resuming after a kill, learning-rate schedules, CSVLogger and TensorBoard logs); the plateau rule is plateau.py's. What
a request resolves to is runplan.py's, the callbacks are callbacks.py's. The published model is never touched here:
``publish.promote`` publishes a finished run. Keras APIs only, so it runs under any Keras backend (TensorFlow by
default, JAX on a GPU).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np

from . import artifacts, assess, callbacks, models, runlog, runplan, runs, runtime, stages
from .artifacts import write_json
from .batches import Batches
from .callbacks import Cancelled
from .compiling import compile_for_phase
from .data import NUM_CLASSES
from .failures import OutOfMemory, is_out_of_memory, out_of_memory_advice
from .request import TrainingRequest

# what refuses a new run while it loads (a continuation that does not fit, other data, devices that cannot share its
# batches, missing backbone weights, too little memory): the command says why in one line, and no run folder is left
REFUSALS = (ValueError, OSError, MemoryError, artifacts.ArtifactError, models.BackboneWeightsError)


def train(request: TrainingRequest | str, recipe: stages.Recipe | None = None, stream=sys.stderr, **options) -> Path:
    """Train a request (or a stage key with TrainingRequest's fields as keywords, ``speed`` "recipe" unless given)
    into a new run folder ``OUT/runs/RUN_ID/`` and return that folder. Nothing in OUT itself changes.

    ``recipe`` replaces the stage's own (ablations); the request's epochs, backbone and seed still apply on top.
    A resumed run continues with the settings it was started with (only the data path and devices may differ, and
    the data must be the same). Running out of memory raises OutOfMemory, whose message names the settings that
    need less; SIGTERM or Ctrl-C raises Cancelled, and the run can be resumed."""
    if isinstance(request, str):
        request = TrainingRequest(request, **{"speed": "recipe", **options})
    elif options:
        raise TypeError(f"train(request) takes no further options ({', '.join(options)})")
    p = runplan.plan(request, recipe, stream)
    progress = {"stage": p.stage.key, "run_id": p.folder.name, "pid": os.getpid()}

    def say(state, **extra):
        runs.write_progress(p.folder, {**progress, "state": state, "updated": time.time(), **extra})

    policy = keras.mixed_precision.global_policy()
    canceller = None
    doing = ["loading"]  # what an out-of-memory interrupted
    try:
        say("loading")
        if p.info is None or p.info.get("finished") is None:
            canceller = callbacks.CancelOnSignal()
        d = runplan.prepare(p)  # the data and train_info: read once, handed down
        if d.info.get("finished") is None:
            doing[0] = "running"
            if p.placement.devices:
                print(f"training on {len(p.placement.devices)} devices: {', '.join(p.placement.devices)}", file=stream)
            with p.placement.scope():
                model = _fit(p, d, canceller, stream)
            _finish(p, d, model)
        if p.request.evaluate:
            doing[0] = "evaluating"
            say("evaluating", epoch=p.recipe.epochs, epochs=p.recipe.epochs)
            keras.mixed_precision.set_global_policy("float32")
            saved = artifacts.load_model(p.folder / artifacts.MODEL)  # what is measured is the file a promotion publishes
            assess.assess(saved, d.info, d.test, d.validation, p.folder, stream=stream)
        shutil.rmtree(p.folder / runs.BACKUP, ignore_errors=True)
        say("done", epoch=p.recipe.epochs, epochs=p.recipe.epochs, out=str(p.folder))
        promote = f"python -m cifar_dash promote {p.stage.key} {p.folder.name}"
        print(f"run {p.folder.name} finished in {p.folder}; publish it with: {promote}", file=stream)
        return p.folder
    except Cancelled:
        say("cancelled", message="cancelled on request; the run keeps its last backup and can be resumed")
        raise
    except BaseException as e:
        error = e
        if not isinstance(e, OutOfMemory) and is_out_of_memory(e):
            advice = out_of_memory_advice(
                p.stage.key, p.recipe, p.placement, doing[0], e, resumed=bool(request.resume), run_id=p.folder.name
            )
            error = OutOfMemory(advice)
        if p.info is not None and doing[0] == "loading":  # a resumption refused (other data, devices): the run
            if p.progress:  # stays as it was, resumable
                runs.write_progress(p.folder, p.progress)
            else:
                (p.folder / runs.PROGRESS).unlink(missing_ok=True)
        elif p.info is None and doing[0] == "loading" and isinstance(error, REFUSALS):
            shutil.rmtree(p.folder, ignore_errors=True)  # a new run refused before it trained: nothing to keep
        elif p.folder.exists():
            say("failed", message=f"{type(error).__name__}: {error}")
        if error is not e:
            raise error from e
        raise
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if canceller is not None:
            canceller.restore()


def _fit(p: runplan.RunPlan, d: runplan.Prepared, canceller, stream):
    """Run the recipe's phases with Keras' fit; every phase resumes from its own BackupAndRestore folder. Returns the
    trained model."""
    recipe, folder, prior = p.recipe, p.folder, p.prior
    (x_tr, y_tr), (x_val, y_val) = d.train, d.validation
    prior_rows = list(prior["history"]) if prior else []
    if recipe.mixed_precision:  # bfloat16 compute, float32 variables; recorded in train_info
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(recipe.seed)
    train_batches = Batches(x_tr, y_tr, recipe.batch_size, recipe.mixup_alpha, recipe.seed, recipe.loader_augmentation)
    validation = (x_val, np.eye(NUM_CLASSES, dtype="float32")[y_val]) if len(x_val) else None
    steps = len(train_batches)
    # TensorFlow: the same batches as a tf.data pipeline (no Python per batch); JAX: Keras iterates the PyDataset and
    # the pixels move on the device (Batches.on_device)
    feed = train_batches.tf_dataset() if keras.backend.backend() == "tensorflow" else train_batches
    save_freq = p.request.save_every or callbacks.default_save_every(steps)
    progress = callbacks.Progress(folder, p.stage.key, recipe.epochs, steps, stream)
    model, start = None, 0
    for i, phase in enumerate(recipe.phases):
        end = start + phase.epochs
        done_file = folder / f"phase-{i}.keras"
        if (prior and prior["epochs"] >= end) or done_file.exists():
            start = end
            continue
        if model is None:  # the continued run's weights, the previous phase's, or a fresh build
            model = p.stage.build(recipe, backbone_weights=None if prior else d.backbone_weights)
            if prior and start <= prior["epochs"]:
                model.set_weights(artifacts.load_model(Path(prior["folder"]) / artifacts.MODEL).get_weights())
            elif i and (earlier := folder / f"phase-{i - 1}.keras").exists():
                model.set_weights(artifacts.load_model(earlier).get_weights())
            else:
                models.init_from_data(model, x_tr)
        phase_callbacks = callbacks.for_phase(
            folder=folder,
            i=i,
            phase=phase,
            recipe=recipe,
            train_batches=train_batches,
            canceller=canceller,
            progress=progress,
            save_freq=save_freq,
            rows_before=lambda s=start: runlog.log_rows(folder, s, 10**9, prior_rows),
        )
        compile_for_phase(model, recipe, phase, steps)
        first = max(start, prior["epochs"]) if prior else start
        if prior and first > start:  # a continuation: fresh optimizer at the rate the continued run reached
            model.optimizer.learning_rate = prior["learning_rate"]
        progress.phase = phase.name
        model.fit(
            feed,
            validation_data=validation,
            validation_batch_size=runplan.VALIDATION_BATCH,
            epochs=end,
            initial_epoch=first,
            callbacks=phase_callbacks,
            verbose=0,
            shuffle=False,
        )
        if i < len(recipe.phases) - 1:  # the next phase starts from these weights, also after a kill
            with artifacts.atomic_path(done_file) as tmp:
                model.save(tmp)
            shutil.rmtree(folder / runs.BACKUP / f"phase-{i}", ignore_errors=True)
        start = end
    if model is None:  # every phase already done (killed between the last phase and the final save)
        model = p.stage.build(recipe, backbone_weights=None)
        model.set_weights(artifacts.load_model(folder / f"phase-{len(recipe.phases) - 1}.keras").get_weights())
    return model


def _finish(p: runplan.RunPlan, d: runplan.Prepared, model) -> None:
    """Save the run's final float32 model, history and completed train_info (its ``finished`` time marks training
    done)."""
    recipe, folder, info, prior, x_tr = p.recipe, p.folder, d.info, p.prior, d.train[0]
    keras.mixed_precision.set_global_policy("float32")
    clean = p.stage.build(recipe, backbone_weights=None)
    clean.set_weights(model.get_weights())
    with artifacts.atomic_path(folder / artifacts.MODEL) as tmp:
        clean.save(tmp)
    history = runlog.history_rows(folder, list(prior["history"]) if prior else [])
    write_json(folder / artifacts.HISTORY, {"stage": p.stage.key, "run_id": folder.name, "epochs": history})
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
