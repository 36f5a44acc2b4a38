"""The seed deck's claims, each checked against measured artifacts. Every sentence here is computed from
metrics.json, history.json and robustness.json; a claim without the artifacts it needs says so."""

from __future__ import annotations

from dataclasses import dataclass

from . import artifacts, report


@dataclass
class Claim:
    claim: str
    verdict: str  # supported | contradicted | within noise | not measured
    evidence: str


def _by_key(results):
    return {r.stage.key: r for r in results if r.metrics}


def robustness_of(result) -> dict | None:
    """The stage's robustness.json when it belongs to the current model (same run_id), else None."""
    if result is None or result.folder is None:
        return None
    try:
        rb = artifacts.read_json(result.folder / artifacts.ROBUSTNESS)
    except artifacts.ArtifactError:
        return None
    if rb.get("run_id") and result.metrics and rb["run_id"] != result.metrics.get("run_id"):
        return None
    return rb


def final_gap(result) -> float | None:
    """Train minus validation accuracy at the last epoch."""
    if not result or not result.history:
        return None
    last = result.history[-1]
    return last["accuracy"] - last["val_accuracy"]


def _pct(v):
    return f"{100 * v:.1f}%"


def _pct2(v):  # for differences of tenths of a point
    return f"{100 * v:.2f}%"


def colour_vs_shape(results) -> Claim:
    text = "The MLP leans on background colour more than on shape."
    r = _by_key(results)
    mlp, cnn = robustness_of(r.get("mlp")), robustness_of(r.get("cnn"))
    if not mlp:
        return Claim(text, "not measured", "run `python -m cifar_dash robustness mlp` (and cnn) to measure it")
    a = mlp["accuracy"]
    keep_c, keep_s = a["colour only (blur radius 4)"] / a["clean"], a["shape only (grayscale edges)"] / a["clean"]
    ev = (
        f"On {mlp['n_test']:,} test images the MLP keeps {_pct(keep_c)} of its clean accuracy ({_pct(a['clean'])}) "
        f"when only colour survives (heavy blur) and {_pct(keep_s)} when only shape survives (grayscale edges)."
    )
    if cnn:
        c = cnn["accuracy"]
        ev += (
            f" The CNN keeps {_pct(c['colour only (blur radius 4)'] / c['clean'])} and "
            f"{_pct(c['shape only (grayscale edges)'] / c['clean'])}."
        )
    return Claim(text, "supported" if keep_c > keep_s else "contradicted", ev)


def deep_mlp_overfits(results) -> Claim:
    text = "A deep, wide MLP (about 2.3 M parameters) memorises the training set, so test accuracy goes down."
    r = _by_key(results)
    if "mlp" not in r or "deep_mlp" not in r:
        return Claim(text, "not measured", "needs both mlp and deep_mlp trained")
    a, b = r["mlp"], r["deep_mlp"]
    ga, gb = final_gap(a), final_gap(b)
    ev = (
        f"deep_mlp ({b.metrics['params']:,} parameters): train accuracy {_pct(b.history[-1]['accuracy'])}, "
        f"validation {_pct(b.history[-1]['val_accuracy'])} (gap {100 * gb:.1f} points), test {_pct(b.accuracy)}; "
        f"mlp ({a.metrics['params']:,}): gap {100 * ga:.1f} points, test {_pct(a.accuracy)}."
    )
    return Claim(text, "supported" if b.accuracy < a.accuracy and gb > ga else "contradicted", ev)


def augmentation_blocks_overfitting(results) -> Claim:
    text = "Augmentation (flip, rotation, zoom) with VGG blocks blocks overfitting."
    r = _by_key(results)
    if "cnn" not in r or "vgg_aug" not in r:
        return Claim(text, "not measured", "needs cnn and vgg_aug trained")
    gc, gv = final_gap(r["cnn"]), final_gap(r["vgg_aug"])
    ev = (
        f"Train minus validation accuracy at the last epoch: cnn {100 * gc:+.1f} points, vgg_aug {100 * gv:+.1f} "
        f"points (vgg_aug's train accuracy is measured on augmented images); test accuracy "
        f"{_pct(r['cnn'].accuracy)} -> {_pct(r['vgg_aug'].accuracy)}."
    )
    return Claim(text, "supported" if gv < gc else "contradicted", ev)


