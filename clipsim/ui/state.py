"""View state in the URL: widgets bind to query parameters (`bind="query-params"`, key = parameter name), and
the few values that are not widgets (the opened image) are read and written here, validated, with defaults.

A shared link therefore reproduces the view; a parameter that does not parse or is not allowed falls back to
its default and is dropped from the URL, never a traceback.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import urlencode

import streamlit as st

T = TypeVar("T")
BIND = "query-params"


def url_param(name: str, parse: Callable[[str], T], default: T, allowed: Callable[[T], bool] | None = None) -> T:
    """A non-widget view value from the URL.

    Args:
        name: query parameter name.
        parse: str -> value; may raise ValueError/TypeError for bad input.
        default: value when the parameter is absent or invalid.
        allowed: optional check of the parsed value.

    Returns:
        The parsed value, or `default` (an invalid parameter is removed from the URL).
    """
    raw = st.query_params.get(name)
    if raw is None:
        return default
    try:
        value = parse(raw)
    except (ValueError, TypeError):
        value = None
    if value is None or (allowed is not None and not allowed(value)):
        del st.query_params[name]
        return default
    return value


def set_url_param(name: str, value: str | None) -> None:
    """Set (or with None remove) a non-widget query parameter."""
    if value is None:
        if name in st.query_params:
            del st.query_params[name]
    else:
        st.query_params[name] = value


def href(**overrides: str | Sequence[str] | None) -> str:
    """A relative link to this page with the current query parameters, some replaced (None removes one)."""
    params = {k: st.query_params.get_all(k) for k in st.query_params}
    for key, value in overrides.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = [value] if isinstance(value, str) else list(value)
    return "?" + urlencode(params, doseq=True)


def choice(options: Sequence[T], value: T, default: T) -> T:
    """`value` if it is one of `options`, else `default` (for state that outlived its options)."""
    return value if value in options else default


def reset(*keys: str) -> Callable[[], None]:
    """An on_change callback that drops widget state (e.g. go back to page 1 when a filter changes)."""

    def _reset() -> None:
        for key in keys:
            st.session_state.pop(key, None)

    return _reset


def follow(key: str, context: tuple, default) -> None:
    """Put widget `key` back to `default` when what its value refers to (`context`, e.g. the set whose s(t) a range
    filters) changed since the last run; call it before the widget. A link's value is kept on the first run.

    (Dropping the state of a URL-bound widget is not enough: the URL would restore the old value.)
    """
    mark = f"{key}__context"
    if mark in st.session_state and st.session_state[mark] != context:
        st.session_state[key] = default
    st.session_state[mark] = context
