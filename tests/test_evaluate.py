"""Zero-shot evaluation against a direct computation with the model, class subsets, the results table, CLI/jobs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipsim import fileio
from clipsim.cli import main as cli_main
from clipsim.data.demo.captions import DEMO_TEMPLATES
from clipsim.data.sources import list_folder, read_image
from clipsim.errors import DataError
from clipsim.runs.evaluate import evaluate, predict, template_set
from clipsim.runs.predictions import load_predictions
from clipsim.runs.results import add_results, results_frame
from clipsim.runs.stats import bootstrap_interval
from clipsim.workspace import Workspace


@pytest.fixture(scope="module")
def ws(demo_ws, tmp_path_factory, tiny_model_config, tiny_checkpoint):
    """A copy of the small demo with a finished 'run' holding the conftest's tiny checkpoint."""
    root = tmp_path_factory.mktemp("evaluate") / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("manifests", "runs", "train_data", "results"))
    run = root / "runs" / "tiny-run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(tiny_checkpoint, run / "checkpoints" / "epoch_1.pt")
    fileio.write_json(run / "training.json", {"run": "tiny-run", "model": str(tiny_model_config), "manifest": "full",
                                              "preset_name": "tiny", "rule": "full", "web": "web", "samples": 3000,
                                              "web_samples": 3000})
    return Workspace.open(root)


def direct_predictions(config: Path, checkpoint: Path, folder: str, classes: list[str], label_map=None,
                       subset=None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, label) of every image in a folder, computed with open_clip directly."""
    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms(config.stem, pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(config.stem)
    listing, _ = list_folder(folder, label_map=label_map)
    with torch.no_grad():
        weights = []
        for name in classes:
            text = F.normalize(model.encode_text(tokenizer([t.format(name) for t in DEMO_TEMPLATES])), dim=-1)
            weights.append(F.normalize(text.mean(0), dim=-1))
        pixels = torch.stack([preprocess(read_image(p)) for p in listing["path"]])
        logits = F.normalize(model.encode_image(pixels), dim=-1) @ torch.stack(weights).T
    if subset is not None:
        mask = torch.full_like(logits, -torch.inf)
        mask[:, subset] = 0
        logits = logits + mask
    return logits.argmax(1).numpy(), listing["label"].to_numpy()


def test_accuracy_equals_a_direct_computation(ws, tiny_model_config, tiny_checkpoint):
    frame = evaluate(ws, "tiny-run", tests=["val", "sketch"])
    assert list(frame["test"]) == ["val", "sketch"] and (frame["templates"] == "demo").all()
    for row in frame.itertuples():
        ds = ws.dataset(row.test)
        pred, labels = direct_predictions(tiny_model_config, tiny_checkpoint, ds.source, ds.classes)
        assert row.n == len(labels) == 96
        assert row.correct == int((pred == labels).sum())
        assert row.accuracy == pytest.approx(row.correct / row.n)
    stored = results_frame(ws)
    assert set(stored["test"]) == {"val", "sketch"} and (stored["run"] == "tiny-run").all()
    for row in stored.itertuples():  # every accuracy has its per-image predictions and a bootstrap interval
        per_image = load_predictions(ws, "tiny-run", row.test)
        assert list(per_image.columns[:6]) == ["run", "test", "key", "label", "prediction", "correct"]
        assert len(per_image) == row.n and int(per_image["correct"].sum()) == row.correct
        interval = bootstrap_interval(per_image["correct"])
        assert (row.ci_low, row.ci_high) == (interval.low, interval.high) and row.ci_low <= row.accuracy <= row.ci_high
    assert stored["checkpoint"].str.endswith("epoch_1.pt").all() and (stored["manifest"] == "full").all()
    evaluate(ws, "tiny-run", tests=["val"])  # re-evaluation replaces its row
    assert len(results_frame(ws)) == 2


def test_predict_scores_only_the_class_subset():
    image = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    classes = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0.8, 0.2], [0, 1, 0]], np.float32)
    assert predict(image, classes).tolist() == [0, 3]
    assert predict(image, classes, [1, 2]).tolist() == [1, 2]  # indices into the full class list


def test_class_subset_benchmark(ws, tmp_path, tiny_model_config, tiny_checkpoint):
    """A benchmark holding 3 of the 12 classes, labelled in the full index and scored over a 4-class subset."""
    val = ws.dataset("val")
    folder = tmp_path / "subset"
    kept = ["circle", "heart", "star"]
    for name in kept:
        shutil.copytree(Path(val.source) / name, folder / name)
    label_map = {name: val.classes.index(name) for name in kept}
    subset = sorted([*label_map.values(), val.classes.index("arrow")])
    ws.register_dataset("val-subset", "test", folder, "folder", classes=val.classes, label_map=label_map,
                        class_subset=subset)
    row = evaluate(ws, "tiny-run", tests=["val-subset"], record=False).iloc[0]
    pred, labels = direct_predictions(tiny_model_config, tiny_checkpoint, str(folder), val.classes, label_map, subset)
    assert set(labels) == set(label_map.values()) and row.classes == 4
    assert row.correct == int((pred == labels).sum()) and row.n == len(labels)
    full, _ = direct_predictions(tiny_model_config, tiny_checkpoint, str(folder), val.classes, label_map)
    assert row.correct >= int((full == labels).sum())  # fewer wrong classes to pick can only help
    ws.register_dataset("val-bad", "test", folder, "folder", classes=val.classes, label_map=label_map,
                        class_subset=subset[:2])
    with pytest.raises(DataError, match="outside its 2 scored classes"):
        evaluate(ws, "tiny-run", tests=["val-bad"], record=False)


def test_class_groups_count_any_member(ws, tmp_path, tiny_model_config, tiny_checkpoint):
    """ObjectNet-style groups: a prediction anywhere in the label's group is right."""
    val = ws.dataset("val")
    folder = tmp_path / "groups"
    for name in ("circle", "heart", "star"):
        shutil.copytree(Path(val.source) / name, folder / name)
    idx = {n: val.classes.index(n) for n in val.classes}
    groups = [[idx["circle"], idx["arrow"], idx["ring"]], [idx["heart"]], [idx["star"], idx["cross"], idx["square"]]]
    subset = sorted(i for g in groups for i in g)
    label_map = {"circle": idx["circle"], "heart": idx["heart"], "star": idx["star"]}
    ws.register_dataset("val-groups", "test", folder, "folder", classes=val.classes, label_map=label_map,
                        class_subset=subset, class_groups=groups)
    row = evaluate(ws, "tiny-run", tests=["val-groups"], record=False).iloc[0]
    pred, labels = direct_predictions(tiny_model_config, tiny_checkpoint, str(folder), val.classes, label_map, subset)
    head = {i: g[0] for g in groups for i in g}
    grouped = np.array([head[p] for p in pred])
    assert row.correct == int((grouped == labels).sum()) and row.n == len(labels)
    assert row.correct >= int((pred == labels).sum())


