"""What a workspace holds and how fresh it is, as plain JSON-able data (`python -m clipsim status`, the Overview page)."""
from __future__ import annotations

from clipsim.jobs.scheduler import list_jobs
from clipsim.maps.store import list_maps, load_map
from clipsim.prune.manifest import list_manifests
from clipsim.runs.results import results_frame
from clipsim.search.result import search_status


def workspace_status(ws) -> dict:
    """Datasets and artifacts with their freshness: searches, pruning manifests, jobs (counts by state and the
    active ones), zero-shot result rows per run, maps and settings.

    Args:
        ws: the workspace.

    Returns:
        A dict of plain lists and dicts (JSON-serialisable with `default=str`).
    """

    jobs = list_jobs(ws)
    states: dict[str, int] = {}
    for job in jobs:
        states[job.state] = states.get(job.state, 0) + 1
    results = results_frame(ws)
    return {
        "workspace": str(ws.root.resolve()),
        "datasets": ws.datasets().to_dict(orient="records"),
        "searches": search_status(ws),
        "manifests": list_manifests(ws)[["name", "rule", "kept", "removed", "stale", "created"]]
        .to_dict(orient="records"),
        "jobs": {"counts": states, "active": [{"id": j.id, "kind": j.kind, "state": j.state}
                                              for j in jobs if j.is_active]},
        "results": {str(run): int(n) for run, n in results.groupby("run").size().items()} if len(results) else {},
        "maps": [{"name": n, "stale": bool(load_map(ws, n).stale_reasons())} for n in list_maps(ws)],
        "settings": ws.settings,
    }
