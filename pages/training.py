import time

import pandas as pd
import streamlit as st

from cifar_dash import jobs, stages
from pages import _shared

_shared.page_setup("Training")

st.title("Training jobs")
st.caption(
    "Jobs run `python -m cifar_dash train STAGE` in the background (train, then evaluate). Start them from "
    "the sidebar; each stage runs one job at a time. A cancelled or failed job leaves the previous checkpoint "
    "as it was; its card in the sidebar offers to resume it from the last save (every 10 minutes, at every "
    "epoch end and on cancel), or run the same command with `--resume`."
)


@st.fragment(run_every=2)
def _table():
    rows = []
    for key in stages.KEYS:
        s = jobs.status(key)
        p = s.progress
        rows.append(
            {
                "stage": key,
                "state": s.state,
                "epoch": f"{p.get('epoch')}/{p.get('epochs')}" if p.get("epochs") else "",
                "ETA": _shared.fmt_seconds(p.get("eta_seconds")) if s.active else "",
                "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(s.job["started"]))
                if s.job
                else ("outside the dashboard" if s.external else ""),
                "message": s.message or "",
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    for key in stages.KEYS:
        if jobs.status(key).job:
            with st.expander(f"{key} log"):
                st.code(jobs.tail_log(key, 60) or "(empty)", language=None)


_table()
