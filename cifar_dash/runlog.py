"""A run's epoch log: what Keras' CSVLogger wrote (``log.csv`` in the run folder), as history rows with 1-based
``epoch``, and a continued run's history before them. No Keras here."""

from __future__ import annotations

import csv
from pathlib import Path

LOG = "log.csv"


def read_log(folder: Path | None) -> list[dict]:
    """The epochs Keras' CSVLogger wrote, as history rows with 1-based ``epoch`` (CSVLogger counts from 0): one row
    per finished epoch; a row written twice, by a run killed between logging and backing up an epoch and then
    resumed, counts once: the later one."""
    if folder is None:
        return []
    path = Path(folder) / LOG
    if not path.exists():
        return []
    rows: dict[int, dict] = {}
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for k, v in raw.items():
                if k is None or v in (None, "", "NA"):  # CSVLogger writes val_* as NA when there is no validation
                    continue
                try:
                    row[k] = float(v)
                except ValueError:
                    row[k] = v
            if "epoch" in row:
                row["epoch"] = int(row["epoch"]) + 1
                rows[row["epoch"]] = row
    return [rows[k] for k in sorted(rows)]


def log_rows(folder: Path, start_epoch: int, end_epoch: int, prior: list) -> list:
    """History rows (1-based ``epoch``) of epochs start..end-1: from a continued run's history, then this run's log."""
    rows = [dict(r) for r in prior] + read_log(folder)
    by_epoch = {r["epoch"]: r for r in rows}
    return [by_epoch[e] for e in sorted(by_epoch) if start_epoch < e <= end_epoch]


def history_rows(folder: Path, prior: list) -> list:
    """The run's whole history (continued run's epochs first), one row per epoch, in the order of history.json."""
    out = []
    for r in log_rows(folder, 0, 10**9, prior):
        row = {"epoch": r["epoch"], "phase": r.get("phase"), "seconds": r.get("seconds")}
        row.update({k: v for k, v in r.items() if k not in row})
        out.append(row)
    return out
