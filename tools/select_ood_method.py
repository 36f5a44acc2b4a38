"""Compare detectors of pictures that are none of CIFAR-10's classes, on the *selection* half of assets/ood/ only.

For each candidate (stage, score) the threshold is the score that QUANTILE of the validation images stay under;
printed: the false-alarm rate on the 10,000 test images and the share of the selection half flagged, per set.
Scores: maximum softmax probability after temperature scaling (MSP, Hendrycks & Gimpel 2017), Mahalanobis distance
with class means and a shared covariance (Lee et al. 2018), and k-nearest-neighbour distance of L2-normalised
features (Sun et al. 2022), in a stage's penultimate layer and, for the ImageNet backbones, in the pooled backbone
output. The evaluation half is never looked at here. `speedrun` is left out: it trained on every training image, so
it has no held-out images to set a threshold on. Results: docs/ood_selection.json and docs/calibration.md.

    python tools/select_ood_method.py --data PATH   (about 15 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cifar_dash import artifacts, calibration, data, heldout, inference, ood  # noqa: E402
from cifar_dash.predict import load_stage  # noqa: E402

MSP_ONLY = ("mlp", "deep_mlp", "cnn", "vgg_aug")
WITH_FEATURES = {  # stage -> feature layers: the classifier's input, and the pooled ImageNet backbone output
    "mobilenetv2_frozen": ("penultimate", "pool"),
    "mobilenetv2_finetune": ("penultimate", "pool"),
    "resnet50v2_sota": ("penultimate",),
}
BANK = 2000


def rates(sv, st, so, sets, sel):
    thr = float(np.quantile(sv, ood.QUANTILE))
    per = {k: float((so[(sets == k) & sel] > thr).mean()) for k in np.unique(sets)}
    return {"false_alarm_rate": float((st > thr).mean()), "selection": float((so[sel] > thr).mean()), **per}


def mahalanobis(bank, labels, queries):
    f = bank.astype(np.float64)
    mu = np.stack([f[labels == c].mean(0) for c in range(10)])
    centred = f - mu[labels]
    precision = np.linalg.pinv(centred.T @ centred / len(f) + 1e-3 * np.eye(f.shape[1]))
    q = queries.astype(np.float64)
    return np.min(np.stack([(((q - m) @ precision) * (q - m)).sum(1) for m in mu], 1), 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data")
    args = p.parse_args()
    cifar = data.load(args.data)
    y_bank = cifar.y_train[:BANK].reshape(-1)
    loaded_sets = ood.load_sets()
    x_ood = np.concatenate([s["x"] for s in loaded_sets.values()])
    sets = np.concatenate([[k] * len(s["x"]) for k, s in loaded_sets.items()])
    sel = np.concatenate([s["half"] for s in loaded_sets.values()]) == "selection"
    out = {"quantile": ood.QUANTILE, "bank": BANK, "n_selection": int(sel.sum()), "rows": []}
    for key in (*MSP_ONLY, *WITH_FEATURES):
        t = time.perf_counter()
        folder = artifacts.stage_dir(key)
        metrics = artifacts.read_json(folder / artifacts.METRICS)
        temperature = calibration.temperature_of(metrics) or 1.0
        stage = load_stage(key)
        val = artifacts.load_predictions(folder / artifacts.VAL_PREDICTIONS).probs
        test = artifacts.load_predictions(folder / artifacts.PREDICTIONS).probs
        other = inference.predict_probs(stage.model, x_ood, tta=stage.tta)
        msp = [-calibration.scale(x, temperature).max(1) for x in (val, test, other)]
        out["rows"].append({"stage": key, "score": "MSP (calibrated)", **rates(*msp, sets, sel)})
        info = artifacts.read_json(folder / artifacts.TRAIN_INFO)
        x_val, _ = heldout.validation_split(info, cifar)
        for layer in WITH_FEATURES.get(key, ()):
            name = (
                f"the input of {inference.last_dense(stage.model).name}"
                if layer == "penultimate"
                else "the ImageNet backbone, pooled"
            )

            def feats(x, layer=layer, model=stage.model):
                if layer == "penultimate":
                    return inference.features_and_probs(model, x)[0]
                return inference.layer_features(model, layer, x)

            bank, fv, ft, fo = (feats(x) for x in (cifar.x_train[:BANK], x_val, cifar.x_test, x_ood))
            b = ood.normalise(bank)
            for k in (1, 10):
                scores = [ood.knn_score(b, f, k) for f in (fv, ft, fo)]
                row = {"stage": key, "score": f"kNN k={k}", "layer": f"{layer} ({name})"}
                out["rows"].append({**row, **rates(*scores, sets, sel)})
            scores = [mahalanobis(bank, y_bank, f) for f in (fv, ft, fo)]
            row = {"stage": key, "score": "Mahalanobis", "layer": f"{layer} ({name})"}
            out["rows"].append({**row, **rates(*scores, sets, sel)})
        for row in out["rows"]:
            if row["stage"] == key:
                print(
                    f"{key:22s} {row['score']:18s} {row.get('layer', ''):34s} false alarms {row['false_alarm_rate']:.3f}"
                    f"  selection flagged {row['selection']:.3f}",
                    flush=True,
                )
        print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    (ROOT / "docs" / "ood_selection.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
