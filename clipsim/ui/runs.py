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

HAS_KALEIDO = importlib.util.find_spec("kaleido") is not None  # plotly's static image export
PNG_NOTE = ("PNG export needs kaleido (`pip install kaleido`), which is not installed; the HTML file is interactive "
            "and opens offline, and the camera icon in each plot's toolbar saves a PNG snapshot.")


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
    eta = jobs.read_progress(job).get("eta_s") if job.state == "running" else None  # the job row's ETA, not a second one
    cols = st.columns(5)
    cols[0].metric("Epoch", f"{state['epoch'] or 0}/{state['epochs'] or '?'}")
    cols[1].metric("Step", f"{state['step'] or 0}/{state['steps_total'] or '?'}")
    cols[2].metric("Loss", f"{state['loss']:.3f}" if state["loss"] is not None else "–")
    cols[3].metric("Samples/s", f"{state['samples_per_s']:.0f}" if state["samples_per_s"] else "–")
    cols[4].metric("ETA", format_eta(eta) or "–", help="the same estimate as the job's progress bar")
    if state["curve"].empty:
        st.caption(f"{state['state']}: no training step logged yet ({state['log']})")
    else:
        st.plotly_chart(plots_results.loss_curve(state["curve"], f"Loss · {state['manifest']}"),
                        key=f"loss-{job.id}")


def _show_runs(ws) -> bool:
    """Draw the running training jobs (or the newest finished one); True while one runs."""
    running = jobs.list_jobs(ws, kind="train", states=["running"])
    shown = running or jobs.list_jobs(ws, kind="train", states=["done"], limit=1)
    if not shown:
        st.caption("No training run yet.")
        return False
    if not running:
        st.caption(f"No training running; the newest finished run is `{shown[0].id}`.")
    for job in shown:
        st.markdown(f"**{jobs.describe_job(job)}** · `{job.id}`")
        _show_run(job)
    return bool(running)


def training_progress(ws) -> None:
    """Running training jobs: epoch, step, loss, samples/s, ETA and the loss curve, refreshed every 3 s while one
    runs; otherwise the newest finished run's curve, drawn once."""
    if jobs.list_jobs(ws, kind="train", states=["running"]):
        _live_training(ws)
    else:
        _show_runs(ws)


@st.fragment(run_every=3)
def _live_training(ws) -> None:
    if not _show_runs(ws):
        st.rerun(scope="app")  # the run ended: draw its final state once, stop polling


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
