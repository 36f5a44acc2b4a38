"""The figures in README.md and docs/*.md, generated from the stored artifacts (never typed by hand).

A document marks each generated block with ``<!-- generated:NAME -->`` ... ``<!-- /generated:NAME -->``;
``python -m cifar_dash docs`` rewrites every block of every document in place, and ``--check`` says which are stale
(a test runs the check on the shipped checkpoints).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from . import artifacts, claims, report, results
from .markdown import pct as _pct
from .markdown import table as _table

DOCUMENTS = (
    "README.md",
    "docs/results.md",
    "docs/speedrun.md",
    "docs/benchmarks.md",
    "docs/reproduce.md",
    "docs/calibration.md",
    "docs/inside.md",
)
_BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def results_compact(res) -> str:
    """README's table: reported against measured, and what the measured figure cost."""
    rows = []
    for r in res:
        s, m = r.stage, r.metrics
        if not m:
            rows.append([f"`{s.key}`", s.title, f"{s.reported_accuracy:.2f}%", r.status, "-", "-", "-"])
            continue
        measured = _pct(m["test_accuracy"]) + (" (stale)" if r.status == "stale" else "")
        rows.append(
            [
                f"`{s.key}`",
                s.title,
                f"{s.reported_accuracy:.2f}%",
                f"**{measured}**",
                f"{100 * m['test_accuracy'] - s.reported_accuracy:+.2f}",
                m.get("epochs", "-"),
                report._duration(m.get("train_seconds")),
            ]
        )
    return _table(["stage", "what it is", "reported", "measured", "vs reported", "epochs", "train time (CPU)"], rows)


def epochs_table(res) -> str:
    """Per epoch of every run continued from a published one (``--continue-from``): rate, machine, precision,
    seconds, validation accuracy and the test accuracy the run ending at that epoch measured."""
    rows = []
    for r in res:
        if not r.metrics or not (r.train_info or {}).get("continued_from"):
            continue
        spans = report.lineage(r.train_info, r.metrics.get("epochs"))
        for row in r.history or []:
            e = row.get("epoch")
            span = next((s for s in spans if s["first"] <= e <= s["last"]), None)
            if span is None:
                continue
            test = r.metrics["test_accuracy"] if span is spans[-1] else span["test_accuracy"]
            ends = e == span["last"]
            rows.append(
                [
                    f"`{r.stage.key}`",
                    e,
                    f"{row.get('learning_rate', 0):.0e}",
                    f"{span['machine'] or '-'}, {'bfloat16' if span['mixed_precision'] else 'float32'}",
                    f"{row.get('seconds', 0):,.0f}",
                    _pct(row.get("val_accuracy")),
                    _pct(test) if ends and test is not None else "(not evaluated)",
                ]
            )
    return _table(["stage", "epoch", "rate", "machine, precision", "seconds", "validation", "test after it"], rows)


def claims_table(res) -> str:
    return _table(
        ["the seed says", "verdict", "evidence"],
        [[c.claim, f"**{c.verdict}**", c.evidence] for c in claims.evaluate_claims(res)],
    )


def robustness_table(res) -> str:
    sweeps = {r.stage.key: claims.robustness_of(r) for r in res if r.metrics}
    sweeps = {k: v for k, v in sweeps.items() if v}
    if not sweeps:
        return "No robustness sweep is stored (`python -m cifar_dash robustness STAGE`)."
    conditions = list(next(iter(sweeps.values()))["accuracy"])
    rows = [[f"`{k}`", f"{v['n_test']:,}", *(_pct(v["accuracy"].get(c), 1) for c in conditions)] for k, v in sweeps.items()]
    return _table(["stage", "test images", *conditions], rows)