def frozen_is_small_and_fast(results) -> Claim:
    text = "Freezing the ImageNet MobileNetV2 leaves about 160 thousand trainable parameters."
    r = _by_key(results).get("mobilenetv2_frozen")
    if not r:
        return Claim(text, "not measured", "needs mobilenetv2_frozen trained")
    m = r.metrics
    ev = (
        f"{m['trainable_params']:,} of {m['params']:,} parameters train; {m['epochs']} epochs took "
        f"{m['train_seconds'] / 60:.1f} min on {m.get('train_machine')}; test accuracy {_pct(r.accuracy)}."
    )
    return Claim(text, "supported" if 0.9 * 160e3 <= m["trainable_params"] <= 1.1 * 160e3 else "contradicted", ev)


def finetuning_helps(results) -> Claim:
    text = "Unfreezing the deeper layers at a very low learning rate (1e-5) improves on the frozen base."
    r = _by_key(results)
    if "mobilenetv2_frozen" not in r or "mobilenetv2_finetune" not in r:
        return Claim(text, "not measured", "needs both MobileNetV2 stages trained")
    a, b = r["mobilenetv2_frozen"].accuracy, r["mobilenetv2_finetune"].accuracy
    return Claim(
        text,
        "supported" if b > a else "contradicted",
        f"test accuracy {_pct(a)} frozen -> {_pct(b)} fine-tuned ({100 * (b - a):+.2f} points).",
    )


def _halvings(result) -> list[tuple[int, float, float, float]]:
    """Epochs a run trained at a lower rate than the epoch before: (epoch, rate, best validation accuracy before it,
    its own validation accuracy)."""
    h, out = result.history or [], []
    for i in range(1, len(h)):
        if h[i].get("learning_rate", 0) < 0.99 * h[i - 1].get("learning_rate", 0):
            out.append((h[i]["epoch"], h[i]["learning_rate"], max(r["val_accuracy"] for r in h[:i]), h[i]["val_accuracy"]))
    return out


def plateau_halving_helps(results) -> Claim:
    text = "ReduceLROnPlateau: halving the rate when validation accuracy stalls lifts it again."
    r = _by_key(results)
    runs = [r[k] for k in ("resnet50v2", "resnet50v2_sota") if k in r]
    if not runs:
        return Claim(text, "not measured", "needs a ResNet stage trained")
    seen = [(x.stage.key, *h) for x in runs for h in _halvings(x)]
    if not seen:
        return Claim(
            text,
            "not measured",
            "the rate was never halved: "
            + "; ".join(
                f"{x.stage.key} validation accuracy by epoch " + " -> ".join(_pct2(e["val_accuracy"]) for e in x.history)
                for x in runs
            )
            + " (it is halved after an epoch that does not beat the best so far).",
        )
    ev = "; ".join(
        f"{key}: rate {rate:.1e} from epoch {epoch}, validation accuracy {_pct2(val)} against {_pct2(best)} before"
        for key, epoch, rate, best, val in seen
    )
    return Claim(text, "supported" if all(val > best for *_, best, val in seen) else "contradicted", ev + ".")


def _test_accuracy_by_epochs(result) -> dict[int, float]:
    """Test accuracy measured after N epochs: the shipped run's, and each run it was continued from."""
    spans = report.lineage(result.train_info or {}, result.metrics.get("epochs"))
    out = {s["last"]: s["test_accuracy"] for s in spans[:-1] if s["test_accuracy"] is not None}
    out[result.metrics.get("epochs")] = result.accuracy
    return out


