"""Reusable widgets that return plain values: a threshold (slider + exact number kept in sync, in the URL),
a keep-count-or-fraction input, and read-only notices.
"""
from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from clipsim.names import read_only
from clipsim.ui.state import BIND


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


def rule_options(rule: str, n: int, tests: list[str], manifests: list[str], kept_count: Callable[[str], int]
                 ) -> tuple[list[str], dict]:
    """The Prune page's parameter widgets for one rule (all in the URL).

    Args:
        rule: one of clipsim.prune.RULES.
        n: web set size.
        tests: test sets to choose from (all chosen by default).
        manifests: saved manifest names ('random' can copy one's size).
        kept_count: manifest name -> how many web samples it keeps.

    Returns:
        (chosen test sets, [] for 'random'; keyword options for clipsim.ui.pruning.rule_params).
    """
    if rule == "random":
        like = st.selectbox("Same size as manifest", [None, *manifests], key="like", bind=BIND,
                            format_func=lambda name: "— or choose the size below —" if name is None else name)
        options: dict = {"like": like, "like_kept": kept_count(like)} if like else {"keep": keep_input(n, "keep")}
        options["seed"] = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="seed", bind=BIND))
        return [], options
    chosen = st.multiselect("Test sets", tests, default=tests, key="tests", bind=BIND) or tests
    if rule in ("near", "far"):
        return chosen, {"keep": keep_input(n, "keep")}
    cut = st.segmented_control("Cut by", ["value", "fraction"], default="value", required=True, key="cut", bind=BIND,
                               format_func={"value": "τ / δ value", "fraction": "share removed"}.get)
    if cut == "fraction":
        return chosen, {"remove_fraction": float(st.number_input(
            "Share of web samples removed", 0.0, 1.0, 0.1, step=0.01, format="%.4f", key="frac", bind=BIND))}
    if rule == "threshold":
        return chosen, {"tau": threshold_input("Threshold τ", "tau", 0.9, 0.0, 1.0)}
    return chosen, {"delta": threshold_input("Gap δ", "delta", 0.0, -1.0, 1.0)}


def can_write(what: str) -> bool:
    """False (and a notice saying so) when the app is served read-only."""
    if read_only():
        st.info(f"Read-only presentation mode (CLIPSIM_READ_ONLY=1): {what} is disabled here; use the CLI on a "
                "writable copy of the workspace.", icon=":material/lock:")
        return False
    return True