def calibration_table(res) -> str:
    rows = []
    for r in res:
        if not r.metrics:
            continue
        c = r.metrics["calibration"]
        t = c.get("temperature")
        fit = {"validation": "validation"}.get(c.get("fit_on"), "test, 2-fold cross-fit") if t is not None else "-"
        rows.append(
            [
                f"`{r.stage.key}`",
                _pct(r.metrics["test_accuracy"]),
                f"{c['ece']:.3f}",
                f"{t:.3f}" if t is not None else "-",
                fit,
                f"{c['ece_scaled']:.3f}" if t is not None else "-",
                f"{c['ece_floor']:.3f}" if c.get("ece_floor") is not None else "-",
                f"{c['mean_confidence']:.3f}",
                f"{c.get('mean_confidence_scaled'):.3f}" if t is not None else "-",
                f"{c.get('mean_confidence_correct') or 0:.3f}",
                f"{c.get('mean_confidence_wrong') or 0:.3f}",
            ]
        )
    head = ["stage", "accuracy", "ECE", "temperature", "fit on", "ECE scaled", "noise floor", "mean confidence", "scaled",
            "on right answers", "on wrong answers"]  # fmt: skip
    return _table(head, rows)


def ood_table(res) -> str:
    """The none-of-these-classes detector's measured rates, from checkpoints/ood.json."""
    from . import ood

    roots = {r.folder.parent for r in res if r.folder is not None}
    try:
        d = ood.load(next(iter(roots)) if len(roots) == 1 else None).record
    except artifacts.ArtifactError as e:
        return f"No detector is fitted ({e})."
    rows = [["CIFAR-10 test images (false alarms)", f"{d['n_test']:,}", "-", f"{d['false_alarm_rate']:.1%}"]]
    for name, v in d["sets"].items():
        rows.append([f"non-CIFAR: {name}", f"{v['n']:,}", f"{v['n_evaluation']:,}", f"{v['detection_rate_evaluation']:.1%}"])
    rows.append(["non-CIFAR: all held-out pictures", f"{d['n_all']:,}", f"{d['n_evaluation']:,}",
                 f"**{d['detection_rate_evaluation']:.1%}**"])  # fmt: skip
    head = ["images", "in the set", "held out (evaluation half)", "flagged"]
    rule = (
        f"Method `{d['method']}` on `{d['stage']}`'s `{d['layer']}` features, k = {d['k']}, bank of {d['bank_size']:,} "
        f"training images; threshold {d['threshold']:.4f} (the score {d['quantile']:.0%} of the validation images "
        "stay under)."
    )
    return rule + "\n\n" + _table(head, rows)


def separation_table(res) -> str:
    """Per stage: accuracy, kNN separation of its features and what the map cost, from metrics.json/embedding.npz."""
    from . import embedding

    rows = []
    for r in res:
        if not r.metrics:
            continue
        try:
            meta = embedding.load(r.folder).meta
        except artifacts.ArtifactError:
            rows.append([r.stage.key, _pct(r.accuracy), "-", "-", "-", "no map: `python -m cifar_dash embed`"])
            continue
        sep = meta["separation"]
        cost = f"{meta.get('features_seconds', 0):.0f} s + {meta['seconds']:.0f} s"
        rows.append([r.stage.key, _pct(r.accuracy), _pct(sep["knn_accuracy"]), meta["feature_dims"], cost, meta["method"]])
    head = ["stage", "test accuracy", "kNN separation", "feature dims", "features + map", "map"]
    return _table(head, rows)


def label_issues_table(res) -> str:
    """The planted-noise check, the top suspects and the what-if accuracies, from checkpoints/label_issues.json."""
    from . import label_issues
    from .data import CLASS_NAMES

    roots = {r.folder.parent for r in res if r.folder is not None}
    try:
        d = label_issues.load(next(iter(roots)) if len(roots) == 1 else None)
    except artifacts.ArtifactError as e:
        return f"No ranking yet ({e})."
    nc = d["noise_check"]
    head = (
        f"{len(d['entries'])} suspects ranked from {', '.join(d['strong'])}; {d['n_flagged']} flagged by cleanlab. "
        f"Planted noise ({nc['n_flipped']} labels flipped, seeds {nc['seeds'][0]}-{nc['seeds'][-1]}): "
        f"top 100 holds {nc['recall_at']['100']:.1%} of them (lowest seed {nc['min_recall_at']['100']:.0%}), top 200 "
        f"{nc['recall_at']['200']:.1%} (lowest {nc['min_recall_at']['200']:.0%})."
    )
    top = [
        [k + 1, e["index"], CLASS_NAMES[e["label"]], CLASS_NAMES[e["suggested"]], f"{e['score']:.4f}",
         f"{e['agree']}/{len(d['stages'])}", "yes" if e.get("flagged") else ""]
        for k, e in enumerate(d["entries"][:10])
    ]  # fmt: skip
    wi = [[k, _pct(v["accuracy"]), _pct(v["accuracy_without"]), v["left_out"]] for k, v in d["what_if"].items()]
    return "\n\n".join(
        [
            head,
            _table(["rank", "test image", "given", "suggested", "score", "stages agreeing", "flagged"], top),
            "What-if (never instead of the measured figure):",
            _table(["stage", "measured", "without the flagged images", "left out"], wi),
        ]
    )


