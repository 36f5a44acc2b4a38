"""Figures of what is inside the stages: a stage's 2-D feature map and class separation against accuracy."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .data import CLASS_NAMES

# ten colours told apart in print and by most colour-blind readers (Plotly's "D3" set)
CLASS_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def embedding_map(
    xy: np.ndarray, labels: np.ndarray, predicted: np.ndarray, indices: np.ndarray, title: str = "", drag="tap"
):
    """WebGL scatter of one stage's map: a colour per true class, misclassified images as crosses. Each point carries
    its test index (``customdata``) so a selection names the images. ``drag``: "tap" (a drag scrolls the page, a tap
    or click selects a dot: Streamlit selects on click only outside the lasso and box modes), "lasso" or "box"."""
    xy = np.asarray(xy, np.float32)
    labels, predicted, indices = (np.asarray(a).reshape(-1) for a in (labels, predicted, indices))
    fig = go.Figure()
    for c, name in enumerate(CLASS_NAMES):
        for wrong in (False, True):
            m = (labels == c) & ((predicted != labels) == wrong)
            fig.add_trace(
                go.Scattergl(
                    x=xy[m, 0],
                    y=xy[m, 1],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=not wrong,
                    customdata=indices[m],
                    text=[CLASS_NAMES[int(p)] for p in predicted[m]],
                    marker=dict(
                        color=CLASS_COLOURS[c],
                        size=6 if wrong else 4,
                        symbol="x" if wrong else "circle",
                        opacity=0.9 if wrong else 0.6,
                    ),
                    hovertemplate=(
                        f"test image %{{customdata}}<br>true {name}<br>"
                        + ("<b>predicted %{text}</b>" if wrong else "predicted correctly")
                        + "<extra></extra>"
                    ),
                )
            )
    axis = dict(showticklabels=False, showgrid=False, zeroline=False, title=None)
    fig.update_layout(
        title=dict(text=title, font=dict(size=14)),
        xaxis=axis,
        yaxis=dict(scaleanchor="x", **axis),
        height=460,
        margin=dict(l=5, r=5, t=40 if title else 10, b=5),
        legend=dict(orientation="h", yanchor="top", y=-0.02, x=0, font=dict(size=10), itemsizing="constant"),
        dragmode={"tap": False, "lasso": "lasso", "box": "select"}[drag],
        clickmode="event+select",  # a click or a tap on a dot selects it (in tap mode)
        hovermode="closest",
        plot_bgcolor="white",
    )
    return fig


def separation_chart(results) -> go.Figure:
    """Per stage: test accuracy beside how well the classes separate in its penultimate features (kNN)."""
    keys, acc, sep, hover = [], [], [], []
    for r in results:
        m = r.metrics or {}
        s = m.get("separation") or {}
        keys.append(r.stage.key)
        acc.append(100 * m["test_accuracy"] if m else None)
        sep.append(100 * s["knn_accuracy"] if s.get("knn_accuracy") is not None else None)
        hover.append(s.get("rule", "not computed yet: python -m cifar_dash embed " + r.stage.key))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=keys, y=acc, name="test accuracy (the stage's classifier)", marker_color="#1f77b4"))
    fig.add_trace(go.Bar(x=keys, y=sep, name="kNN separation of its features", marker_color="#ff7f0e", hovertext=hover))
    fig.update_layout(
        barmode="group",
        yaxis=dict(title="%", range=[0, 100], fixedrange=True),
        xaxis=dict(tickangle=-40, fixedrange=True, automargin=True),
        legend=dict(orientation="h", yanchor="top", y=-0.35, x=0),
        margin=dict(l=10, r=10, t=10, b=10),
        height=380,
    )
    return fig
