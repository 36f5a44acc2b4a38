"""Training throughput of every stage on the current device and backend, against its plain reference architecture
and through the whole input pipeline: prints figures, asserts nothing.

    python benchmarks/bench_accelerator.py [--stages ...] [--precision float32|mixed_bfloat16] [--steps 5]
                                           [--devices all|N] [--json]

Per stage, each in a fresh process (the Keras dtype policy is global), at the recipe's batch size after two
warm-up steps, on random images (ResNet stages with the ResNet50 backbone, which needs no download):
- model step: the stage's model (random weights, recipe's optimizer and loss), ``train_on_batch`` on one batch;
- reference: the plain architecture with the same backbone, input size, batch and policy: for transfer stages
  ``Resizing`` + ``keras.applications.<backbone>(weights=None)`` + ``Dense(10)``; for the others the stage's own
  network without its in-model augmentation;
- pipeline: ``train.train`` itself (the command's whole loop: the loader with shuffling, the recipe's loader
  augmentation and MixUp, and every callback: progress, CSV and TensorBoard logs, backups) on random images, the
  recipe's last phase for two epochs of ``--steps`` batches (at least about 3 s of them), no validation split; the
  second epoch's seconds from the run's own log, so the one-off set-up is left out as it is in a real epoch of
  hundreds of steps;
- memory: the peak after the model's steps (the accelerator's own peak on a GPU, the process's resident set on a
  CPU), what the recipe's batch size needs: the figure to hold against a device's memory before an out-of-memory.
With --json the rows go to benchmarks/results/accelerator-<device>-<backend>.json with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _timed_steps(fn, steps: int) -> float:
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - t


def peak_memory() -> tuple[float, str]:
    """The most memory the process has held so far, in MB, and where: the first accelerator's peak (JAX's
    memory_stats, TensorFlow's get_memory_info) when there is one, else the process's peak resident set."""
    import resource

    import keras

    try:
        if keras.backend.backend() == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"] / 2**20, "device"
        elif keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, "device"
    except (RuntimeError, ValueError, KeyError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host RSS"


def reference_model(stage, recipe):
    """The plain architecture: Keras' application (random weights) behind Resizing, trained where the recipe's
    last phase trains (a frozen backbone stays frozen), or the stage's network without in-model augmentation."""
    import dataclasses

    import keras

    from cifar_dash import models

    if not recipe.backbone:
        return stage.build(dataclasses.replace(recipe, augmentation=()), backbone_weights=None)
    side = recipe.backbone_input
    app = {
        "mobilenetv2": keras.applications.MobileNetV2,
        "resnet50": keras.applications.ResNet50,
        "resnet50v2": keras.applications.ResNet50V2,
    }[recipe.backbone]
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Resizing(side, side)(inp)
    base = app(include_top=False, weights=None, input_shape=(side, side, 3), pooling="avg")
    base.name = "backbone"
    out = keras.layers.Dense(10, activation="softmax", dtype="float32")(base(x))
    ref = keras.Model(inp, out, name=f"{recipe.backbone}_reference")
    models.set_trainable(ref, recipe.phases[-1].trainable, bn_trainable=recipe.backbone_bn_training)
    return ref


def _pipeline_ips(stage_key, recipe, fed: int, devices: str | None) -> float:
    """Images/s of the second of two epochs of ``fed`` batches through ``train.train`` on random images."""
    import dataclasses
    import tempfile

    import numpy as np

    from cifar_dash import runlog, train

    b = recipe.batch_size
    phase = dataclasses.replace(recipe.phases[-1], epochs=2)
    timed = dataclasses.replace(recipe, phases=(phase,), validation_size=0)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "random.npz"
        n = b * fed  # one pass of the loader per epoch
        np.savez(
            data,
            x_train=rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
            y_train=rng.integers(0, 10, size=n),
            x_test=rng.integers(0, 256, size=(b, 32, 32, 3), dtype=np.uint8),
            y_test=rng.integers(0, 10, size=b),
        )
        folder = train.train(
            stage_key,
            data_path=data,
            out_dir=Path(tmp) / stage_key,
            recipe=timed,
            backbone=recipe.backbone if recipe.backbone else None,
            backbone_weights="none" if recipe.backbone else None,
            evaluate=False,
            devices=devices,
            stream=open(os.devnull, "w"),
        )
        rows = runlog.read_log(folder)
    return fed * b / rows[-1]["seconds"]


