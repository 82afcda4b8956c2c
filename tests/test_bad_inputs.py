"""A corpus of bad inputs: names, CLI arguments of every command, registries and settings, job parameters, and every
writing command in read-only mode. Each case ends in the right result or a clean error: a non-zero exit (2 for bad
input), no traceback, a message naming the value or file, and the workspace unchanged and still usable.

The CLI runs in-process (`clipsim.cli.main`); a few cases run `python -m clipsim` to prove no traceback reaches a
terminal. `test_corpus_counts` prints the totals over the corpus (the issue's closing note quotes them).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from clipsim import jobs
from clipsim.cli import main
from clipsim.errors import ClipsimError
from clipsim.jobs import list_jobs
from clipsim.prune.rules import RuleSpec
from clipsim.runs.pipeline import queue_pipeline
from clipsim.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
LONG = "a" * 300
OUTCOMES: Counter = Counter()  # filled by every case; test_corpus_counts reports it


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and mtime; the job database is left out (reading the job list may
    create it empty): the cases compare the list of jobs instead."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("jobs.sqlite")}


@pytest.fixture(scope="module")
def ws(demo_ws, tmp_path_factory):
    """A private copy of the small demo workspace (mtimes kept, so every search stays fresh)."""
    root = tmp_path_factory.mktemp("bad") / "ws"
    shutil.copytree(demo_ws.root, root)
    return Workspace.open(root)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def check_clean_error(ws: Workspace, argv: list[str], needle: str, capsys, usable: bool = True) -> str:
    """Run a command that must fail cleanly (exit code 2, no traceback, `needle` in the message, nothing changed);
    returns its output. Records the outcome in OUTCOMES. `usable`: also check the workspace still opens."""
    before, jobs_before = tree(ws.root), [j.id for j in list_jobs(ws)]
    code, text = run_cli([argv[0], "--workspace", str(ws.root), *argv[1:]], capsys)
    OUTCOMES["cases"] += 1
    OUTCOMES["tracebacks"] += "Traceback" in text
    OUTCOMES["data lost"] += tree(ws.root) != before or [j.id for j in list_jobs(ws)] != jobs_before
    OUTCOMES["silently wrong"] += code == 0
    OUTCOMES["clear errors"] += code == 2 and re.search(needle, text) is not None and "Traceback" not in text
    assert "Traceback" not in text, text
    assert code == 2, (code, text)
    assert re.search(needle, text), (needle, text)
    assert tree(ws.root) == before and [j.id for j in list_jobs(ws)] == jobs_before
    if usable:
        assert list(Workspace.open(ws.root).datasets()["name"])[:2] == ["web", "curated"]
    return text


# ----- names ------------------------------------------------------------------------------------------------
NAME_CASES = {
    "dataset 300 chars": (["register", "--name", LONG, "--role", "test", "--kind", "folder", "--source", "."],
                          r"300 characters long; use at most 100"),
    "dataset ../x": (["register", "--name", "../x", "--role", "test", "--kind", "folder", "--source", "."], r"'\.\./x'"),
    "dataset trailing newline": (["register", "--name", "web2\n", "--role", "test", "--kind", "folder", "--source", "."],
                                 r"'web2\\n' is not allowed"),
    "dataset empty": (["register", "--name", "", "--role", "test", "--kind", "folder", "--source", "."],
                      r"name '' is not allowed"),
    "dataset unicode": (["register", "--name", "naïve", "--role", "test", "--kind", "folder", "--source", "."],
                        r"'naïve' is not allowed"),
    "dataset leading dash": (["register", "--name=-x", "--role", "test", "--kind", "folder", "--source", "."],
                             r"'-x' is not allowed"),
    "dataset leading dot": (["register", "--name", ".hidden", "--role", "test", "--kind", "folder", "--source", "."],
                            r"'\.hidden' is not allowed"),
    "dataset slash": (["register", "--name", "a/b", "--role", "test", "--kind", "folder", "--source", "."],
                      r"'a/b' is not allowed"),
    "manifest 300 chars": (["prune", "--rule", "near", "--keep-fraction", "0.5", "--name", LONG], r"300 characters"),
    "manifest ../x": (["prune", "--rule", "near", "--keep-fraction", "0.5", "--name", "../x"], r"manifest name '\.\./x'"),
    "map ../x": (["map", "--name", "../x"], r"map name '\.\./x'"),
    "map 300 chars": (["map", "--name", LONG], r"300 characters"),
    "train manifest ../x": (["train", "--manifest", "../x"], r"manifest name '\.\./x'"),
    "train manifest 300 chars": (["train", "--manifest", LONG], r"300 characters"),
    "train manifest missing": (["train", "--manifest", "nope"], r"manifest 'nope' does not exist"),
    "evaluate run ../nope": (["evaluate", "--run", "../nope-x"], r"run name '\.\./nope-x'"),
    "evaluate run missing": (["evaluate", "--run", "nope-run"], r"no run 'nope-run'"),
    "job prune name ../x": (["run-job", "--kind", "prune", "--params", '{"name": "../x", "rule": "near", "keep": 0.5}'],
                            r"manifest name '\.\./x'"),
    "job umap name newline": (["run-job", "--kind", "umap", "--params", '{"name": "m\\n"}'], r"map name 'm\\n'"),
    "job kind ../x": (["run-job", "--kind", "../x"], r"unknown job kind '\.\./x'"),
    "benchmark name ../x": (["register-benchmark", "--kind", "imagenet-val", "--root", ".", "--name", "../x"],
                            r"'\.\./x' is not allowed"),
}


@pytest.mark.parametrize("case", list(NAME_CASES))
def test_bad_names_are_refused_before_anything_is_written(ws, capsys, case):
    argv, needle = NAME_CASES[case]
    check_clean_error(ws, argv, needle, capsys)


# ----- CLI arguments ----------------------------------------------------------------------------------------
ARG_CASES = {
    "search --k 0": (["search", "--k", "0"], r"--k: value = 0 is out of range"),
    "search --k -5": (["search", "--k", "-5"], r"--k: value = -5 is out of range"),
    "search --k abc": (["search", "--k", "abc"], r"'abc' is not an integer"),
    "search --block-rows 0": (["search", "--block-rows", "0"], r"--block-rows: value = 0"),
    "search --precision fp16 on CPU": (["search", "--force", "--precision", "fp16"], r"'fp16' needs a CUDA GPU"),
    "search --device cuda without GPU": (["search", "--device", "cuda"], r"no CUDA GPU is visible"),
    "search --device banana": (["search", "--device", "banana"], r"'banana' is not a device"),
    "search --train nope": (["search", "--train", "nope"], r"no dataset 'nope'"),
    "search --tests val,nope": (["search", "--force", "--tests", "val,nope"], r"no dataset 'nope'"),
    "search --shards 5:2": (["search", "--train", "web", "--shards", "5:2"], r"5:2 is reversed"),
    "search --shards abc": (["search", "--train", "web", "--shards", "abc"], r"'abc' must look like LO:HI"),
    "embed --force --batch-size 0": (["embed", "--force", "--batch-size", "0"], r"--batch-size: value = 0"),
    "embed --force --workers -1": (["embed", "--force", "--workers", "-1"], r"--workers: value = -1"),
    "embed --device banana": (["embed", "--force", "--device", "banana"], r"'banana' is not a device"),
    "embed --datasets nope": (["embed", "--force", "--datasets", "nope"], r"no dataset 'nope'"),
    "metadata --ids 1,abc": (["metadata", "--dataset", "web", "--ids", "1,abc"], r"'abc' is not an integer"),
    "metadata --ids -1": (["metadata", "--dataset", "web", "--ids=-1"], r"-1 is out of range"),
    "metadata --limit 0": (["metadata", "--dataset", "web", "--search", "a", "--limit", "0"], r"--limit: value = 0"),
    "prune near with --tau": (["prune", "--rule", "near", "--tau", "0.5", "--name", "x"],
                              r"tau does not apply to rule 'near'; it takes keep"),
    "prune threshold without tau": (["prune", "--rule", "threshold", "--name", "x"], r"needs tau \(CLI --tau\)"),
    "prune keep fraction 1.5": (["prune", "--rule", "near", "--keep-fraction", "1.5", "--name", "x"], r"1\.5"),
    "prune tau nan": (["prune", "--rule", "threshold", "--tau", "nan", "--name", "x"], r"NaN"),
    "prune --web nope": (["prune", "--rule", "near", "--keep", "5", "--name", "x", "--web", "nope"], r"'nope'"),
    "map --sample 0": (["map", "--sample", "0"], r"--sample: value = 0"),
    "map --n-neighbors 1": (["map", "--n-neighbors", "1"], r"--n-neighbors: value = 1"),
    "map --datasets nope": (["map", "--datasets", "nope"], r"no dataset 'nope'"),
    "report --thumb 0": (["report", "--thumb", "0"], r"--thumb: value = 0"),
    "train --preset nope": (["train", "--preset", "nope"], r"unknown training preset 'nope'"),
    "train --set epochs=abc": (["train", "--set", "epochs=abc"], r"epochs"),
    "train --set nope=1": (["train", "--set", "nope=1"], r"'nope'"),
    "train --set no equals": (["train", "--set", "epochs"], r"must look like FIELD=VALUE"),
    "evaluate --device banana": (["evaluate", "--run", "x", "--device", "banana"], r"'banana' is not a device"),
    "jobs show unknown id": (["jobs", "show", "--id", "nope"], r"no job 'nope'"),
    "jobs cancel without id": (["jobs", "cancel"], r"needs --id"),
    "jobs list --state banana": (["jobs", "list", "--state", "banana"], r"unknown state"),
    "jobs --grace -1": (["jobs", "cancel", "--id", "x", "--grace", "-1"], r"--grace: value = -1"),
    "run-job params not an object": (["run-job", "--kind", "sleep", "--params", "[1]"], r"must be a JSON object"),
    "run-job params not JSON": (["run-job", "--kind", "sleep", "--params", "{x"], r"not valid JSON"),
    "run-job sleep seconds x": (["run-job", "--kind", "sleep", "--params", '{"seconds": "x"}'], r"'x' is not a finite"),
    "run-job unknown param": (["run-job", "--kind", "sleep", "--params", '{"bogus": 1}'], r"unknown parameter\(s\) bogus"),
    "run-job search k 0": (["run-job", "--kind", "search", "--params", '{"k": 0}'], r"k \(neighbours"),
    "run-job search device banana": (["run-job", "--kind", "search", "--params", '{"device": "banana"}'], r"banana"),
    "run-job prune rule banana": (["run-job", "--kind", "prune", "--params", '{"name": "x", "rule": "banana"}'],
                                  r"unknown pruning rule 'banana'"),
    "run-job umap sample -1": (["run-job", "--kind", "umap", "--params", '{"sample": -1}'], r"-1 is out of range"),
    "run-job evaluate run empty": (["run-job", "--kind", "evaluate", "--params", '{"run": ""}'], r"must be a run id"),
    "run-job train control full": (["run-job", "--kind", "train", "--params", '{"control": "random"}'], r"not 'full'"),
    "run-job depends on unknown": (["run-job", "--kind", "sleep", "--depends-on", "nope"], r"no such job"),
    "unknown command": (["frobnicate"], r"invalid choice: 'frobnicate'"),
}


@pytest.mark.parametrize("case", list(ARG_CASES))
def test_bad_arguments_give_one_line_and_exit_code_2(ws, capsys, case):
    argv, needle = ARG_CASES[case]
    check_clean_error(ws, argv, needle, capsys)


def test_search_with_good_arguments_still_gives_the_stored_result(ws, capsys):
    before = tree(ws.root)
    code, text = run_cli(["search", "--workspace", str(ws.root), "--train", "web", "--tests", "val", "--k", "10"],
                         capsys)
    assert code == 0 and re.search(r"val vs web: median s_web\(t\) = 0\.\d{4}", text)
    assert tree(ws.root) == before  # fresh: nothing recomputed


# ----- registries and settings ------------------------------------------------------------------------------
def _registry(ws: Workspace) -> dict:
    return json.loads(ws.path("clipsim.json").read_text())


def _with(reg: dict, key: str, value) -> dict:
    return {**reg, key: value}


def _with_dataset(reg: dict, name: str, entry) -> dict:
    return {**reg, "datasets": {**reg["datasets"], name: entry}}


REGISTRY_CASES = {  # registry -> broken registry, and what the message must say
    "no datasets key": (lambda reg: {k: v for k, v in reg.items() if k != "datasets"}, r'has no "datasets" object'),
    "datasets is a list": (lambda reg: _with(reg, "datasets", []), r'has no "datasets" object'),
    "top level is a list": (lambda reg: [reg], r"must hold a JSON object, not list"),
    "settings is a list": (lambda reg: _with(reg, "settings", []), r'"settings" in .* must be a JSON object'),
    "dataset name 300 chars": (lambda reg: _with_dataset(reg, LONG, reg["datasets"]["val"]), r"300 characters"),
    "dataset name trailing newline": (lambda reg: _with_dataset(reg, "val\n", reg["datasets"]["val"]),
                                      r"'val\\n' is not allowed"),
    "dataset role banana": (lambda reg: _with_dataset(reg, "val", {**reg["datasets"]["val"], "role": "banana"}),
                            r"role 'banana'"),
    "dataset without source": (lambda reg: _with_dataset(reg, "val", {"role": "test", "kind": "folder"}),
                               r'no "source" path'),
    "dataset is a string": (lambda reg: _with_dataset(reg, "val", "x"), r"'val' .* must be a JSON object"),
}


@pytest.mark.parametrize("case", list(REGISTRY_CASES))
def test_malformed_registry_is_named_with_the_fix(ws, capsys, case):
    broken, needle = REGISTRY_CASES[case]
    path = ws.path("clipsim.json")
    original = path.read_bytes()
    try:
        path.write_text(json.dumps(broken(_registry(ws))))
        for argv in (["status"], ["search"], ["prune", "--rule", "near", "--keep", "5", "--name", "x"]):
            text = check_clean_error(ws, argv, needle, capsys, usable=False)
            assert "clipsim.json" in text
    finally:
        path.write_bytes(original)
    Workspace.open(ws.root).datasets()  # usable again once the file is fixed


@pytest.mark.parametrize("page", ["prune", "runs", "overview"])
def test_pages_show_a_bad_registry_as_an_error_not_a_traceback(ws, monkeypatch, page):
    """A 300-character dataset name in the registry (edited by hand): an st.error naming the file, the name and the
    fix; before, the Prune page showed an OSError traceback (File name too long)."""
    from streamlit.testing.v1 import AppTest

    path = ws.path("clipsim.json")
    original = path.read_bytes()
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(ws.root))
    try:
        path.write_text(json.dumps(_with_dataset(_registry(ws), LONG, _registry(ws)["datasets"]["web"])))
        at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=90).run()
    finally:
        path.write_bytes(original)
    OUTCOMES["cases"] += 1
    assert not at.exception, at.exception
    assert any("300 characters long" in e.value and "clipsim.json" in e.value for e in at.error), [e.value for e in at.error]
    OUTCOMES["clear errors"] += 1


def test_registry_that_is_not_json_is_named(ws, capsys):
    path = ws.path("clipsim.json")
    original = path.read_bytes()
    try:
        path.write_text('{"datasets": ')
        check_clean_error(ws, ["status"], r"clipsim\.json is not valid JSON", capsys, usable=False)
    finally:
        path.write_bytes(original)


SETTINGS_CASES = {
    "jobs.slots 0": ({"jobs": {"slots": 0}}, ["run-job", "--kind", "sleep"], r"settings\.jobs\.slots = 0"),
    "preset epochs abc": ({"presets": {"demo": {"epochs": "abc"}}}, ["train"], r"epochs"),
    "reference unknown": ({"reference": "nope"}, ["search", "--force"], r"settings\.reference: no dataset 'nope'"),
    "reference a number": ({"reference": 5}, ["status"], r"settings\.reference in .* has the wrong type"),
    "jobs a number": ({"jobs": 5}, ["run-job", "--kind", "sleep"], r"settings\.jobs in .* has the wrong type"),
    "slurm a list": ({"slurm": []}, ["status"], r"settings\.slurm in .* has the wrong type"),
}


@pytest.mark.parametrize("case", list(SETTINGS_CASES))
def test_bad_settings_are_named(ws, capsys, case):
    settings, argv, needle = SETTINGS_CASES[case]
    path = ws.path("clipsim.json")
    original = path.read_bytes()
    reg = _registry(ws)
    reg["settings"].update(settings)
    try:
        path.write_text(json.dumps(reg))
        check_clean_error(ws, argv, needle, capsys, usable=False)
    finally:
        path.write_bytes(original)


# ----- job parameters through the API: the pipeline queues nothing unless every job passes --------------------
PIPELINE_CASES = {  # (queue_pipeline arguments, the error); a rule's options are RuleSpec's to refuse (test_prune)
    "manifest ../x": ({"manifest": "../x", "spec": RuleSpec("near", keep=0.5)}, r"'\.\./x'"),
    "manifest 300 chars": ({"manifest": LONG, "spec": RuleSpec("near", keep=0.5)}, r"300 characters"),
    "preset unknown": ({"spec": RuleSpec("near", keep=0.5), "preset": "nope"}, r"preset 'nope'"),
    "keep fraction 2.0": ({"spec": RuleSpec("near", keep=2.0)}, r"keep"),
    "web set unknown": ({"spec": RuleSpec("near", keep=0.5, web="nope")}, r"'nope' is not a web train set"),
    "control name too long": ({"manifest": "a" * 95, "spec": RuleSpec("near", keep=0.5), "random_control": True},
                              r"random control manifest name"),
    "eval tests unknown": ({"spec": RuleSpec("near", keep=0.5), "eval_tests": ["nope"]}, r"'nope'"),
}


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_pipeline_checks_every_job_before_queueing_any(ws, case):
    kwargs, needle = PIPELINE_CASES[case]
    before, jobs_before = tree(ws.root), list_jobs(ws)
    OUTCOMES["cases"] += 1
    with pytest.raises(ClipsimError, match=needle):
        queue_pipeline(ws, include_full=True, **kwargs)
    OUTCOMES["clear errors"] += 1
    assert list_jobs(ws) == jobs_before and tree(ws.root) == before


# ----- read-only mode: every command that writes refuses, nothing is touched -----------------------------------
WRITES = {
    "init (new folder)": ["init"],
    "register": ["register", "--name", "extra", "--role", "test", "--kind", "folder", "--source", "."],
    "embed": ["embed", "--datasets", "val"],
    "embed --force": ["embed", "--force", "--datasets", "val"],
    "embed --shards": ["embed", "--datasets", "val", "--shards", "0:1"],
    "embed --finalize": ["embed", "--datasets", "val", "--finalize"],
    "embed --array": ["embed", "--datasets", "val", "--array", "2"],
    "search --force": ["search", "--force", "--train", "web", "--tests", "val"],
    "search --shards": ["search", "--train", "web", "--tests", "val", "--shards", "0:1"],
    "search --merge": ["search", "--train", "web", "--tests", "val", "--merge"],
    "search --array": ["search", "--train", "web", "--tests", "val", "--array", "2"],
    "prune": ["prune", "--rule", "near", "--keep-fraction", "0.5", "--name", "ro"],
    "map": ["map", "--name", "ro"],
    "report": ["report"],
    "train": ["train"],
    "evaluate": ["evaluate", "--run", "x"],
    "run-job": ["run-job", "--kind", "sleep"],
    "jobs cancel": ["jobs", "cancel", "--id", "x"],
}


@pytest.mark.parametrize("case", list(WRITES))
def test_every_writing_command_refuses_in_read_only_mode(ws, capsys, monkeypatch, tmp_path, case):
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    argv = WRITES[case]
    if case == "init (new folder)":
        code, text = run_cli(["init", "--workspace", str(tmp_path / "new")], capsys)
        OUTCOMES["cases"] += 1
        assert code == 2 and "read-only" in text and not (tmp_path / "new").exists()
        OUTCOMES["clear errors"] += 1
        return
    if case == "jobs cancel":
        monkeypatch.delenv("CLIPSIM_READ_ONLY")
        job = jobs.launch(ws, "sleep", {"seconds": 0.1, "steps": 1})
        jobs.wait(ws, job.id, timeout=60)
        argv = ["jobs", "cancel", "--id", job.id]
        monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    check_clean_error(ws, argv, r"read-only \(CLIPSIM_READ_ONLY=1\)", capsys)


# ----- a real terminal: no traceback, one line ----------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["search", "--k", "0"], "--k: value = 0 is out of range"),
    (["metadata", "--dataset", "web", "--ids", "1,abc"], "'abc' is not an integer"),
    (["register", "--name", LONG, "--role", "test", "--kind", "folder", "--source", "."], "300 characters"),
])
def test_no_traceback_reaches_the_terminal(ws, argv, needle):
    before = tree(ws.root)
    done = subprocess.run([sys.executable, "-m", "clipsim", argv[0], "--workspace", str(ws.root), *argv[1:]],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    OUTCOMES["cases"] += 1
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert tree(ws.root) == before
    OUTCOMES["clear errors"] += 1


def test_unexpected_failure_is_one_line_with_the_log_path(ws, capsys, monkeypatch, tmp_path):
    """An exception that is not a ClipsimError (a bug): exit code 1, one line, the traceback saved; -v shows it."""
    from clipsim.cli import core

    def broken(_ws):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(core, "workspace_status", broken)
    monkeypatch.setenv("CLIPSIM_LOG_DIR", str(tmp_path / "logs"))
    code, text = run_cli(["status", "--workspace", str(ws.root)], capsys)
    OUTCOMES["cases"] += 1
    assert code == 1 and "Traceback" not in text and "RuntimeError: disk on fire" in text
    log = Path(re.search(r"traceback is in (\S+);", text).group(1))
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text() and "disk on fire" in log.read_text()
    OUTCOMES["clear errors"] += 1
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["status", "--workspace", str(ws.root), "-v"])


def test_corpus_counts(capsys):
    """Totals over the corpus above (run the whole file): no traceback, nothing silently wrong, no data lost."""
    with capsys.disabled():
        print(f"\nbad-input corpus: {dict(OUTCOMES)}")
    assert OUTCOMES["tracebacks"] == OUTCOMES["silently wrong"] == OUTCOMES["data lost"] == 0
    assert OUTCOMES["clear errors"] == OUTCOMES["cases"]
