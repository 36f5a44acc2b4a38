"""Training throughput of a stage's network, float32 against bfloat16 compute and with / without XLA: prints
figures, asserts nothing.

    python benchmarks/bench_training.py [--stages speedrun resnet50v2] [--precisions float32 mixed_bfloat16]
                                        [--xla recipe off on] [--steps 5] [--json OUT.json]

Each (stage, precision, XLA) case runs in a fresh process (the Keras dtype policy is global): the stage's model is
built with random weights, compiled with its recipe's optimizer and loss, and timed over --steps train steps at the
recipe's batch size after two warm-up steps (ResNet stages with the ResNet50 backbone, which needs no download).
Printed per case: images per second, peak RSS and the arithmetic rate the step reached (training taken as 3x the
forward FLOPs), beside this CPU's float32 matrix-multiply rate (NumPy, 2048x2048) as a ceiling to compare with.
With --json the rows are written with the machine and versions. bfloat16 is emulated, and very slow, on CPUs
without AVX512-BF16 / AMX.
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


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    import numpy as np

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(reps):
        a @ a
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def one(stage_key: str, policy: str, steps: int, xla: str = "recipe") -> dict:
    import dataclasses

    import keras
    import numpy as np

    from cifar_dash import compiling, models, stages

    keras.mixed_precision.set_global_policy(policy)
    stage = stages.get(stage_key)
    recipe = stages.recipe_for(stage, backbone="resnet50" if "resnet50" in stage.backbone_options else None)
    if xla != "recipe":
        recipe = dataclasses.replace(recipe, jit_compile=xla == "on")
    model = stage.build(recipe, backbone_weights=None)
    phase = recipe.phases[-1]
    compiling.compile_for_phase(model, recipe, phase, steps_per_epoch=100)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(recipe.batch_size, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, recipe.batch_size)]
    for _ in range(2):
        model.train_on_batch(x, y)
    t = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - t
    rate = steps * recipe.batch_size / seconds
    flops = models.flops_per_image(model)
    return {
        "stage": stage_key,
        "policy": policy,
        "xla": bool(recipe.jit_compile),
        "batch_size": recipe.batch_size,
        "steps": steps,
        "images_per_second": round(rate, 1),
        "forward_flops_per_image": flops,
        "train_gflops_per_second": round(3 * flops * rate / 1e9, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", nargs="+", default=["speedrun", "resnet50v2"])
    ap.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    ap.add_argument("--xla", nargs="+", default=["recipe"], choices=["recipe", "off", "on"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.child[0], args.child[1], args.steps, args.child[2])))
        return
    from cifar_dash import runtime

    ceiling = matmul_gflops()
    print(f"{runtime.info()['machine']}: float32 matrix multiply {ceiling:.0f} GFLOP/s", flush=True)
    rows = []
    for key in args.stages:
        for policy in args.precisions:
            for xla in args.xla:
                out = subprocess.run(
                    [sys.executable, __file__, "--steps", str(args.steps), "--child", key, policy, xla],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"{key:20s} {policy:15s} XLA {'on ' if row['xla'] else 'off'} batch {row['batch_size']:5d}: "
                    f"{row['images_per_second']:8.1f} images/s, {row['train_gflops_per_second']:6.1f} GFLOP/s "
                    f"({100 * row['train_gflops_per_second'] / ceiling:.0f}% of matmul), "
                    f"peak RSS {row['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "matmul_gflops": round(ceiling, 1), "runtime": runtime.info()}, indent=1)
        )


if __name__ == "__main__":
    main()
