"""The rule form of the Prune and Runs pages (a `RuleSpec` from URL-bound widgets: the threshold as a slider beside
an exact number, the keep count or fraction), the Prune page's cached rule application and post-pruning
similarity, and saving a rule as the `prune` job with its progress on the page.

A threshold travels: the page's widget (here) -> `clipsim.prune.rules.apply_rule` -> the counts; the same spec is
what the job, and so `python -m clipsim prune`, saves.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from clipsim import jobs
from clipsim.errors import ClipsimError
from clipsim.names import read_only
from clipsim.prune.manifest import check_new_manifest
from clipsim.prune.rules import Pruning, RuleSpec, apply_rule, default_name
from clipsim.prune.stats import RULES, PruneStats
from clipsim.ui import loaders
from clipsim.ui.jobs import job_monitor
from clipsim.ui.state import BIND
from clipsim.workspace import Workspace

RULE_LABELS = {"threshold": "Threshold", "similarity-gap": "Similarity gap", "near": "Near", "far": "Far",
               "random": "Random"}
RULE_KIND = {"threshold": "m", "similarity-gap": "g", "near": "m", "far": "m"}  # the statistic a rule cuts
RULE_HELP = {
    "threshold": "Remove web sample x if max_t cos(x, t) > τ.",
    "similarity-gap": "Remove x if some test image t has cos(x, t) > s_ref(t) + δ: afterwards no test image is "
                      "closer to the web set than to the reference (the paper's core experiment, δ = 0).",
    "near": "Keep the N web samples least similar to the test sets (max_t cos(x, t) lowest); remove the rest.",
    "far": "Keep the N web samples most similar to the test sets; remove the rest.",
    "random": "Keep a seeded uniform random subset of N web samples (the control for near/far pruning).",
}


def _copy(src: str, dst: str):
    def _sync() -> None:
        st.session_state[dst] = st.session_state[src]

    return _sync


def threshold_input(label: str, key: str, default: float, lo: float = -1.0, hi: float = 1.0, step: float = 0.001,
                    help_text: str | None = None) -> float:
    """A threshold as a slider beside an exact number field; both stay in sync and the URL holds `key`.

    Args:
        label: label of the number field (the slider carries the same label, hidden).
        key: widget key and query parameter name of the number field.
        default: value when neither the URL nor the session has one.
        lo, hi: allowed range.
        step: slider step (the number field accepts any value in range, shown to 4 decimals).
        help_text: tooltip.

    Returns:
        The threshold, clamped to [lo, hi].
    """
    slider_key = f"{key}__slider"
    if key not in st.session_state:
        st.session_state[key] = float(min(max(default, lo), hi))
    slide, exact = st.columns([4, 1], vertical_alignment="bottom")
    with exact:
        # value=None: the session value (set above, or by the slider) is the only source, so no state conflict
        value = st.number_input(label, lo, hi, None, step=step, format="%.4f", key=key, bind=BIND, help=help_text)
    value = float(default if value is None else min(max(value, lo), hi))
    st.session_state[slider_key] = value
    with slide:
        st.slider(label, lo, hi, key=slider_key, step=step, format="%.3f", on_change=_copy(slider_key, key),
                  label_visibility="hidden")
    return value


def keep_input(n: int, key: str, default_fraction: float = 0.5) -> int | float:
    """How many web samples to keep: a fraction in (0, 1] (float) or a count in [0, n] (int).

    Args:
        n: web set size.
        key: prefix of the widget keys / query parameters (`<key>_as`, `<key>`, `<key>_n`).
        default_fraction: initial fraction.

    Returns:
        A float fraction or an int count, as the rules take them.
    """
    mode_col, value_col = st.columns([1, 2], vertical_alignment="bottom")
    mode = mode_col.segmented_control("Keep", ["fraction", "count"], default="fraction", required=True,
                                      key=f"{key}_as", bind=BIND) or "fraction"
    if mode == "fraction":
        return float(value_col.number_input("Fraction of web samples kept", 0.001, 1.0, default_fraction, step=0.05,
                                            format="%.3f", key=key, bind=BIND))
    return int(value_col.number_input("Web samples kept", 0, n, round(default_fraction * n), step=max(1, n // 100),
                                      key=f"{key}_n", bind=BIND))


def rule_input(prefix: str = "", default: str = "similarity-gap") -> str:
    """The rule as a segmented control (URL parameter `<prefix>rule`)."""
    return st.segmented_control("Rule", RULES, format_func=RULE_LABELS.get, default=default, required=True,
                                key=f"{prefix}rule", bind=BIND) or default


def rule_spec_input(rule: str, n: int, tests: list[str], manifests: list[str], web: str,
                    prefix: str = "") -> RuleSpec:
    """The parameter widgets of one rule (all in the URL, keys `<prefix>tau`, ...) as the RuleSpec they describe.

    Args:
        rule: one of clipsim.prune.RULES.
        n: web set size.
        tests: test sets to choose from (all chosen by default; then spec.tests is None).
        manifests: saved manifest names ('random' can copy one's size).
        web: the web set the rule prunes.
        prefix: widget key prefix (the Runs page uses 'runs_').
    """
    if rule == "random":
        like = st.selectbox("Same size as manifest", [None, *manifests], key=f"{prefix}like", bind=BIND,
                            format_func=lambda name: "— or choose the size below —" if name is None else name)
        keep = None if like else keep_input(n, f"{prefix}keep")
        seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, key=f"{prefix}seed", bind=BIND))
        return RuleSpec("random", keep=keep, like=like, seed=seed, web=web)
    picked = st.multiselect("Test sets", tests, default=tests, key=f"{prefix}tests", bind=BIND) or tests
    chosen = None if set(picked) == set(tests) else tuple(t for t in tests if t in picked)
    if rule in ("near", "far"):
        return RuleSpec(rule, keep=keep_input(n, f"{prefix}keep"), tests=chosen, web=web)
    cut = st.segmented_control("Cut by", ["value", "fraction"], default="value", required=True, key=f"{prefix}cut",
                               bind=BIND, format_func={"value": "τ / δ value", "fraction": "share removed"}.get)
    if cut == "fraction":
        share = st.number_input("Share of web samples removed", 0.0, 1.0, 0.1, step=0.01, format="%.4f",
                                key=f"{prefix}frac", bind=BIND)
        return RuleSpec(rule, remove_fraction=float(share), tests=chosen, web=web)
    if rule == "threshold":
        return RuleSpec(rule, tau=threshold_input("Threshold τ", f"{prefix}tau", 0.9, 0.0, 1.0), tests=chosen, web=web)
    return RuleSpec(rule, delta=threshold_input("Gap δ", f"{prefix}delta", 0.0, -1.0, 1.0), tests=chosen, web=web)


@st.cache_resource(show_spinner=False, max_entries=64)
def _apply(key: tuple, spec: RuleSpec, _stats: PruneStats) -> Pruning:
    return apply_rule(_stats, spec)


def rule_key(ws: Workspace, stats_key: tuple, spec: RuleSpec) -> tuple:
    """What a rule's result depends on: the statistics (loaders.keyed_prune_stats) and a `like` manifest's file."""
    like = () if spec.like is None else loaders.file_stamp(ws.path("manifests", spec.like, "summary.json"))
    return stats_key + (like,)


def apply(key: tuple, stats: PruneStats, spec: RuleSpec) -> Pruning:
    """The rule applied to the page's statistics (clipsim.prune.rules.apply_rule), cached per rule_key and spec.

    Raises:
        ValueError, WorkspaceError: an out-of-range parameter, or a `like` manifest that is gone.
    """
    return _apply(key, spec, stats)


@st.cache_data(show_spinner=False, max_entries=32)
def _post(key: tuple, spec: RuleSpec, test: str, _ws: Workspace, _pruning: Pruning) -> pd.DataFrame:
    from clipsim.prune.post import post_prune_nn_similarity

    stats = _pruning.stats
    removed = _pruning if stats.base_rows is None else stats.full_removed(_pruning.removed)  # base rows -> web rows
    return post_prune_nn_similarity(_ws, test, stats.web, removed, _pruning.rule, _pruning.params,
                                    stats.tests if _pruning.rule != "random" else None, stats.reference)


def post_prune(ws: Workspace, key: tuple, spec: RuleSpec, pruning: Pruning, test: str) -> pd.DataFrame:
    """s_web(t) before/after pruning for one test set from the stored top-k (see post_prune_nn_similarity), cached
    per rule_key, spec and test set."""
    return _post(key, spec, test, ws, pruning)


def post_prune_chart(ws: Workspace, key: tuple, spec: RuleSpec, pruning: Pruning, test: str) -> None:
    """The histogram of s_web(t) before/after pruning for one test set (post_prune) with its medians."""
    from clipsim import plots

    stats, ref = pruning.stats, ws.reference
    after = post_prune(ws, key, spec, pruning, test)
    nn = loaders.test_neighbours(ws, test)
    fig = plots.post_prune_histogram(after["s_after"].to_numpy(), after["exact"].to_numpy(),
                                     nn.nn(ref) if ref in nn.trains else None, after["s_before"].to_numpy(), stats.web,
                                     ref or "reference", title=f"{test}: s_{stats.web}(t) after pruning")
    st.plotly_chart(fig, width="stretch", key="post_prune_hist")
    bounds = int((~after["exact"]).sum())
    st.caption(f"Median s_{stats.web}(t): {after['s_before'].median():.4f} before → {after['s_after'].median():.4f} "
               "after" + (f" (reference s_{ref}(t): {np.median(nn.nn(ref)):.4f})" if ref in nn.trains else "")
               + (f". {bounds} test images lost all stored neighbours: their value is an upper bound (hatched)."
                  if bounds else ". Every value is exact."))


def save_form(ws: Workspace, spec: RuleSpec) -> None:
    """Name the manifest and save it as the `prune` job (the exact post-pruning scan can take a full pass over the
    web set, so it never runs in the page); the job's progress shows below and the page reruns when it ends."""
    with st.form("save_manifest", border=True):
        # no key: the suggested name follows the rule and its parameters until the user types one
        name = st.text_input("Manifest name", default_name(spec))
        overwrite = st.checkbox("Overwrite a manifest of that name", key="overwrite")
        submitted = st.form_submit_button("Save manifest", type="primary", icon=":material/save:")
    if submitted:
        try:
            check_new_manifest(ws, name, overwrite)
            job = jobs.launch(ws, "prune", {**spec.to_params(), "name": name, "overwrite": overwrite},
                              backend="local")
            st.toast(f"Saving manifest {name} as prune job {job.id}")
        except ClipsimError as err:
            st.error(str(err))
    job_monitor(ws, kinds="prune", limit=3, key="prune_jobs")


def count_text(value, bounds: tuple[int, int] | None) -> str:
    """'1,234', or '1,200 – 1,300' while a combined count is only bounded (see PruneStats.combined_count)."""
    if bounds is not None and pd.isna(value):
        return f"{bounds[0]:,} – {bounds[1]:,}"
    return f"{int(value):,}"


def combined_notice(ws: Workspace, stats: PruneStats, kind: str = "m") -> bool:
    """Whether the max over `stats.tests` of statistic `kind` is ready; if not, the `sort-stats` job that stores it is
    launched (once: an identical active job is reused, a failed one is shown with a retry button instead) and a
    "computing…" notice with its progress is shown; the page reruns when it ends.

    Returns:
        True when ready (nothing is shown then).
    """
    if kind == "g" and not stats.has_margins or stats.combined_ready(kind):
        return True
    params = {"web": stats.web, "tests": list(stats.tests), "reference": stats.reference}
    command = (f"python -m clipsim sort-stats --workspace {ws.root} --web {stats.web} --tests {','.join(stats.tests)}"
               + (f" --reference {stats.reference}" if stats.reference else ""))
    if read_only():
        st.info(f"The combined statistics of {', '.join(stats.tests)} are not stored yet, so combined counts are shown "
                f"as bounds and cuts on the combination are unavailable. Store them with `{command}`.",
                icon=":material/hourglass_empty:")
        return False
    last = next((j for j in jobs.list_jobs(ws, kind="sort-stats") if j.params == params), None)
    if last is None or last.state == "done":  # never computed, or made from searches that changed since
        try:
            last = jobs.launch(ws, "sort-stats", params, backend="local")
        except ClipsimError as err:
            st.error(f"could not start computing the combined statistics: {err}. Run `{command}`.")
            return False
    if last.state in ("failed", "cancelled"):
        st.error(f"Computing the combined statistics of {', '.join(stats.tests)} {last.state} (job `{last.id}`); see "
                 f"its log below, or run `{command}`.")
        if st.button("Retry", key="sort_stats_retry", icon=":material/refresh:"):
            jobs.launch(ws, "sort-stats", params, backend="local")
            st.rerun()
    else:
        st.info(f"Combined statistics of {', '.join(stats.tests)}: computing… (job `{last.id}`, once per combination "
                "of test sets). Counts per test set are exact already; combined counts show bounds until then.",
                icon=":material/hourglass_top:")
    job_monitor(ws, kinds="sort-stats", limit=1, key="sort_stats_jobs")
    return False