def one(stage_key: str, policy: str, steps: int, devices: str | None) -> dict:
    import keras
    import numpy as np

    from cifar_dash import compiling, distribute, runtime, stages

    keras.mixed_precision.set_global_policy(policy)
    stage = stages.get(stage_key)
    recipe = stages.recipe_for(stage, backbone="resnet50" if "resnet50" in stage.backbone_options else None)
    placement = distribute.plan(devices, recipe.batch_size)
    b = recipe.batch_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(b, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, b)]
    with placement.scope():
        model = stage.build(recipe, backbone_weights=None)
        compiling.compile_for_phase(model, recipe, recipe.phases[-1], steps_per_epoch=100)
        model_ips = steps * b / _timed_steps(lambda: model.train_on_batch(x, y), steps)
        memory_mb, memory_kind = peak_memory()  # before the reference model adds its own

        ref = reference_model(stage, recipe)
        ref.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy", jit_compile="auto")
        reference_ips = steps * b / _timed_steps(lambda: ref.train_on_batch(x, y), steps)

    pipeline_ips = _pipeline_ips(stage_key, recipe, max(steps, int(3 * model_ips / b)), devices)
    info = runtime.info()
    return {
        "stage": stage_key,
        "device": info["gpu"] or info["machine"],
        "backend": info["backend"],
        "precision": policy,
        "batch_size": b,
        "devices": len(placement.devices or [None]),
        "compiled": bool(model.jit_compile),  # the train step as one compiled (XLA) function
        "model_ips": round(model_ips, 1),
        "reference_ips": round(reference_ips, 1),
        "pipeline_ips": round(pipeline_ips, 1),
        "model_step_peak_mb": round(memory_mb, 1),  # the model's step at this batch size: how far from out-of-memory
        "memory": memory_kind,
    }


def main(argv=None):
    from cifar_dash import stages

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", default=list(stages.KEYS))
    ap.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--devices")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="with --json: this file, or this folder, instead of benchmarks/results/")
    ap.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.child[0], args.precision, args.steps, args.devices)))
        return
    from cifar_dash import runtime

    info = runtime.info()
    print(f"{info['machine']}, Keras {info['versions']['keras']} ({info['backend']}), {args.precision}", flush=True)
    rows, failed = [], []
    for key in args.stages:
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--precision", args.precision, "--child", key]
        if args.devices:
            cmd += ["--devices", args.devices]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:  # one stage's failure (out of memory, say) keeps the rows already measured
            failed.append(key)
            print(f"{key:20s} failed (exit {out.returncode}):\n{out.stderr[-3000:]}", flush=True)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{key:20s} batch {row['batch_size']:5d}: model step {row['model_ips']:9.1f} images/s, reference "
            f"{row['reference_ips']:9.1f} (ratio {row['model_ips'] / row['reference_ips']:.2f}), pipeline "
            f"{row['pipeline_ips']:9.1f} ({row['pipeline_ips'] / row['model_ips']:.2f} of the model step), peak "
            f"{row['model_step_peak_mb']:,.0f} MB ({row['memory']})",
            flush=True,
        )
        if args.json:  # after every stage, so that a run stopped part-way keeps what it measured
            path = _write(args.out, info, rows)
    if args.json and rows:
        print(f"wrote {path}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


def _write(out: Path | None, info: dict, rows: list) -> Path:
    """The rows as benchmarks/results/accelerator-<device>-<backend>.json, or that name in the folder ``out``, or the
    file ``out``."""
    from cifar_dash import runtime

    name = runtime.results_name("accelerator", info)
    path = out / name if out and out.is_dir() else out or ROOT / "benchmarks" / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": runtime.record_machine(info), "versions": info["versions"], "date": time.strftime("%Y-%m-%d"),
           "rows": rows}  # fmt: skip
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


if __name__ == "__main__":
    main()
