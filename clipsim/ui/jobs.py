"""Job widgets: a job monitor that polls only while a job it shows is active and reruns the page when one ends (so
what the job made appears at once), a cheap watcher for jobs launched elsewhere, and a launch button; both respect
read-only mode."""
from __future__ import annotations

import json

import streamlit as st

from clipsim import jobs
from clipsim.errors import ClipsimError
from clipsim.jobs.status import format_eta
from clipsim.names import read_only

STATE_ICONS = {"queued": ":material/schedule:", "running": ":material/autorenew:", "done": ":material/check_circle:",
               "failed": ":material/error:", "cancelled": ":material/cancel:"}
POLL_S = 2  # while a shown job is queued or running: progress bars move
WATCH_S = 10  # otherwise: two `stat` calls notice a job launched from the CLI or another tab


def _cancel(ws, job_id: str) -> None:
    try:
        job = jobs.cancel(ws, job_id)
        st.toast(f"job {job_id}: {job.state}")
    except ClipsimError as err:
        st.toast(f"could not cancel {job_id}: {err}")


def _summary(ws, job: jobs.Job) -> str:
    if job.state == "queued":
        return jobs.waiting_for(ws, job)
    if job.state == "done":
        text = json.dumps(job.result, default=str) if job.result else "done"
        return text if len(text) < 200 else text[:197] + "..."
    lines = [line for line in (job.error or "").splitlines() if line.strip()]
    if job.state == "cancelled":
        return lines[0] if lines else "cancelled"
    last = lines[-1] if lines else "no log"
    return f"exit code {job.exit_code}: {last}" if job.exit_code is not None else last


def _job_row(ws, job: jobs.Job, key: str) -> None:
    with st.container(border=True):
        left, mid, right = st.columns([3, 5, 2], vertical_alignment="center")
        what = jobs.describe_job(job)
        lane = f" · {jobs.lane_of(ws, job)} lane" if job.is_active and job.backend == "local" else ""
        left.markdown(f"{STATE_ICONS.get(job.state, '')} **{job.kind}** · {job.state}{lane}  \n"
                      + (f"{what}  \n" if what else "") + f"`{job.id}`")
        with mid:
            if job.state == "running":
                progress = jobs.read_progress(job)
                text = progress.get("message") or ("running" if job.started else f"starting on {job.backend}")
                if progress.get("eta_s") is not None:
                    text += f" · ETA {format_eta(progress['eta_s'])}"
                st.progress(min(1.0, float(progress.get("fraction") or 0.0)), text=text)
            else:
                st.caption(_summary(ws, job))
        if job.is_active and not read_only():
            right.button("Cancel", key=f"{key}-cancel-{job.id}", icon=":material/close:", on_click=_cancel,
                         args=(ws, job.id))
        with st.expander("Log"):
            st.code(jobs.tail_log(job, lines=30) or "(no output yet)", language="text")


def _read(ws, kinds, limit: int) -> list[jobs.Job] | None:
    try:
        if not read_only() and jobs.list_jobs(ws, states=jobs.ACTIVE, limit=1):  # nothing active: nothing to do
            jobs.reconcile(ws)
        return jobs.list_jobs(ws, kind=kinds, limit=limit)
    except ClipsimError as err:
        st.warning(str(err))
        return None


def _draw(ws, shown: list[jobs.Job], key: str) -> None:
    if not shown:
        st.caption("No jobs yet.")
    for job in shown:
        _job_row(ws, job, key)


def job_monitor(ws, kinds: str | list[str] | None = None, limit: int = 20, key: str = "jobs") -> None:
    """Jobs of the workspace, newest first: what each works on, state, progress bar with ETA, cancel, log tail.

    While a shown job is queued or running the monitor refreshes every POLL_S seconds, and when one ends it reruns
    the whole page (a finished map, manifest or result appears at once). Otherwise it draws once and only watches
    the jobs database's stamp every WATCH_S seconds. While any job is queued or running, each refresh reconciles
    (starts queued jobs, notices dead ones) unless the app is read-only, where the cancel buttons are hidden too.

    Args:
        ws: the workspace.
        kinds: show only these kinds (None: all).
        limit: at most this many jobs.
        key: widget key prefix (when a page shows two monitors).
    """
    shown = _read(ws, kinds, limit)
    if shown is None:
        return
    st.session_state[f"{key}__states"] = {j.id: j.state for j in shown}
    if any(j.is_active for j in shown):
        _live(ws, kinds, limit, key)
    else:
        _draw(ws, shown, key)
        _watch(ws, key)


@st.fragment(run_every=POLL_S)
def _live(ws, kinds, limit: int, key: str) -> None:
    shown = _read(ws, kinds, limit)
    if shown is None:
        return
    before = st.session_state.get(f"{key}__states", {})
    now = {j.id: j.state for j in shown}
    st.session_state[f"{key}__states"] = now
    ended = [i for i, s in now.items() if before.get(i) in jobs.ACTIVE and s not in jobs.ACTIVE]
    if ended or not any(s in jobs.ACTIVE for s in now.values()):
        st.rerun(scope="app")
    _draw(ws, shown, key)


@st.fragment(run_every=WATCH_S)
def _watch(ws, key: str) -> None:
    stamp, name = jobs.change_stamp(ws), f"{key}__stamp"
    if st.session_state.get(name, stamp) != stamp:
        st.session_state[name] = stamp
        st.rerun(scope="app")
    st.session_state[name] = stamp


def launch_button(ws, label: str, kind: str, params: dict, key: str, backend: str | None = None,
                  depends_on: str | None = None, resources: dict | None = None, help_text: str | None = None):
    """A button that launches a job; an identical queued or running job is reused (double clicks launch once).

    Returns:
        The launched (or reused) Job on the run after a click, else None. Disabled in read-only mode.
    """
    if read_only():
        st.button(label, key=key, disabled=True, help="read-only presentation mode")
        st.caption("Read-only presentation mode: launching jobs is disabled.")
        return None
    if not st.button(label, key=key, help=help_text, type="primary"):
        return None
    try:
        job = jobs.launch(ws, kind, params, backend=backend, depends_on=depends_on, resources=resources)
    except ClipsimError as err:
        st.error(str(err))
        return None
    st.toast(f"{kind} job `{job.id}` {job.state}")
    return job
