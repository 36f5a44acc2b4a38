"""Whether TensorFlow's XLA upsamples bilinearly right on this machine, and what its fault does to a stage: prints
figures, asserts nothing.

    python benchmarks/xla_bilinear.py [--stages mobilenetv2_finetune resnet50v2] [--n 256] [--json OUT]

The probe ``keras_workarounds.xla_bilinear_error`` (eager against XLA-compiled ``UpSampling2D``, grey levels 0-255),
then for each published backbone stage its accuracy on the first N test images (CIFAR10_PATH or the path given)
with the model's forward pass run eagerly and XLA-compiled (``tf.function(jit_compile=True)``), and the largest
probability difference. ``runplan.plan`` turns XLA off for backbone stages where the probe finds the fault.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", nargs="+", default=["mobilenetv2_finetune", "resnet50v2"])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--data", default=None, help="CIFAR-10 .npz (default: CIFAR10_PATH, else the Keras download)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf

    from cifar_dash import data, keras_workarounds, predict, runtime

    cifar = data.load(args.data)
    x, y = cifar.x_test[: args.n].astype("float32"), np.asarray(cifar.y_test[: args.n]).reshape(-1)
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "runtime": runtime.info(),
        "probe_grey_levels": keras_workarounds.xla_bilinear_error(),
        "n_test": len(y),
        "test_data_fingerprint": cifar.fingerprints()["test"],
        "stages": {},
    }
    print(f"probe: XLA-compiled bilinear UpSampling2D is {out['probe_grey_levels']:.1f} grey levels off the eager one")
    for key in args.stages:
        model = predict.load_stage(key).model
        eager = np.asarray(model.predict_on_batch(x))
        compiled = tf.function(lambda t, m=model: m(t, training=False), jit_compile=True)(tf.constant(x)).numpy()
        row = {
            "accuracy_eager": float((eager.argmax(1) == y).mean()),
            "accuracy_xla": float((compiled.argmax(1) == y).mean()),
            "max_probability_difference": float(np.abs(eager - compiled).max()),
        }
        out["stages"][key] = row
        print(
            f"{key}: {100 * row['accuracy_eager']:.1f}% eager, {100 * row['accuracy_xla']:.1f}% XLA-compiled on "
            f"{len(y)} test images (largest probability difference {row['max_probability_difference']:.3f})"
        )
    print(f"machine: {out['runtime']['machine']}; versions: {out['runtime']['versions']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
