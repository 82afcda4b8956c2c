"""Prune: choose a rule and its parameters, see what it removes per test set, save it as a named manifest."""
import numpy as np
import streamlit as st

from clipsim import plots, prune
from clipsim.errors import ClipsimError
from clipsim.prune import apply as pruning
from clipsim.ui import loaders, widgets
from clipsim.ui.common import leave_legacy_pages_mode
from clipsim.ui.state import BIND

leave_legacy_pages_mode()
st.title("Prune")
st.caption("Exact pruning rules over the stored per-sample statistics: every count below is exact and updates "
           "live. Save a rule as a manifest to train on the pruned web set.")
ws, tests, ref = loaders.explore_context()
webs = loaders.web_sets(ws, tests, ref)
if not webs:
    st.info("No web (non-reference) train set is searched against every test set yet. Search it:",
            icon=":material/info:")
    st.code(f"python -m clipsim search --workspace {ws.root} --train WEB" + (f" --reference {ref}" if ref else ""),
            language="bash")
    st.stop()

c = st.columns([3, 1])
rule = c[0].segmented_control("Rule", prune.RULES, format_func=pruning.RULE_LABELS.get, default="similarity-gap",
                              required=True, key="rule", bind=BIND) or "similarity-gap"
web = c[1].selectbox("Web set", webs, key="web", bind=BIND) if len(webs) > 1 else webs[0]
st.caption(pruning.RULE_HELP[rule])
margins = loaders.has_margins(ws, web, tests, ref)
if rule == "similarity-gap" and not margins:
    st.info(f"The similarity-gap rule needs s_ref(t) margins, which the searches against `{web}` did not store. "
            "Search the reference first, then the web set with it:", icon=":material/info:")
    st.code(f"python -m clipsim search --workspace {ws.root} --reference {ref or 'curated'} --force", language="bash")
    st.stop()
stats = loaders.prune_stats(ws, web, tests, ref if margins else None)
manifests = prune.list_manifests(ws)

chosen, options = widgets.rule_options(rule, stats.n, tests, list(manifests["name"]),
                                       lambda name: prune.load_manifest(ws, name).kept_count)

try:
    sel, params, removed = loaders.apply_rule(ws, stats, chosen, rule, **options)
except (ValueError, ClipsimError) as err:
    st.error(f"{err}")
    st.stop()
table = pruning.counts(sel, rule, params)
total = table.iloc[-1]
m = st.columns(3)
m[0].metric("Web samples removed", f"{int(total['removed']):,}", help="combined over the chosen test sets")
m[1].metric("Web samples kept", f"{int(total['kept']):,}", help=f"of {stats.n:,} {web} samples")
m[2].metric("Share of web removed", f"{total['share_of_web']:.2%}")
if "remove_fraction" in params:
    st.caption(f"Cut at {'τ' if rule == 'threshold' else 'δ'} = {params.get('tau', params.get('delta')):.6f}")
st.dataframe(table, hide_index=True, width="stretch", key="prune_counts", column_config={
    "share_of_web": st.column_config.ProgressColumn("share of web", format="percent", min_value=0.0, max_value=1.0)})

st.subheader("After pruning")
show = st.selectbox("Test set", tests, index=tests.index(chosen[0]) if chosen else 0, key="show", bind=BIND)
after = loaders.post_prune(ws, stats, sel, show, rule, params, removed)
nn = loaders.test_neighbours(ws, show)
fig = plots.post_prune_histogram(after["s_after"].to_numpy(), after["exact"].to_numpy(),
                                 nn.nn(ref) if ref in nn.trains else None, after["s_before"].to_numpy(), web,
                                 ref or "reference", title=f"{show}: s_{web}(t) after pruning")
st.plotly_chart(fig, width="stretch", key="post_prune_hist")
bounds = int((~after["exact"]).sum())
st.caption(f"Median s_{web}(t): {after['s_before'].median():.4f} before → {after['s_after'].median():.4f} after"
           + (f" (reference s_{ref}(t): {np.median(nn.nn(ref)):.4f})" if ref in nn.trains else "")
           + (f". {bounds} test images lost all stored neighbours: their value is an upper bound (hatched)."
              if bounds else ". Every value is exact."))

st.subheader("Save")
if widgets.can_write("saving manifests"):
    with st.form("save_manifest", border=True):
        # no key: the suggested name follows the rule and its parameters until the user types one
        name = st.text_input("Manifest name", pruning.default_name(rule, params, chosen, tests))
        overwrite = st.checkbox("Overwrite a manifest of that name", key="overwrite")
        submitted = st.form_submit_button("Save manifest", type="primary", icon=":material/save:")
    if submitted:
        bar = st.progress(0.0, text="Saving…")
        try:
            saved = prune.save_manifest(ws, name, rule, params, sel, removed, overwrite=overwrite,
                                        progress=lambda done, n, text: bar.progress(done / max(n, 1), text=text))
            st.success(f"Saved manifest **{saved.name}** ({saved.removed_count:,} removed, {saved.kept_count:,} "
                       f"kept) at `{saved.folder}`.", icon=":material/check_circle:")
            manifests = prune.list_manifests(ws)
        except (ClipsimError, ValueError) as err:
            st.error(f"{err}")
        bar.empty()

st.subheader("Saved manifests")
if manifests.empty:
    st.info("No manifest yet: save one above, or from the command line:", icon=":material/info:")
    st.code(f"python -m clipsim prune --workspace {ws.root} --rule similarity-gap --name gap", language="bash")
else:
    shown = manifests.assign(status=manifests["stale"].map({True: "⚠ stale", False: "fresh"})).drop(columns="stale")
    st.dataframe(shown, hide_index=True, width="stretch", key="manifests", column_config={
        "share": st.column_config.NumberColumn("share removed", format="percent")})