def speedrun_runs(res) -> str:
    r = next((x for x in res if x.stage.key == "speedrun" and x.folder), None)
    try:
        doc = artifacts.read_json(r.folder / artifacts.SEEDS) if r else None
    except artifacts.ArtifactError:
        doc = None
    if not doc:
        return "No seed runs are stored (`python -m cifar_dash runs speedrun DIR...`)."
    rows = [
        [
            run.get("seed", "-"),
            _pct(run.get("test_accuracy")),
            _pct(run.get("one_view_accuracy")),
            report._duration(run.get("train_seconds")),
            run.get("machine", "-"),
        ]
        for run in doc["runs"]
    ]
    sd = doc.get("std_test_accuracy")
    rows.append(
        [
            f"**mean of {doc['n_runs']}**",
            f"**{_pct(doc['mean_test_accuracy'])}**" + (f" ± {100 * sd:.2f} (sd)" if sd is not None else ""),
            _pct(doc.get("mean_one_view_accuracy")),
            report._duration(doc.get("mean_train_seconds")),
            "",
        ]
    )
    return _table(["seed", "test (flip + shift TTA)", "one view", "train time", "machine"], rows)


def speedrun_ablations(res) -> str:
    r = next((x for x in res if x.stage.key == "speedrun" and x.folder), None)
    try:
        protocol, rows = report.ablation_table(artifacts.read_json(r.folder / artifacts.ABLATIONS)) if r else ("", [])
    except artifacts.ArtifactError:
        protocol, rows = "", []
    if not rows:
        return "No ablation is stored (`python benchmarks/ablate_speedrun.py`)."
    head = list(rows[0])
    return f"{protocol}.\n\n" + _table(head, [[row[h] for h in head] for row in rows])


def training_benchmarks(_res) -> str:
    out = []
    for path in sorted((artifacts.project_root() / "benchmarks" / "results").glob("bench_training*.json")):
        doc = json.loads(path.read_text())
        machine = (doc.get("runtime") or {}).get("machine", "-")
        for row in doc.get("rows", []):
            out.append(
                [
                    f"`{path.name}`",
                    machine,
                    row["stage"],
                    row["policy"],
                    "on" if row["xla"] else "off",
                    row["batch_size"],
                    f"{row['images_per_second']:,}",
                    f"{row.get('train_gflops_per_second', '-')}",
                    f"{doc.get('matmul_gflops', '-')}",
                    f"{row.get('peak_rss_mb', 0):,.0f}",
                ]
            )
    head = ["file", "machine", "stage", "precision", "XLA", "batch", "images/s", "GFLOP/s", "matmul GFLOP/s", "peak MB"]
    return _table(head, out)


def accelerator_benchmarks(_res) -> str:
    """benchmarks/bench_accelerator.py's stored runs: per stage, model step against the plain reference and the
    whole pipeline against the model step."""
    out = []
    for path in sorted((artifacts.project_root() / "benchmarks" / "results").glob("accelerator-*.json")):
        doc = json.loads(path.read_text())
        machine = (doc.get("machine") or {}).get("machine", "-")
        for row in doc.get("rows", []):
            out.append(
                [
                    f"`{path.name}`",
                    doc.get("date", "-"),
                    machine,
                    row["backend"],
                    f"`{row['stage']}`",
                    row["precision"],
                    row["batch_size"],
                    {True: "yes", False: "no"}.get(row.get("compiled"), "-"),
                    f"{row['model_ips']:,.1f}",
                    f"{row['reference_ips']:,.1f}",
                    f"{row['model_ips'] / row['reference_ips']:.2f}",
                    f"{row['pipeline_ips']:,.1f}",
                    f"{row['pipeline_ips'] / row['model_ips']:.2f}",
                ]
            )
    head = ["file", "date", "machine", "backend", "stage", "precision", "batch", "compiled step", "model step img/s",
            "reference img/s", "model / reference", "pipeline img/s", "pipeline / model"]  # fmt: skip
    return _table(head, out) if out else "No stored runs yet."


