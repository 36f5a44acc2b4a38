"""Plotly figure builders. Pure functions of stored artifacts, so they are tested without Streamlit."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .analysis import backbone_label
from .data import CLASS_NAMES
from .markdown import plural, seconds

REPORTED_COLOR = "#9aa5b1"
MEASURED_COLOR = "#1f77b4"


def label_positions(values) -> list[str]:
    """Where each point's label sits clear of the line through the points: above a peak and at the ends (and beside a
    gap); elsewhere above and toward the lower neighbour, whose segment runs below the label."""
    out = []
    for i, v in enumerate(values):
        prev = values[i - 1] if i and values[i - 1] is not None else None
        after = values[i + 1] if i + 1 < len(values) and values[i + 1] is not None else None
        if v is None or prev is None or after is None or prev <= v >= after:
            out.append("top center")
        else:
            out.append("top left" if prev < after else "top right")
    return out


def growth_curve(results) -> go.Figure:
    """The seed's accuracy growth curve: reported figure per stage beside our measured one."""
    keys = [r.stage.key for r in results]
    reported = [r.stage.reported_accuracy for r in results]
    measured, hover = [], []
    for r in results:
        m = r.metrics
        measured.append(100 * m["test_accuracy"] if m else None)
        evidence = (
            f"measured {100 * m['test_accuracy']:.2f}% on {m['n_test']:,} test images<br>"
            f"{plural(m.get('epochs'), 'epoch')}, {seconds(m.get('train_seconds'))} on {m.get('train_machine')}"
            + (f"<br>backbone: {backbone_label(r)}" if m.get("backbone") else "")
            if m
            else f"not measured ({r.status})"
        )
        hover.append(
            f"<b>{r.stage.title}</b><br>{r.stage.changed}<br>reported {r.stage.reported_accuracy:.2f}%<br>{evidence}"
        )
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=keys,
            y=reported,
            name="reported (seed deck)",
            mode="lines+markers",
            line=dict(color=REPORTED_COLOR, dash="dash"),
            hovertext=hover,
            hoverinfo="text",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=keys,
            y=measured,
            name="measured here",
            mode="lines+markers+text",
            line=dict(color=MEASURED_COLOR, width=3),
            marker=dict(size=10),
            text=[f"{v:.1f}" if v is not None else "" for v in measured],
            textposition=label_positions(measured),
            hovertext=hover,
            hoverinfo="text",
            connectgaps=False,
        )
    )
    fig.update_layout(
        yaxis_title="test accuracy (%)",
        xaxis_title="stage",
        xaxis=dict(automargin=True, tickangle=-40),
        hovermode="closest",
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.45, x=0),  # below: the chart's toolbar sits top right
    )
    return fig


def cost_scatter(results, x: str = "params") -> go.Figure:
    """Accuracy against cost (parameters or training seconds), log x axis: one coloured point per stage, named in the
    legend below the chart (labels beside the points overlapped where two stages share a cost, and on a phone)."""
    pts = [r for r in results if r.metrics and r.metrics.get(x)]
    label = {"params": "parameters", "train_seconds": "training seconds", "flops_per_image": "FLOPs per image"}[x]
    symbols = ["circle", "square", "diamond", "triangle-up", "x", "star", "hexagon", "cross", "triangle-down"]
    fig = go.Figure()
    for i, r in enumerate(pts):
        fig.add_trace(
            go.Scatter(
                x=[r.metrics[x]],
                y=[100 * r.metrics["test_accuracy"]],
                mode="markers",
                name=r.stage.key,
                marker=dict(size=13, symbol=symbols[i % len(symbols)]),
                hovertext=f"{r.stage.title}<br>{label}: {r.metrics[x]:,.0f}<br>accuracy "
                f"{100 * r.metrics['test_accuracy']:.2f}%<br>machine: {r.metrics.get('train_machine')}",
                hoverinfo="text",
            )
        )
    fig.update_layout(
        xaxis_type="log",
        xaxis_title=f"{label} (log scale)",
        yaxis_title="test accuracy (%)",
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.25, x=0),
        height=480,
    )
    return fig


def training_curves(history: list[dict], metric: str = "accuracy", spans: list[dict] = ()) -> go.Figure:
    """Train and validation curves per epoch; a dotted line where the phase changes, a dashed one where the run was
    continued from a published run (``spans`` from report.lineage: the optimizer restarted there)."""
    epochs = [h["epoch"] for h in history]
    fig = go.Figure()
    name = "learning rate" if metric == "learning_rate" else f"train {metric}"
    fig.add_trace(go.Scatter(x=epochs, y=[h.get(metric) for h in history], name=name, mode="lines+markers"))
    if any(f"val_{metric}" in h for h in history):  # recipes that train on every image have no validation curve
        fig.add_trace(
            go.Scatter(
                x=epochs, y=[h.get(f"val_{metric}") for h in history], name=f"validation {metric}", mode="lines+markers"
            )
        )
    phases = [h.get("phase") for h in history]
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            fig.add_vline(x=epochs[i] - 0.5, line_dash="dot", annotation_text=phases[i])
    for span in list(spans)[1:]:
        label = "continued" + (", bfloat16" if span["mixed_precision"] else "")
        fig.add_vline(x=span["first"] - 0.5, line_dash="dash", annotation_text=label, annotation_position="bottom right")
    fig.update_layout(
        xaxis_title="epoch",
        yaxis_title=name if metric == "learning_rate" else metric,
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", y=1.1),
    )
    if metric == "learning_rate":  # schedules halve or decay the rate: a log axis shows each step the same size
        fig.update_yaxes(type="log", exponentformat="e")
    return fig