def test_templates(ws):
    assert template_set(ws)[0] == "demo"
    name, templates = template_set(ws, "openai")
    assert name == "openai" and len(templates) == 80 and templates[0]("dog") == "a bad photo of a dog."


def test_results_table_upserts(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    row = {"run": "r", "manifest": "m", "preset": "demo", "rule": "random", "control_of": "g", "web": "web",
           "train_samples": 10, "web_samples": 40, "pruned_fraction": 0.75, "test": "val", "accuracy": 0.5,
           "correct": 5, "n": 10, "unlabelled": 0, "classes": 12, "templates": "demo", "epoch": 2,
           "checkpoint": "c.pt", "created": "now"}
    add_results(ws, [row, {**row, "test": "v2"}])
    add_results(ws, [{**row, "accuracy": 0.7}])
    table = results_frame(ws)
    assert len(table) == 2 and table.set_index("test").loc["val", "accuracy"] == 0.7
    with pytest.raises(ValueError, match="lack columns"):
        add_results(ws, [{"run": "r"}])


def test_cli_evaluate_runs_as_a_job_and_results_prints(ws, capsys):
    assert cli_main(["evaluate", "--workspace", str(ws.root), "--run", "tiny-run", "--tests", "v2",
                     "--wait", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert '"v2"' in out and "evaluate job" in out
    assert cli_main(["results", "--workspace", str(ws.root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["test"] == "v2" and r["run"] == "tiny-run" and r["n"] == 96 for r in rows)
    assert all({"ci_low", "ci_high", "seed"} <= set(r) for r in rows)
    assert cli_main(["results", "--workspace", str(ws.root)]) == 0
    assert "tiny-run" in capsys.readouterr().out
