"""What each speedrun trick is worth: train the speedrun recipe with one trick removed at a time and print test
accuracy (one view and with test-time augmentation) and train time per variant and seed. Asserts nothing.

    python benchmarks/ablate_speedrun.py [--variants full no_lookahead ...] [--seeds 0 1 2]
                                         [--epochs N] [--limit N] [--data PATH] [--json OUT.json]

Every run goes through ``cifar_dash.train.train`` with the variant's recipe (the stage's recipe with one field
changed) and is evaluated by ``cifar_dash.evaluate`` on the test images, exactly like the shipped checkpoint; the
test-time-augmentation rows come from each run's own metrics (one view, + flip, + flip & shifts), so TTA needs no
variant of its own. The results go to ``checkpoints/speedrun/ablations.json``, which the Stage explorer shows. Runs
are kept under ``~/.cache/cifar-dash/ablations/`` (outside git) and resumed with their epoch state when the script is
run again; finished (variant, seed) rows already in the JSON file are skipped, so a long ablation can be spread over
several sittings or machines (``KERAS_BACKEND=jax`` on a GPU runs the same code).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# variant -> (what it removes, the recipe fields it changes)
VARIANTS: dict[str, tuple[str, dict]] = {
    "full": ("the recipe as shipped", {}),
    "no_lookahead": ("no Lookahead / EMA weight averaging", {"lookahead": None}),
    "bias_rate_1x": ("BatchNorm biases at the base rate, not 64x", {"norm_bias_lr_scale": 1.0}),
    "no_label_smoothing": ("label smoothing 0 instead of 0.2", {"label_smoothing": 0.0}),
    "no_shifts": ("alternating flips only, no 2-pixel shifts", {"loader_augmentation": ("flip_alternate",)}),
    "no_augmentation": ("no flips, no shifts in training", {"loader_augmentation": ()}),
}


def variant_recipe(name: str):
    from cifar_dash import stages

    _, changes = VARIANTS[name]
    return dataclasses.replace(stages.get("speedrun").recipe, **changes)


def run_one(name: str, seed: int, epochs, limit, data, runs_dir: Path) -> dict:
    from cifar_dash import results, runs, train

    out = runs_dir / f"{name}-s{seed}-e{epochs or 'recipe'}-n{limit or 'all'}"
    start = time.perf_counter()
    # an interrupted run of this variant resumes from its backup; otherwise a new run
    interrupted = runs.interrupted_folders("speedrun", where=out)
    folder = train.train(
        "speedrun",
        epochs=epochs,
        limit=limit,
        data_path=data,
        out_dir=out,
        resume=interrupted[-1].name if interrupted else False,
        seed=seed,
        recipe=variant_recipe(name),
        stream=sys.stderr,
    )
    metrics = results.load_folder("speedrun", folder).metrics  # evaluation joined with the training record
    return {
        "variant": name,
        "removes": VARIANTS[name][0],
        "seed": seed,
        "epochs": metrics["epochs"],
        "n_train": metrics["n_train"],
        "n_test": metrics["n_test"],
        "test_accuracy": metrics["test_accuracy"],
        "tta_accuracy": metrics.get("tta_accuracy"),
        "train_seconds": metrics["train_seconds"],
        "train_images_per_second": metrics["train_images_per_second"],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "train_machine": metrics.get("train_machine"),
        "backend": metrics.get("backend"),
        "keras_version": metrics.get("keras_version"),
        "data_fingerprint": metrics.get("data_fingerprint"),
        "run_id": metrics.get("run_id"),
    }


def summary(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation per variant, and the difference of its mean from the full recipe's."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)

    def stats(values):
        return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)

    full = stats([r["test_accuracy"] for r in by["full"]])[0] if "full" in by else None
    out = []
    for name, rs in by.items():
        mean, sd = stats([r["test_accuracy"] for r in rs])
        views = [r["tta_accuracy"]["none"] for r in rs if r.get("tta_accuracy")]
        one_view = statistics.fmean(views) if views else None
        out.append(
            {
                "variant": name,
                "removes": VARIANTS.get(name, ("?",))[0],
                "runs": len(rs),
                "mean_accuracy": round(mean, 5),
                "std": round(sd, 5) if sd is not None else None,
                "mean_one_view": round(one_view, 5) if one_view is not None else None,
                "vs_full_points": round(100 * (mean - full), 2) if full is not None else None,
                "mean_train_seconds": round(statistics.fmean(r["train_seconds"] for r in rs), 1),
            }
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's 10 epochs (shorter proxy)")
    ap.add_argument("--limit", type=int, default=None, help="train and test on N images (shorter proxy)")
    ap.add_argument("--data", default=None, help="CIFAR-10 path (default: CIFAR10_PATH or the Keras download)")
    ap.add_argument(
        "--json", default=None, help="results file (default checkpoints/speedrun/ablations.json, which the dashboard shows)"
    )
    ap.add_argument("--runs-dir", default=None, help="where runs are kept (default ~/.cache/cifar-dash/ablations)")
    args = ap.parse_args(argv)

    import keras

    from cifar_dash import artifacts, runtime

    runs_dir = Path(args.runs_dir) if args.runs_dir else artifacts.cache_root() / "ablations"
    path = Path(args.json) if args.json else artifacts.stage_dir("speedrun") / artifacts.ABLATIONS
    doc = json.loads(path.read_text()) if path.exists() else {"rows": []}
    protocol = {"epochs": args.epochs, "limit": args.limit}
    if doc.get("protocol", protocol) != protocol:
        print(f"{path} holds rows of another protocol {doc['protocol']}; use another --json", file=sys.stderr)
        return 2
    doc["protocol"] = protocol
    done = {(r["variant"], r["seed"]) for r in doc["rows"]}
    for seed in args.seeds:
        for name in args.variants:
            if (name, seed) in done:
                continue
            print(f"== {name} (seed {seed}): {VARIANTS[name][0]}", file=sys.stderr, flush=True)
            doc["rows"].append(run_one(name, seed, args.epochs, args.limit, args.data, runs_dir))
            doc["summary"] = summary(doc["rows"])
            doc["runtime"] = runtime.info()
            artifacts.write_json(path, doc)
            keras.backend.clear_session()
    print(f"{'variant':20s} {'runs':>4s} {'accuracy':>9s} {'std':>6s} {'1 view':>7s} {'vs full':>8s} {'train s':>8s}")
    for s in doc.get("summary", []):
        sd = f"{100 * s['std']:.2f}" if s["std"] is not None else "-"
        vs = f"{s['vs_full_points']:+.2f}" if s["vs_full_points"] is not None else "-"
        one = f"{100 * s['mean_one_view']:.2f}%" if s["mean_one_view"] is not None else "-"
        print(
            f"{s['variant']:20s} {s['runs']:4d} {100 * s['mean_accuracy']:8.2f}% {sd:>6s} "
            f"{one:>7s} {vs:>8s} {s['mean_train_seconds']:8.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
