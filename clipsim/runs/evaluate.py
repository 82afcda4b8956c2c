"""Zero-shot top-1 evaluation of a trained CLIP on the workspace's test sets, one result row per test set.

The classifier is built as in CLIP: every prompt template filled with a class name, each text embedding
L2-normalised, averaged over templates and normalised again. An image is assigned the class of the highest
cosine; benchmarks scored over a class subset (ImageNet-R/-A, ObjectNet: the dataset's `extra["class_subset"]`)
take the argmax over those classes' logits only, and ObjectNet's grouped classes (`extra["class_groups"]`) count a
prediction anywhere in the label's group as right.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.data.sources import open_source, read_image
from clipsim.errors import DataError, WorkspaceError

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
CHUNK = 1024  # images decoded and embedded per step: bounds memory to one chunk of PIL images
READERS = 4  # decoding threads (PIL releases the GIL while decoding)


def template_set(ws, templates: str | Sequence | None = None) -> tuple[str, list]:
    """The prompt templates to use and their name.

    Args:
        ws: the workspace (settings['zero_shot_templates'] may name 'openai' or 'demo').
        templates: 'openai' (the 80 OpenAI ImageNet templates), 'demo' (clipsim's demo prompts), a list of
            format strings with one '{}' / callables, or None (the setting; else 'demo' in a demo workspace,
            else 'openai').

    Returns:
        (name, templates).
    """
    if templates is None:
        templates = ws.settings.get("zero_shot_templates") or ("demo" if ws.path("demo", "demo.json").exists()
                                                                else "openai")
    if templates == "openai":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return "openai", list(OPENAI_IMAGENET_TEMPLATES)
    if templates == "demo":
        from clipsim.data.demo.captions import DEMO_TEMPLATES

        return "demo", list(DEMO_TEMPLATES)
    if isinstance(templates, str):
        raise WorkspaceError(f"templates {templates!r} must be 'openai', 'demo' or a list of prompts with '{{}}'")
    return "custom", list(templates)


def fill(template, classname: str) -> str:
    """One prompt: a callable template called with the class name, or a format string with one '{}'."""
    return template(classname) if callable(template) else template.format(classname)


def class_embeddings(model, tokenizer, classnames: Sequence[str], templates: Sequence,
                     device: str = "cpu") -> np.ndarray:
    """Zero-shot classifier weights: per class the normalised mean of normalised template embeddings.

    Returns:
        (n_classes, d) float32, rows L2-normalised.
    """
    from clipsim.embed import encode_texts

    texts = [fill(t, c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, texts, device=device).reshape(len(classnames), len(templates), -1)
    mean = emb.mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def predict(image_emb: np.ndarray, class_emb: np.ndarray, class_subset: Sequence[int] | None = None) -> np.ndarray:
    """Top-1 class of every image: argmax of cosine over all classes or over `class_subset` only.

    Args:
        image_emb: (n, d) float32 normalised.
        class_emb: (n_classes, d) float32 normalised.
        class_subset: class indices the benchmark is scored over (None: all).

    Returns:
        (n,) int64 predicted class indices (into the full class list).
    """
    logits = image_emb @ class_emb.T
    if class_subset is None:
        return logits.argmax(axis=1).astype(np.int64)
    subset = np.asarray(class_subset, dtype=np.int64)
    return subset[logits[:, subset].argmax(axis=1)]


def group_heads(n_classes: int, class_groups: Sequence[Sequence[int]] | None) -> np.ndarray:
    """Class index -> the first class of its group (itself when ungrouped): (n_classes,) int64.

    ObjectNet classes each cover several ImageNet classes (`extra["class_groups"]`; an image's label is its
    group's first class): a prediction anywhere in the label's group is right.
    """
    heads = np.arange(n_classes, dtype=np.int64)
    for group in class_groups or []:
        heads[np.asarray(group, dtype=np.int64)] = int(group[0])
    return heads


def test_records(ws, test: str) -> pd.DataFrame:
    """Every image of a test set: key, label, path, offset, size (labels mapped as registered).

    Raises:
        WorkspaceError: not a test set, or it has no class names.
    """
    ds = ws.dataset(test)
    if not ds.classes:
        raise WorkspaceError(f"test set {test!r} has no class names in {ws.path('clipsim.json')}; register it with "
                             "--classes (one name per line) to evaluate zero-shot")
    if ds.kind == "embeddings":
        return ws.embeddings(test).metadata(["key", "label", "path", "offset", "size"])
    source = open_source(ds.kind, ds.source, options=ds.extra)
    return pd.concat([source.records(s) for s in source.shards], ignore_index=True)


def embed_records(model, preprocess, records: pd.DataFrame, crop_border: int = 0, device: str = "cpu",
                  batch_size: int = 256, progress: Progress | None = None, label: str = "") -> np.ndarray:
    """Image embeddings of records read by their locators, chunk by chunk.

    Returns:
        (len(records), d) float32 normalised, row-aligned with records.
    """
    from clipsim.embed import embed_images

    locators = [(p, int(o), int(s)) if int(o) >= 0 else p
                for p, o, s in zip(records["path"], records["offset"], records["size"])]
    parts = []
    with ThreadPoolExecutor(READERS) as pool:
        for lo in range(0, len(locators), CHUNK):
            images = list(pool.map(lambda loc: read_image(loc, crop_border), locators[lo : lo + CHUNK]))
            parts.append(embed_images(model, preprocess, images, device=device, batch_size=batch_size))
            if progress is not None:
                progress(lo + len(images), len(locators), f"zero-shot {label}")
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def zero_shot(ws, test: str, model, preprocess, tokenizer, templates: Sequence, device: str = "cpu",
              batch_size: int = 256, progress: Progress | None = None) -> dict:
    """Zero-shot top-1 accuracy of a loaded model on one test set.

    Returns:
        {test, accuracy, correct, n, unlabelled, classes, predictions}: n counts images with a label; unlabelled
        ones (label -1) are left out; predictions holds key, label, prediction, correct per labelled image.

    Raises:
        DataError: a label outside the class list or outside the benchmark's class subset.
    """
    ds = ws.dataset(test)
    records = test_records(ws, test)
    labels = records["label"].to_numpy(dtype=np.int64)
    known = labels >= 0
    records, labels = records[known].reset_index(drop=True), labels[known]
    subset = ds.extra.get("class_subset")
    allowed = np.asarray(subset if subset is not None else range(len(ds.classes)), dtype=np.int64)
    bad = ~np.isin(labels, allowed)
    if bad.any():
        raise DataError(f"test set {test!r}: image {records['key'].iat[int(np.flatnonzero(bad)[0])]} has label "
                        f"{labels[bad][0]}, outside its {len(allowed)} scored classes (extra.class_subset / classes "
                        f"in {ws.path('clipsim.json')}); fix the labels or the class subset")
    class_emb = class_embeddings(model, tokenizer, ds.classes, templates, device)
    image_emb = embed_records(model, preprocess, records, int(ds.extra.get("crop_border", 0) or 0), device,
                              batch_size, progress, test)
    heads = group_heads(len(ds.classes), ds.extra.get("class_groups"))
    predicted = predict(image_emb, class_emb, subset) if len(labels) else np.zeros(0, np.int64)
    right = heads[predicted] == labels
    correct = int(right.sum())
    per_image = pd.DataFrame({"key": records["key"].astype(str).to_numpy(), "label": labels, "prediction": predicted,
                              "correct": right})
    return {"test": test, "accuracy": correct / len(labels) if len(labels) else float("nan"), "correct": correct,
            "n": len(labels), "unlabelled": int((~known).sum()), "classes": len(allowed), "predictions": per_image}


def evaluate(ws, run: str | Path, tests: list[str] | None = None, templates: str | Sequence | None = None,
             model: str | None = None, device: str = "auto", batch_size: int = 256,
             progress: Progress | None = None, record: bool = True) -> pd.DataFrame:
    """Zero-shot top-1 of a training run (its newest checkpoint) or a checkpoint file on test sets.

    Args:
        ws: the workspace.
        run: a run id (`runs/<id>`), a run folder, or a checkpoint file (then `model` names its architecture).
        tests: test set names (default: every registered test set with class names).
        templates: see template_set.
        model: architecture or JSON config for a bare checkpoint (default: the run's training.json).
        device: 'auto' (cuda if available), 'cpu', 'cuda'.
        batch_size: images per forward pass.
        progress: progress(done, total, message) or None.
        record: add the rows to the workspace's results table (clipsim.runs.results) and store each image's
            prediction (clipsim.runs.predictions).

    Returns:
        One row per test set with clipsim.results.RESULT_COLUMNS.

    Raises:
        WorkspaceError: unknown run, test set or templates. ModelError: the checkpoint does not load.
    """
    from clipsim.models import load_model
    from clipsim.runs import predictions, results
    from clipsim.runs.train import resolve_checkpoint

    info = resolve_checkpoint(ws, run, model)
    net, preprocess, tokenizer, _ = load_model(info["model"], info["checkpoint"], device)
    name, prompts = template_set(ws, templates)
    if not tests:
        tests = [t for t in ws.dataset_names("test") if ws.dataset(t).classes]
        if not tests:
            raise WorkspaceError(f"no test set of {ws.root} has class names to evaluate zero-shot; register test "
                                 "sets with --classes")
    rows = []
    for test in tests:
        t0 = time.time()
        score = zero_shot(ws, test, net, preprocess, tokenizer, prompts, device, batch_size, progress)
        log.info("%s on %s: top-1 %.4f (%d images, %.1f s)", info["run"], test, score["accuracy"], score["n"],
                 time.time() - t0)
        if record:  # per-image predictions first: a result row then always has its predictions beside it
            predictions.write_predictions(ws, info, test, score["predictions"])
        rows.append(results.result_row(info, score, name))
    frame = pd.DataFrame(rows, columns=results.RESULT_COLUMNS)
    if record:
        results.add_results(ws, frame)
    return frame


def evaluate_job(ws, params: dict, ctx) -> dict:
    """Job kind 'evaluate'. params: run (a train job id or run folder), tests (default all), templates,
    device ('auto'), batch_size (256).

    Returns:
        {"run", "accuracy": {test: top-1}, "n": {test: images}}.
    """
    frame = evaluate(ws, params["run"], tests=params.get("tests"), templates=params.get("templates"),
                     model=params.get("model"), device=params.get("device", "auto"),
                     batch_size=int(params.get("batch_size", 256)), progress=ctx.progress)
    ctx.check_cancelled()
    fileio.atomic_write(ctx.result_path("zero_shot.csv"), lambda tmp: frame.to_csv(tmp, index=False))
    return {"run": str(params["run"]), "accuracy": dict(zip(frame["test"], frame["accuracy"].round(6))),
            "n": dict(zip(frame["test"], frame["n"].astype(int)))}