def confusion_heatmap(cm, normalize: bool = False) -> go.Figure:
    """The confusion matrix: a heatmap for the colours (its cells scale with the chart, so they never overlap on a
    phone) under a scatter of one point per cell carrying the counts (Streamlit reports clicks on scatter points:
    a tap on a cell selects that cell's images; the point nearest the tap wins, so small points keep it exact)."""
    cm = np.asarray(cm, dtype=float)
    z = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    n = len(CLASS_NAMES)
    xs = [CLASS_NAMES[j] for i in range(n) for j in range(n)]
    ys = [CLASS_NAMES[i] for i in range(n) for j in range(n)]
    values = [float(z[i, j]) for i in range(n) for j in range(n)]
    text = [f"{v:.2f}".lstrip("0") if normalize else f"{int(v)}" for v in values]
    top = max(values) or 1.0
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            x=list(CLASS_NAMES),
            y=list(CLASS_NAMES),
            z=z,
            zmin=0,
            zmax=top,
            colorscale="Blues",
            xgap=1,
            ygap=1,
            hoverinfo="skip",
            showscale=False,  # every cell prints its count; a colour bar took a fifth of a phone's width
        )
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers+text",
            text=text,
            textfont=dict(color=["white" if v > 0.55 * top else "#1f2937" for v in values], size=10),
            marker=dict(symbol="square-open", size=16, color="#d62728", opacity=0, line=dict(width=2)),
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<br>tap to show these images<extra></extra>",
            selected=dict(marker=dict(opacity=1.0)),
            unselected=dict(marker=dict(opacity=0.0)),
            showlegend=False,
        )
    )
    axis = dict(
        type="category",
        categoryorder="array",
        categoryarray=list(CLASS_NAMES),
        automargin=True,
        tickfont=dict(size=11),
        fixedrange=True,  # no zoom or pan: a drag scrolls the page on a phone, a tap selects a cell
    )
    fig.update_layout(
        xaxis=dict(title="predicted", tickangle=-50, **axis),
        yaxis=dict(title="true", autorange="reversed", **axis),
        margin=dict(l=10, r=10, t=30, b=10),
        height=520,
        clickmode="event+select",
        dragmode=False,
        hovermode="closest",
        plot_bgcolor="white",
    )
    return fig


def per_class_bars(per_class: list[dict]) -> go.Figure:
    fig = go.Figure()
    for k in ("precision", "recall", "f1"):
        fig.add_trace(go.Bar(x=[r["class"] for r in per_class], y=[r[k] for r in per_class], name=k))
    fig.update_layout(barmode="group", yaxis_range=[0, 1], margin=dict(l=10, r=10, t=30, b=10))
    return fig


def reliability_diagram(calibration: dict) -> go.Figure:
    """Accuracy against confidence per bin, before and (when a temperature is fitted) after temperature scaling."""
    fig = go.Figure()
    curves = [("raw", calibration.get("bins") or [], "#d62728")]
    if calibration.get("bins_scaled"):
        curves.append((f"scaled (T = {calibration['temperature']:.2f})", calibration["bins_scaled"], MEASURED_COLOR))
    for name, bins, colour in curves:
        bins = [b for b in bins if b["count"]]
        fig.add_trace(
            go.Scatter(
                x=[b["confidence"] for b in bins],
                y=[b["accuracy"] for b in bins],
                mode="lines+markers",
                name=name,
                line=dict(color=colour),
                marker=dict(size=[4 + 10 * (b["count"] / max(c["count"] for c in bins)) ** 0.5 for b in bins]),
                customdata=[b["count"] for b in bins],
                hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.3f}<br>%{customdata} images<extra>" + name + "</extra>",
            )
        )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line=dict(dash="dash", color="gray"))
    )
    title = f"ECE {calibration['ece']:.4f}"
    if calibration.get("ece_scaled") is not None:
        title += f" raw → {calibration['ece_scaled']:.4f} scaled"
    fig.update_layout(
        title=title,
        xaxis_title="confidence (mean of the bin)",
        yaxis_title="accuracy",
        xaxis_range=[0, 1.02],
        yaxis_range=[0, 1.02],
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0),
    )
    return fig


