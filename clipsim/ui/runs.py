"""Widgets of the Runs and Results pages: the pipeline form, live training progress, figure downloads."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from clipsim import jobs
from clipsim.plots import results as plots_results
from clipsim.runs.log import read_training_progress
from clipsim.runs.presets import get_preset, preset_names
from clipsim.ui.jobs import format_eta
from clipsim.ui.state import BIND

RULE_LABELS = {"similarity-gap": "Similarity gap (paper)", "threshold": "Threshold τ", "near": "Near pruning",
               "far": "Far pruning", "random": "Random subset"}
HAS_KALEIDO = importlib.util.find_spec("kaleido") is not None  # plotly's static image export
PNG_NOTE = ("PNG export needs kaleido (`pip install kaleido`), which is not installed; the HTML file is interactive "
            "and opens offline, and the camera icon in each plot's toolbar saves a PNG snapshot.")


def rule_form(ws, tests: list[str]) -> tuple[str, dict, list[str]]:
    """Rule, its parameters and the test sets it looks at; the similarity gap over all test sets by default.

    Returns:
        (rule, rule params, chosen test sets).
    """
    rule = st.selectbox("Pruning rule", list(RULE_LABELS), format_func=RULE_LABELS.get, key="runs_rule",
                        bind=BIND)
    params: dict = {}
    chosen = tests
    if rule != "random":
        chosen = st.multiselect("Test sets the rule looks at", tests, default=tests, key="runs_tests",
                                bind=BIND) or tests
    if rule == "similarity-gap":
        st.caption(f"Reference set (s_ref(t)): `{ws.settings.get('reference') or 'not set'}`")
        params["delta"] = float(st.number_input("Gap δ", -1.0, 1.0, 0.0, step=0.01, format="%.3f", key="runs_delta",
                                                 bind=BIND))
    elif rule == "threshold":
        params["tau"] = float(st.number_input("Threshold τ", 0.0, 1.0, 0.9, step=0.01, format="%.3f", key="runs_tau",
                                               bind=BIND))
    else:
        params["keep"] = float(st.slider("Share of web samples kept", 0.05, 1.0, 0.5, 0.05, key="runs_keep",
                                          bind=BIND))
        if rule == "random":
            params["seed"] = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="runs_seed", bind=BIND))
    return rule, params, chosen


def preset_form(ws) -> tuple[str, dict]:
    """Preset and an epochs override.

    Returns:
        (preset name, overrides dict; empty when the preset's epochs are kept).
    """
    left, right = st.columns(2)
    preset = left.selectbox("Training preset", preset_names(ws), key="runs_preset", bind=BIND)
    merged = get_preset(ws, preset)
    epochs = int(right.number_input("Epochs", 1, 1000, int(merged["epochs"]), key=f"runs_epochs_{preset}"))
    st.caption(f"`{merged['model']}` · batch {merged['batch_size']} x {merged['nproc']} process(es) · lr {merged['lr']}"
               f" · warmup {merged['warmup']} steps · {merged['precision']} on {merged['device']}")
    return preset, ({"epochs": epochs} if epochs != merged["epochs"] else {})


def _show_run(job) -> None:
    state = read_training_progress(job.run_dir)
    cols = st.columns(5)
    cols[0].metric("Epoch", f"{state['epoch'] or 0}/{state['epochs'] or '?'}")
    cols[1].metric("Step", f"{state['step'] or 0}/{state['steps_total'] or '?'}")
    cols[2].metric("Loss", f"{state['loss']:.3f}" if state["loss"] is not None else "–")
    cols[3].metric("Samples/s", f"{state['samples_per_s']:.0f}" if state["samples_per_s"] else "–")
    cols[4].metric("ETA", format_eta(state["eta_s"]) or "–")
    if state["curve"].empty:
        st.caption(f"{state['state']}: no training step logged yet ({state['log']})")
    else:
        st.plotly_chart(plots_results.loss_curve(state["curve"], f"Loss · {state['manifest']}"),
                        key=f"loss-{job.id}")


@st.fragment(run_every=3)
def training_progress(ws) -> None:
    """Running training jobs: epoch, step, loss, samples/s, ETA and the loss curve, refreshed every 3 s;
    otherwise the newest finished run's curve."""
    running = jobs.list_jobs(ws, kind="train", states=["running"])
    shown = running or jobs.list_jobs(ws, kind="train", states=["done"], limit=1)
    if not shown:
        st.caption("No training run yet.")
        return
    if not running:
        st.caption(f"No training running; the newest finished run is `{shown[0].id}`.")
    for job in shown:
        st.markdown(f"**{job.params.get('manifest', 'full')}**"
                    + (" (random control)" if job.params.get("control") else "") + f" · `{job.id}`")
        _show_run(job)


def figure_downloads(fig: go.Figure, table: pd.DataFrame, stem: str, key: str) -> None:
    """Download buttons for a figure (interactive HTML, built on click; PNG when kaleido is installed) and its
    numbers (CSV)."""
    html: Callable[[], str] = lambda: plots_results.figure_html(fig)
    row = st.container(horizontal=True)
    row.download_button("Plot (HTML)", html, file_name=f"{stem}.html", mime="text/html", key=f"{key}-html",
                        icon=":material/download:", on_click="ignore")
    row.download_button("Numbers (CSV)", table.to_csv(index=False), file_name=f"{stem}.csv", mime="text/csv",
                        key=f"{key}-csv", icon=":material/download:", on_click="ignore")
    if HAS_KALEIDO:
        row.download_button("Plot (PNG)", lambda: fig.to_image(format="png", scale=2), file_name=f"{stem}.png",
                            mime="image/png", key=f"{key}-png", icon=":material/download:", on_click="ignore")