def _rates(rates) -> str:
    return ", ".join("?" if x is None else f"{x:.0e}" for x in rates)


def tricks_help_at_same_budget(results) -> Claim:
    text = "At the same budget, MixUp + AdamW + label smoothing raise accuracy over the plain ResNet recipe."
    r = _by_key(results)
    if "resnet50v2" not in r or "resnet50v2_sota" not in r:
        return Claim(text, "not measured", "needs resnet50v2 and resnet50v2_sota trained")
    a, b = r["resnet50v2"], r["resnet50v2_sota"]
    if a.metrics.get("backbone") != b.metrics.get("backbone") or not a.history or not b.history:
        return Claim(text, "not measured", "the two runs use different backbones or have no history")
    k = min(len(a.history), len(b.history))
    va, vb = a.history[k - 1]["val_accuracy"], b.history[k - 1]["val_accuracy"]
    ev = f"After {_n_epochs(k)} each: validation accuracy {_pct2(va)} plain -> {_pct2(vb)} with the tricks"
    ta, tb = _test_accuracy_by_epochs(a), _test_accuracy_by_epochs(b)
    common = sorted(ta.keys() & tb.keys())
    if common:
        e = common[-1]
        ev += f"; test accuracy after {_n_epochs(e)} {_pct2(ta[e])} -> {_pct2(tb[e])}"
    ev += (
        f". Shipped: resnet50v2 {_epochs(a.metrics)} {_pct2(a.accuracy)}, resnet50v2_sota "
        f"{_epochs(b.metrics)} {_pct2(b.accuracy)}."
    )
    # ReduceLROnPlateau reacts to each run's own validation accuracy; compare the rates as the text shows them, so
    # float32 round-off between two runs' stored rates is not called a difference
    ra, rb = (_rates(row.get("learning_rate") for row in x.history[:k]) for x in (a, b))
    if ra != rb:
        ev += (
            f" The rates differ too (plain {ra}; with the tricks {rb}), so the gap is the tricks and the schedule together."
        )
    n = (b.train_info or {}).get("n_validation") or (a.train_info or {}).get("n_validation")
    z = validation_gap_z(va, vb, n)
    if z is not None and abs(z) < 1.96:
        ev += (
            f" The validation gap ({100 * (vb - va):+.2f} points) is {abs(z):.1f} standard errors of a difference "
            f"between two accuracies on {n:,} images, under the 1.96 of a two-sided 95% test: at this budget the "
            "two recipes are not told apart."
        )
        return Claim(text, "within noise", ev)
    return Claim(text, "supported" if vb > va else "contradicted", ev)


def validation_gap_z(va: float, vb: float, n: int | None) -> float | None:
    """The gap between two accuracies measured on n images each, in standard errors of the difference (the two
    treated as independent, which overstates the error when both ran on the same images, so the test leans towards
    calling a gap noise). None when n is unknown."""
    if not n:
        return None
    p = (va + vb) / 2
    se = (2 * p * (1 - p) / n) ** 0.5
    return (vb - va) / se if se > 0 else None


