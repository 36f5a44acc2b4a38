"""Command line: python -m cifar_dash COMMAND (stages, train, runs, promote, delete-run, evaluate, predict, ...)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from . import request


def _stages(args):
    from . import report, results

    print(report.stages_text(results.load_all(args.checkpoints)))
    return 0


def _train(args):
    from . import runtime, train

    req = request.TrainingRequest.from_namespace(args)
    if req.mixed_precision and (note := runtime.bfloat16_warning()):
        print(f"note: --mixed-precision: {note}", file=sys.stderr)
    print(f"run folder {train.train(req)}")
    return 0


def _tune(args):
    from . import runtime, speed, stages

    machine = runtime.info()
    stage = stages.get(args.stage)
    print(f"{args.stage} on {machine['machine']}, Keras {machine['versions']['keras']} ({machine['backend']}):")
    record = speed.measure(args.stage, steps=args.steps)
    for row in record["rows"]:
        print(
            f"  {row['precision']:15s} XLA {'on ' if row['xla'] else 'off'}: {row['step_seconds']:.3f} s a step of "
            f"{record['batch_size']}, {row['images_per_second']:.1f} images/s (median of {row['steps']})"
        )
    best, chosen = record["fastest"], record["chosen"]
    print(f"fastest: {best['precision']}, XLA {'on' if best['xla'] else 'off'}")
    print(
        f"chosen: {chosen['precision']}, XLA {'on' if chosen['xla'] else 'off'} (the recipe's own unless another is "
        f"over {round(100 * (record['margin'] - 1))}% faster)"
    )
    rule = speed.rule(stage.recipe, machine)
    print(f"(without a measurement: {rule.precision}, XLA {'on' if rule.xla else 'off'}: {rule.source})")
    if not args.dry_run:
        print(f"kept in {speed.write_record(machine, args.stage, record)}; train --speed auto uses it")
    if args.json:
        from .artifacts import project_root, write_json

        path = project_root() / "benchmarks" / "results" / runtime.results_name(f"tune-{args.stage}", machine)
        write_json(path, {"machine": runtime.record_machine(machine), "versions": machine["versions"], **record})
        print(f"wrote {path}")
    return 0


def _runs(args):
    from . import runs

    rows = [("run", "state", "started", "epochs", "test acc", "train time", "machine")]
    listed = runs.list_runs(args.stage)
    for r in listed:
        d = r.row()
        acc = f"{100 * d['test accuracy']:.2f}%" if d["test accuracy"] is not None else "-"
        secs = f"{d['train seconds'] / 60:.1f} min" if d["train seconds"] is not None else "-"
        state = d["state"] + (" (published)" if d["published"] else "") + (f": {d['note']}" if d["note"] else "")
        rows.append((d["run"], state, d["started"], str(d["epochs"] or "-"), acc, secs, d["machine"] or "-"))
    if not listed:
        print(f"{args.stage}: no runs (train one with `python -m cifar_dash train {args.stage}`)")
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _promote(args):
    from . import publish

    done = publish.promote(args.stage, args.run_id)
    old = f"{100 * done['old_accuracy']:.2f}%" if done["old_accuracy"] is not None else "-"
    print(
        f"{args.stage}: published run {done['promoted']} ({100 * done['new_accuracy']:.2f}%), replacing "
        f"{done['replaced'] or 'nothing'} ({old}); undo with: python -m cifar_dash promote {args.stage} "
        f"{done['replaced']}"
        if done["replaced"]
        else f"{args.stage}: published run {done['promoted']} ({100 * done['new_accuracy']:.2f}%)"
    )
    return 0


def _delete_run(args):
    from . import publish

    publish.delete(args.stage, args.run_id)
    print(f"{args.stage}: deleted run {args.run_id}")
    return 0


def _evaluate(args):
    from . import evaluate

    evaluate.evaluate(args.stage, out_dir=args.out, data_path=args.data, limit=args.limit)
    from . import artifacts, data, heldout

    folder = args.out or artifacts.stage_dir(args.stage)
    try:  # the new test predictions: the temperature's scaled ECE is measured again
        heldout.calibrate_stage_folder(Path(folder), data.load(args.data))
    except data.DataError as e:  # other data than the model trained on: nothing held out to fit on
        print(f"warning: no temperature fitted: {e}", file=sys.stderr)
    return 0


def _predict(args):
    import json

    from . import images

    decoded, problems = [], {}
    for path in args.images:  # inputs first: a missing file is reported before any model loads
        try:
            decoded.append((path, images.to_model_input(Path(path).read_bytes(), name=path)))
        except (images.ImageError, OSError) as e:
            problems[path] = str(e) if isinstance(e, images.ImageError) else f"{path}: {e.strerror or e}"
    for problem in problems.values():
        print(f"error: {problem}", file=sys.stderr)
    if not decoded:
        return 1
    from . import answers

    out = answers.for_files([p for p, _ in decoded], np.stack([a for _, a in decoded]), args.checkpoints)
    if out is None:
        print("no trained stages: run `python -m cifar_dash train mlp` first", file=sys.stderr)
        return 1
    rows, notes = out
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        rows += [{"file": p, "error": e} for p, e in problems.items()]
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            print(answers.as_text(row))
    return 1 if problems else 0


def _calibrate(args):
    from . import heldout

    heldout.calibrate(args.stages, data_path=args.data, root=args.checkpoints, detector=not args.no_detector)
    return 0


def _embed(args):
    from . import embedding

    embedding.embed(args.stages, data_path=args.data, root=args.checkpoints)
    return 0


def _label_issues(args):
    from . import label_issues

    label_issues.build(root=args.checkpoints)
    return 0


def _robustness(args):
    from . import robustness

    robustness.run(args.stage, limit=args.limit or None, data_path=args.data)
    return 0


def _seeds(args):
    from . import artifacts, report

    summary = report.seeds_summary(args.stage, args.folders)
    out = artifacts.stage_dir(args.stage) / artifacts.SEEDS
    artifacts.write_json(out, summary)
    sd = summary["std_test_accuracy"]
    print(
        f"{args.stage}: {summary['n_runs']} runs, test accuracy {100 * summary['mean_test_accuracy']:.2f}%"
        + (f" +- {100 * sd:.2f}" if sd is not None else "")
        + f"; written to {out}"
    )
    return 0


def _test_sample(args):
    from . import artifacts, data, label_issues, results, stages, testimages

    preds = {s.key: results.predictions(s.key) for s in stages.STAGES if results.load_result(s.key).ok}
    try:
        suspects = [e["index"] for e in label_issues.load()["entries"][:96]]
    except artifacts.ArtifactError:
        suspects = []
    info = testimages.write_sample(data.load(args.data), testimages.select(preds, suspects=suspects))
    print(
        f"wrote {testimages.assets_dir() / testimages.SAMPLE}: {info['n_images']:,} of {info['of']:,} test images "
        f"(sha256 {info['sha256'][:12]}), chosen from {len(preds)} stages' predictions"
    )
    return 0


def _results_table(args):
    from . import report

    print(report.results_markdown(args.checkpoints))
    return 0


def _docs(args):
    from . import docs

    stale = docs.update(args.checkpoints, check=args.check)
    if args.check:
        if stale:
            print("out of date (run `python -m cifar_dash docs`): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("every generated block is up to date")
    else:
        print("rewrote the generated blocks of " + (", ".join(stale) if stale else "nothing (all up to date)"))
    return 0


def _stage_key(text: str) -> str:
    from .stages import STAGES

    keys = [s.key for s in STAGES]
    if text not in keys:
        raise argparse.ArgumentTypeError(f"unknown stage {text!r} (choose from {', '.join(keys)})")
    return text


def build_parser() -> argparse.ArgumentParser:
    from .stages import KEYS

    p = argparse.ArgumentParser(prog="python -m cifar_dash", description=__doc__)
    p.add_argument("--checkpoints", type=Path, default=None, help="checkpoints folder (default: ./checkpoints)")
    p.add_argument("--verbose", action="store_true", help="keep TensorFlow's and absl's start-up logging")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("stages", help="list the stages with reported and measured accuracy").set_defaults(fn=_stages)

    t = sub.add_parser(
        "train",
        help="train a stage (then evaluate it) into a new run folder checkpoints/STAGE/runs/RUN_ID/; "
        "the published model changes only by `promote`",
    )
    request.add_arguments(t)  # one flag per field of the training request
    t.set_defaults(fn=_train)
    _add_model_commands(sub, KEYS)
    _add_run_commands(sub, KEYS)
    return p


def _add_model_commands(sub, KEYS) -> None:
    """Commands that measure or use the published models: tune, evaluate, predict, calibrate, embed, label-issues,
    robustness."""
    tu = sub.add_parser(
        "tune",
        help="measure which precision and XLA setting trains STAGE fastest on this machine; train --speed auto then uses it",
    )
    tu.add_argument("stage", choices=KEYS)
    tu.add_argument("--steps", type=request.positive_int, default=3, help="timed steps per setting (after one warm-up)")
    tu.add_argument("--dry-run", action="store_true", help="print the figures without keeping them")
    tu.add_argument("--json", action="store_true", help="also write benchmarks/results/tune-STAGE-<device>-<backend>.json")
    tu.set_defaults(fn=_tune)

    e = sub.add_parser("evaluate", help="evaluate checkpoints/STAGE/model.keras on the test set")
    e.add_argument("stage", choices=KEYS)
    e.add_argument("--data")
    e.add_argument("--out", type=Path)
    e.add_argument("--limit", type=request.positive_int, help="first N test images")
    e.set_defaults(fn=_evaluate)

    pr = sub.add_parser(
        "predict",
        help="every trained stage's calibrated top-3 per image, the summary and the none-of-these-classes flag",
    )
    pr.add_argument("images", nargs="+")
    pr.add_argument("--json", action="store_true", help="print the answers as JSON")
    pr.set_defaults(fn=_predict)

    ca = sub.add_parser(
        "calibrate",
        help="fit each stage's temperature on its validation images (metrics.json) and the none-of-these-classes "
        "detector (checkpoints/ood.json)",
    )
    ca.add_argument("stages", nargs="*", type=_stage_key, help="stages to calibrate (default: every trained stage)")
    ca.add_argument("--data")
    ca.add_argument("--no-detector", action="store_true", help="fit the temperatures only")
    ca.set_defaults(fn=_calibrate)

    em = sub.add_parser(
        "embed",
        help="each stage's 2-D map of its test features (checkpoints/STAGE/embedding.npz) and its kNN separation",
    )
    em.add_argument("stages", nargs="*", type=_stage_key, help="stages to map (default: every trained stage)")
    em.add_argument("--data")
    em.set_defaults(fn=_embed)

    sub.add_parser(
        "label-issues",
        help="rank the test images whose labels the strongest stages contradict (checkpoints/label_issues.json)",
    ).set_defaults(fn=_label_issues)

    rb = sub.add_parser(
        "robustness",
        help="accuracy under grayscale, flips, shifts, noise, blur, JPEG, colour-only "
        "and shape-only views; writes checkpoints/STAGE/robustness.json",
    )
    rb.add_argument("stage", choices=KEYS)
    rb.add_argument(
        "--limit", type=request.non_negative_int, default=2000, help="first N test images (default 2000; 0 = all)"
    )
    rb.add_argument("--data")
    rb.set_defaults(fn=_robustness)


def _add_run_commands(sub, KEYS) -> None:
    """Commands about runs and the generated files: runs, promote, delete-run, seeds, test-sample, results-table,
    docs."""
    ru = sub.add_parser("runs", help="list a stage's runs: id, state, date, epochs, test accuracy, time, machine")
    ru.add_argument("stage", choices=KEYS)
    ru.set_defaults(fn=_runs)

    pm = sub.add_parser(
        "promote", help="publish a finished run as checkpoints/STAGE/ (the replaced one stays a run: undo by promoting it)"
    )
    pm.add_argument("stage", choices=KEYS)
    pm.add_argument("run_id")
    pm.set_defaults(fn=_promote)

    dr = sub.add_parser("delete-run", help="delete a run folder (never the published run, never a live one)")
    dr.add_argument("stage", choices=KEYS)
    dr.add_argument("run_id")
    dr.set_defaults(fn=_delete_run)

    sd = sub.add_parser("seeds", help="summarise runs of one stage with different seeds into checkpoints/STAGE/seeds.json")
    sd.add_argument("stage", choices=KEYS)
    sd.add_argument("folders", nargs="+", type=Path, help="run folders of `train STAGE --seed N`")
    sd.set_defaults(fn=_seeds)

    ts = sub.add_parser(
        "test-sample",
        help="rewrite assets/cifar10-test-sample.npz, the test images the pages show without CIFAR10_PATH",
    )
    ts.add_argument("--data", help="CIFAR-10 copy (default: $CIFAR10_PATH, else the Keras download)")
    ts.set_defaults(fn=_test_sample)

    rt = sub.add_parser("results-table", help="print the detailed results table, generated from metrics.json files")
    rt.set_defaults(fn=_results_table)

    dc = sub.add_parser("docs", help="rewrite the generated tables of README.md and docs/*.md from the artifacts")
    dc.add_argument("--check", action="store_true", help="only say which documents are out of date (exit 1 if any)")
    dc.set_defaults(fn=_docs)


def main(argv=None) -> int:
    from . import runtime

    args = build_parser().parse_args(argv)
    if not args.verbose:
        runtime.quiet_native_logging()
    if args.checkpoints:
        os.environ["CIFAR_DASH_CHECKPOINTS"] = str(args.checkpoints)
    from . import artifacts, data, images

    try:
        return args.fn(args)
    except (data.DataError, artifacts.ArtifactError, images.ImageError, ValueError, KeyError) as e:
        print(f"error: {str(e).strip(chr(39))}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder that cannot be written, a full disk: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    except Exception as e:  # by name: commands that do not train never import Keras
        if type(e).__name__ in ("BackboneWeightsError", "OutOfMemory"):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if type(e).__name__ == "Cancelled":
            print("cancelled; resume with --resume", file=sys.stderr)
            return 130
        raise
