"""Training throughput of a stage's network, float32 against bfloat16 compute: prints figures, asserts nothing.

    python benchmarks/bench_training.py [--stages speedrun resnet50v2] [--steps 5] [--json OUT.json]

Each (stage, precision) pair runs in a fresh process (the Keras dtype policy is global): the stage's model is built
with random weights, compiled with its recipe's optimizer and loss, and timed over --steps train steps at the
recipe's batch size after two warm-up steps (ResNet stages with the ResNet50 backbone, which needs no download).
Images per second and peak RSS are printed and, with --json, written with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def one(stage_key: str, policy: str, steps: int) -> dict:
    import keras
    import numpy as np

    from cifar_dash import stages, train

    keras.mixed_precision.set_global_policy(policy)
    stage = stages.get(stage_key)
    recipe = stages.recipe_for(stage, backbone="resnet50" if "resnet50" in stage.backbone_options else None)
    model = stages.build(stage, recipe, backbone_weights=None)
    phase = recipe.phases[-1]
    train.compile_for_phase(model, recipe, phase, steps_per_epoch=100)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(recipe.batch_size, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, recipe.batch_size)]
    for _ in range(2):
        model.train_on_batch(x, y)
    t = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - t
    return {"stage": stage_key, "policy": policy, "batch_size": recipe.batch_size, "steps": steps,
            "images_per_second": round(steps * recipe.batch_size / seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", default=["speedrun", "resnet50v2"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.child[0], args.child[1], args.steps)))
        return
    from cifar_dash import runtime

    rows = []
    for key in args.stages:
        for policy in ("float32", "mixed_bfloat16"):
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", key, policy],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{key:20s} {policy:15s} batch {row['batch_size']:5d}: {row['images_per_second']:8.1f} images/s "
                  f"(peak RSS {row['peak_rss_mb']:.0f} MB)", flush=True)
        f32, bf16 = rows[-2]["images_per_second"], rows[-1]["images_per_second"]
        print(f"{key:20s} bfloat16 / float32 = {bf16 / f32:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "runtime": runtime.info()}, indent=1))


if __name__ == "__main__":
    main()
