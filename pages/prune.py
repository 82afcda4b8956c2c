"""Prune: choose a rule and its parameters, see what it removes per test set, save it as a named manifest (a job)."""
from dataclasses import replace

import streamlit as st

from clipsim import plots
from clipsim.errors import ClipsimError
from clipsim.search import result as searches
from clipsim.ui import loaders, pruning
from clipsim.ui.common import can_write
from clipsim.ui.nav import page_setup
from clipsim.ui.state import BIND

page_setup(__file__)
st.title("Prune")
st.caption("Exact pruning rules over the stored per-sample statistics: every count below is exact and updates "
           "live. Save a rule as a manifest to train on the pruned web set.")
ws, tests, ref = loaders.explore_context()
webs = loaders.searched_web_sets(ws, tests, ref)

c = st.columns([3, 1])
with c[0]:
    rule = pruning.rule_input()
web = c[1].selectbox("Web set", webs, key="web", bind=BIND) if len(webs) > 1 else webs[0]
st.caption(pruning.RULE_HELP[rule])
margins = searches.has_margins(ws, web, tests, ref)
if rule == "similarity-gap" and not margins:
    st.info(f"The similarity-gap rule needs s_ref(t) margins, which the searches against `{web}` did not store. "
            "Search the reference first, then the web set with it:", icon=":material/info:")
    st.code(f"python -m clipsim search --workspace {ws.root} --reference {ref or 'curated'} --force", language="bash")
    st.stop()
manifests = loaders.manifests(ws)
bases = [n for n, w in zip(manifests["name"], manifests["web"]) if w == web]
base = st.selectbox("Start from", [None, *bases], key="base", bind=BIND,
                    format_func=lambda b: f"the whole {web} set" if b is None else f"manifest {b} (its kept samples)",
                    help="Prune a deduplicated set, as the study did: pick the dedup manifest here.")
try:
    stats, stats_key = loaders.keyed_prune_stats(ws, web, tests, ref if margins else None, base)
except ClipsimError as err:
    st.error(str(err))
    st.stop()

spec = replace(pruning.rule_spec_input(rule, stats.n, tests, list(manifests["name"]), web), base=base)
key = pruning.rule_key(ws, stats_key, spec)
try:
    applied = pruning.apply(key, stats, spec)
except (ValueError, ClipsimError) as err:
    st.error(f"{err}")
    st.stop()
table = applied.counts()
total, bounds = table.iloc[-1], table.attrs.get("bounds")
kept_bounds = (stats.n - bounds[1], stats.n - bounds[0]) if bounds else None
m = st.columns(3)
m[0].metric("Web samples removed", pruning.count_text(total["removed"], bounds), help="combined over the chosen test sets")
m[1].metric("Web samples kept", pruning.count_text(total["kept"], kept_bounds), help=f"of {stats.n:,} {web} samples" +
            (f" that manifest {base} keeps" if base else ""))
m[2].metric("Share of web removed", f"{bounds[0] / stats.n:.2%} – {bounds[1] / stats.n:.2%}" if bounds else
            f"{total['share_of_web']:.2%}")
kind = pruning.RULE_KIND.get(rule)
ready = kind is None or pruning.combined_notice(ws, applied.stats, kind)
if "remove_fraction" in applied.params:
    st.caption(f"Cut at {'τ' if rule == 'threshold' else 'δ'} = "
               f"{applied.params.get('tau', applied.params.get('delta')):.6f}")
st.dataframe(table, hide_index=True, width="stretch", key="prune_counts", column_config={
    "share_of_web": st.column_config.ProgressColumn("share of web", format="percent", min_value=0.0, max_value=1.0)})
if rule in ("threshold", "similarity-gap"):
    cut = applied.params["tau" if rule == "threshold" else "delta"]
    st.plotly_chart(plots.removal_curve(applied.stats.removal_curves(kind), stats.n, cut,
                                        "τ" if rule == "threshold" else "δ", plots.workspace_colours(ws)),
                    width="stretch", key="removal_curve")

st.subheader("After pruning")
chosen = list(spec.tests or tests)
show = st.selectbox("Test set", tests, index=tests.index(chosen[0]) if rule != "random" else 0, key="show", bind=BIND)
if ready or rule in ("threshold", "similarity-gap", "random"):  # near/far cut on the combination's sorted order
    pruning.post_prune_chart(ws, key, spec, applied, show)
else:
    st.info("The post-pruning similarity appears once the combined statistics are stored (see above).",
            icon=":material/hourglass_top:")

st.subheader("Save")
if can_write("saving manifests"):
    pruning.save_form(ws, spec)

st.subheader("Saved manifests")
if manifests.empty:
    st.info("No manifest yet: save one above, or from the command line:", icon=":material/info:")
    st.code(f"python -m clipsim prune --workspace {ws.root} --rule similarity-gap", language="bash")
else:
    shown = manifests.assign(status=manifests["stale"].map({True: "⚠ stale", False: "fresh"})).drop(columns="stale")
    st.dataframe(shown, hide_index=True, width="stretch", key="manifests", column_config={
        "share": st.column_config.NumberColumn("share removed", format="percent")})
