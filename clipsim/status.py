"""What a workspace holds and how fresh it is, as plain JSON-able data (`python -m clipsim status`, the Overview page)."""
from __future__ import annotations

from clipsim.jobs.scheduler import list_jobs
from clipsim.maps.store import list_maps, load_map
from clipsim.prune.manifest import list_manifests
from clipsim.runs.results import results_frame
from clipsim.search.result import interrupted_searches, search_status


def workspace_status(ws) -> dict:
    """Datasets (with their embedding state) and artifacts with their freshness: searches (and interrupted search
    passes), pruning manifests, jobs (counts by state and the active ones), zero-shot result rows per run, maps
    and settings.

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
        "searches_interrupted": interrupted_searches(ws),
        "manifests": list_manifests(ws)[["name", "rule", "kept", "removed", "stale", "created"]]
        .to_dict(orient="records"),
        "jobs": {"counts": states, "active": [{"id": j.id, "kind": j.kind, "state": j.state}
                                              for j in jobs if j.is_active]},
        "results": {str(run): int(n) for run, n in results.groupby("run").size().items()} if len(results) else {},
        "maps": [{"name": n, "stale": bool(load_map(ws, n).stale_reasons())} for n in list_maps(ws)],
        "settings": ws.settings,
    }


STEPS = [  # (step, what it needs done, the pages to open, the command line)
    ("Register and embed the datasets", "datasets", [],
     "python -m clipsim demo --workspace {root}   # or: register --role train|test ..., then embed"),
    ("Search: exact nearest neighbours of every test image", "searches", ["Neighbours", "Similarity"],
     "python -m clipsim search --workspace {root} --reference curated"),
    ("Prune the web set with a rule and save a manifest", "manifests", ["Prune"],
     "python -m clipsim prune --workspace {root} --rule similarity-gap"),
    ("Retrain CLIP on the pruned set and evaluate it zero-shot", "results", ["Runs"],
     "python -m clipsim train --workspace {root} --manifest NAME --wait"),
    ("Compare accuracy: pruned vs random control vs full", "results", ["Results"], ""),
]


def study_steps(status: dict) -> list[dict]:
    """The study's steps in order, each with whether it is done, so a newcomer sees where to start.

    Args:
        status: workspace_status(ws).

    Returns:
        One dict per step: step, done (bool), count (what exists), pages (page titles to open), command, next
        (True for the first step not done).
    """
    counts = {"datasets": sum(1 for d in status["datasets"] if d["count"]), "searches": len(status["searches"]),
              "manifests": len(status["manifests"]), "results": len(status["results"])}
    out, first = [], True
    for step, need, pages, command in STEPS:
        done = counts[need] > 0
        out.append({"step": step, "done": done, "count": counts[need], "pages": pages,
                    "command": command.format(root=status["workspace"]), "next": not done and first})
        first = first and done
    return out