def per_class_delta(acc_a, acc_b, name_a: str, name_b: str) -> go.Figure:
    delta = 100 * (np.asarray(acc_b) - np.asarray(acc_a))
    fig = go.Figure(
        go.Bar(
            x=list(CLASS_NAMES),
            y=delta,
            marker_color=["#2ca02c" if d >= 0 else "#d62728" for d in delta],
            text=[f"{d:+.1f}" for d in delta],
            textposition="outside",
        )
    )
    fig.update_layout(yaxis_title=f"accuracy change, {name_b} - {name_a} (points)", margin=dict(l=10, r=10, t=30, b=10))
    return fig


def agreement_heatmap(keys, mat) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=mat,
            x=keys,
            y=keys,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            text=[[f"{v:.2f}" for v in row] for row in mat],
            texttemplate="%{text}",
        )
    )
    fig.update_layout(yaxis_autorange="reversed", margin=dict(l=10, r=10, t=30, b=10), height=480)
    return fig


def probability_bars(probs) -> go.Figure:
    fig = go.Figure(go.Bar(x=np.asarray(probs), y=list(CLASS_NAMES), orientation="h"))
    fig.update_layout(xaxis_range=[0, 1], height=260, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def robustness_chart(rows: dict[str, dict]) -> go.Figure:
    """Accuracy per input condition, one bar group per condition, one colour per stage."""
    fig = go.Figure()
    for key, rb in rows.items():
        names = list(rb["accuracy"])
        fig.add_trace(
            go.Bar(
                x=names,
                y=[100 * rb["accuracy"][n] for n in names],
                name=key,
                hovertemplate=f"{key}<br>%{{x}}: %{{y:.1f}}%<extra></extra>",
            )
        )
    fig.update_layout(  # the legend below the chart, where it covers no bar on a narrow (phone) screen
        barmode="group",
        yaxis_title="test accuracy (%)",
        xaxis=dict(automargin=True, tickangle=-40),
        yaxis=dict(automargin=True),
        margin=dict(l=10, r=10, t=10, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.55, x=0),
        height=560,
    )
    return fig


def calibration_chart(results) -> go.Figure:
    """ECE and mean confidence on right and wrong answers, per stage."""
    pts = [r for r in results if r.metrics]
    keys = [r.stage.key for r in pts]
    cal = [r.metrics["calibration"] for r in pts]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=keys, y=[c["mean_confidence_correct"] for c in cal], name="mean confidence, right answers"))
    fig.add_trace(go.Bar(x=keys, y=[c["mean_confidence_wrong"] for c in cal], name="mean confidence, wrong answers"))
    fig.add_trace(go.Scatter(x=keys, y=[c["ece"] for c in cal], name="ECE", mode="lines+markers", yaxis="y2"))
    fig.add_trace(
        go.Scatter(
            x=keys,
            y=[c.get("ece_scaled") for c in cal],
            name="ECE after temperature scaling",
            mode="lines+markers",
            yaxis="y2",
            line=dict(dash="dot"),
        )
    )
    fig.update_layout(
        barmode="group",
        yaxis=dict(title="confidence", range=[0, 1], automargin=True),
        yaxis2=dict(title="ECE", overlaying="y", side="right", rangemode="tozero", automargin=True),
        xaxis=dict(automargin=True, tickangle=-40),
        margin=dict(l=10, r=10, t=10, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.45, x=0),
        height=520,
    )
    return fig


def step_curve(trace: list) -> go.Figure:
    """The live per-step curve of a running job: the epoch's running mean loss and accuracy against epochs done
    (train.Progress writes ``trace`` into progress.json as [epochs, loss, accuracy] rows)."""
    rows = [r for r in trace or [] if isinstance(r, list | tuple) and len(r) == 3]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[r[0] for r in rows], y=[r[1] for r in rows], name="loss", mode="lines"))
    fig.add_trace(go.Scatter(x=[r[0] for r in rows], y=[r[2] for r in rows], name="accuracy", mode="lines", yaxis="y2"))
    fig.update_layout(
        xaxis_title="epochs",
        yaxis=dict(title="loss", automargin=True),
        yaxis2=dict(title="accuracy", overlaying="y", side="right", range=[0, 1], automargin=True),
        margin=dict(l=10, r=10, t=10, b=10),
        height=220,
        legend=dict(orientation="h", yanchor="top", y=-0.3, x=0),
    )
    return fig


def runs_curves(histories: dict[str, list[dict]], metric: str = "accuracy") -> go.Figure:
    """Several runs' curves overlaid: validation ``metric`` per epoch (train ``metric`` for recipes that keep no
    validation split), one line per run."""
    fig = go.Figure()
    for label, rows in histories.items():
        key = f"val_{metric}" if any(f"val_{metric}" in r for r in rows) else metric
        fig.add_trace(
            go.Scatter(
                x=[r.get("epoch") for r in rows],
                y=[r.get(key) for r in rows],
                name=f"{label} ({'validation' if key.startswith('val_') else 'train'})",
                mode="lines+markers",
            )
        )
    fig.update_layout(
        xaxis_title="epoch", yaxis_title=metric, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.25)
    )
    return fig