def label_smoothing_calibrates(results) -> Claim:
    text = "Label smoothing (with MixUp) lowers over-confidence."
    r = _by_key(results)
    if "resnet50v2" not in r or "resnet50v2_sota" not in r:
        return Claim(text, "not measured", "needs resnet50v2 and resnet50v2_sota trained")
    ca, cb = r["resnet50v2"].metrics["calibration"], r["resnet50v2_sota"].metrics["calibration"]
    ev = (
        f"mean confidence on wrong answers {ca['mean_confidence_wrong']:.3f} -> {cb['mean_confidence_wrong']:.3f}; "
        f"ECE {ca['ece']:.4f} -> {cb['ece']:.4f}."
    )
    for x in (r["resnet50v2"], r["resnet50v2_sota"]):
        conf = x.metrics["calibration"].get("mean_confidence")
        if conf is not None and conf < x.accuracy - 0.01:  # ECE then measures under-confidence, not over-confidence
            ev += f" {x.stage.key} is under-confident: mean confidence {conf:.3f} against accuracy {x.accuracy:.3f}."
    ta, tb = ca.get("temperature"), cb.get("temperature")
    if ta is not None and tb is not None:  # the fitted temperature measures over-confidence directly: T > 1
        ev += (
            f" Fitted temperatures (T > 1: over-confident, T < 1: under-confident) {ta:.2f} -> {tb:.2f}; ECE after "
            f"scaling {ca['ece_scaled']:.4f} -> {cb['ece_scaled']:.4f}."
        )
        if tb < 1:
            ev += " Label smoothing overshoots: resnet50v2_sota is under-confident."
        return Claim(text, "supported" if tb < ta else "contradicted", ev)
    return Claim(text, "supported" if cb["mean_confidence_wrong"] < ca["mean_confidence_wrong"] else "contradicted", ev)


def small_net_from_scratch(results) -> Claim:
    text = (
        "Beyond the seed: a 2 M-parameter network trained from scratch (speedrun) matches the ImageNet ResNet "
        "at a fraction of its cost."
    )
    r = _by_key(results)
    resnets = [r[k] for k in ("resnet50v2_sota", "resnet50v2") if k in r]
    if "speedrun" not in r or not resnets:
        return Claim(text, "not measured", "needs speedrun and a ResNet stage trained")
    s, best = r["speedrun"], max(resnets, key=lambda x: x.accuracy)
    ms, mb = s.metrics, best.metrics
    # Training compute (3x the forward FLOPs per image seen) compares runs made on different machines; minutes
    # are shown with the machine they were measured on.
    fs, fb = train_flops(ms), train_flops(mb)
    ev = (
        f"speedrun {_pct(s.accuracy)} with {ms['params']:,} parameters, {ms['flops_per_image'] / 1e6:,.0f} MFLOP "
        f"per image, {_pflop(fs)} of training compute, {ms['train_seconds'] / 60:.1f} min ({_epochs(ms)}) on "
        f"{ms.get('train_machine')}; {best.stage.key} {_pct(best.accuracy)} with {mb['params']:,} parameters "
        f"({mb.get('backbone')} backbone), {mb['flops_per_image'] / 1e6:,.0f} MFLOP per image, {_pflop(fb)}, "
        f"{mb['train_seconds'] / 60:.1f} min ({_epochs(mb)}) on {mb.get('train_machine')}."
    )
    if fs and fb:
        ev += f" The ResNet run used {fb / fs:.1f}x the compute."
    cheaper = fs < fb if fs and fb else ms["train_seconds"] < mb["train_seconds"]
    matches = s.accuracy >= best.accuracy and cheaper
    return Claim(text, "supported" if matches else "contradicted", ev)


def train_flops(m: dict) -> float | None:
    """Training compute of a run: 3x the forward FLOPs per image, times the images seen (epochs x n_train)."""
    try:
        return 3.0 * m["flops_per_image"] * m["n_train"] * m["epochs"]
    except (KeyError, TypeError):
        return None


def _epochs(m):
    return _n_epochs(m["epochs"])


def _n_epochs(n):
    return f"{n} epoch" + ("" if n == 1 else "s")


def _pflop(flops):
    return f"{flops / 1e15:.2f} PFLOP" if flops else "unknown compute"


CHECKS = (
    colour_vs_shape,
    deep_mlp_overfits,
    augmentation_blocks_overfitting,
    frozen_is_small_and_fast,
    finetuning_helps,
    plateau_halving_helps,
    tricks_help_at_same_budget,
    label_smoothing_calibrates,
    small_net_from_scratch,
)


def evaluate_claims(results) -> list[Claim]:
    return [check(results) for check in CHECKS]