def speed_choices(_res) -> str:
    """``python -m cifar_dash tune STAGE --json``'s stored measurements: each precision and XLA setting's step time,
    and what ``train --speed auto`` takes from them."""
    out = []
    for path in sorted((artifacts.project_root() / "benchmarks" / "results").glob("tune-*.json")):
        doc = json.loads(path.read_text())
        machine = (doc.get("machine") or {}).get("machine", "-")
        fastest, chosen = doc.get("fastest") or {}, doc.get("chosen") or {}
        for row in doc.get("rows", []):
            setting = {"precision": row["precision"], "xla": row["xla"]}
            marks = [m for m, d in (("fastest", fastest), ("chosen", chosen)) if d == setting]
            out.append(
                [
                    f"`{path.name}`",
                    doc.get("date", "-"),
                    machine,
                    (doc.get("machine") or {}).get("backend", "-"),
                    f"`{doc['stage']}`",
                    doc["batch_size"],
                    row["precision"],
                    "on" if row["xla"] else "off",
                    f"{row['step_seconds']:.2f}",
                    f"{row['images_per_second']:,.1f}",
                    row.get("steps", doc.get("steps")),
                    ", ".join(marks) or "",
                ]
            )
    head = ["file", "date", "machine", "backend", "stage", "batch", "precision", "XLA", "s a step (median)",
            "images/s", "steps timed", ""]  # fmt: skip
    return _table(head, out) if out else "No stored measurements yet."


def ood_selection(res) -> str:
    """The detector candidates tools/select_ood_method.py compared (docs/ood_selection.json)."""
    path = artifacts.project_root() / "docs" / "ood_selection.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return "No comparison stored (`python tools/select_ood_method.py`)."
    sets = [k for k in d["rows"][0] if k not in ("stage", "score", "layer", "false_alarm_rate", "selection")]
    rows = [
        [f"`{r['stage']}`", r["score"], r.get("layer", "probabilities"), f"{r['false_alarm_rate']:.1%}",
         f"**{r['selection']:.1%}**", *(f"{r[k]:.0%}" for k in sets)]
        for r in d["rows"]
    ]  # fmt: skip
    head = ["stage", "score", "features", "false alarms (test)", f"flagged (selection half, {d['n_selection']})", *sets]
    return _table(head, rows)


BLOCKS: dict[str, Callable] = {
    "results": results_compact,
    "results-detail": lambda res: report.results_markdown_for(res),
    "epochs": epochs_table,
    "claims": claims_table,
    "robustness": robustness_table,
    "calibration": calibration_table,
    "ood": ood_table,
    "ood-selection": ood_selection,
    "separation": separation_table,
    "label-issues": label_issues_table,
    "speedrun-runs": speedrun_runs,
    "speedrun-ablations": speedrun_ablations,
    "training-benchmarks": training_benchmarks,
    "accelerator-benchmarks": accelerator_benchmarks,
    "speed-choices": speed_choices,
}


def render(text: str, res) -> str:
    """``text`` with every generated block rewritten from ``res``; an unknown block name is an error."""

    def fill(m):
        name = m.group("name")
        if name not in BLOCKS:
            raise ValueError(f"unknown generated block {name!r} (known: {', '.join(BLOCKS)})")
        return m.group(1) + BLOCKS[name](res).rstrip("\n") + "\n" + m.group(4)

    return _BLOCK.sub(fill, text)


def update(root: Path | None = None, check: bool = False, documents=DOCUMENTS) -> list[str]:
    """Rewrite (or, with ``check``, only compare) the generated blocks of ``documents``; returns the stale ones."""
    res = results.load_all(root)
    stale = []
    for name in documents:
        path = artifacts.project_root() / name
        if not path.exists():
            continue
        text = path.read_text()
        new = render(text, res)
        if new != text:
            stale.append(name)
            if not check:
                path.write_text(new)
    return stale
