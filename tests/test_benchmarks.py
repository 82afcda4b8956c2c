"""Benchmarks as downloaded: ImageNet labels from wnid/index folders, class subsets, ObjectNet mappings and its
1 px border, the validation report (counts, missing folders, corrupt and duplicate images) and the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipsim import Workspace
from clipsim.cli import main
from clipsim.data import benchmarks, imagenet
from clipsim.data.benchmarks import BenchmarkKind, register_benchmark, validate_benchmark
from clipsim.data.sources import open_source, read_image
from clipsim.embed import embed_dataset, load_model
from clipsim.errors import DataError

# Standard ImageNet class indices (sorted-wnid order), known independently of the code under test.
GOLDFISH, WHITE_SHARK, HAMMERHEAD = ("n01443537", 1), ("n01484850", 2), ("n01494475", 4)
ANALOG_CLOCK, DIGITAL_CLOCK, MOUNTAIN_BIKE, TANDEM = 409, 530, 671, 444
BORDER = (255, 0, 255)  # ObjectNet-style frame colour


def make_folders(root: Path, counts: dict[str, int], draw, seed: int = 0) -> Path:
    """root/<folder>/<i>.jpg with `counts[folder]` drawn images each."""
    for j, (folder, n) in enumerate(counts.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw(seed + 100 * j + i).save(root / folder / f"img_{i}.jpg", quality=95)
    return root


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


def folder_labels(ws: Workspace, name: str) -> dict[str, int]:
    ds = ws.dataset(name)
    source = open_source(ds.kind, ds.source, options=ds.extra)
    records = source.records(source.shards[0])
    return dict(zip(records["key"], records["label"]))


def test_imagenet_r_labels_are_imagenet_indices_and_subset_follows_folders(ws, tmp_path, draw, capsys):
    root = make_folders(tmp_path / "imagenet-r", {HAMMERHEAD[0]: 2, GOLDFISH[0]: 2, WHITE_SHARK[0]: 1, "junk": 1}, draw)
    (root / "README.txt").write_text("ImageNet-R")
    assert main(["register-benchmark", "--workspace", str(ws.root), "--kind", "imagenet-r", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "registered imagenet-r" in out and "junk" in out
    ws.reload()
    ds = ws.dataset("imagenet-r")
    assert (ds.role, ds.kind, Path(ds.source)) == ("test", "folder", root.absolute())
    assert len(ds.classes) == 1000 and ds.classes[1] == "goldfish" and ds.classes[4] == "hammerhead shark"
    assert ds.extra["class_subset"] == [1, 2, 4] and ds.extra["benchmark"] == "imagenet-r"
    labels = folder_labels(ws, "imagenet-r")
    assert len(labels) == 5 and not any(k.startswith("junk") for k in labels)
    assert all(lab == dict([GOLDFISH, WHITE_SHARK, HAMMERHEAD])[k.split("/")[0]] for k, lab in labels.items())


def test_imagenet_a_with_a_wnid_outside_the_standard_list_is_kept_and_named(tmp_path, draw):
    standard = imagenet.subset_wnids("imagenet-a")[0]
    root = make_folders(tmp_path / "a", {standard: 1, GOLDFISH[0]: 1}, draw)
    report = validate_benchmark("imagenet-a", root)
    assert standard not in report.missing_classes and len(report.missing_classes) == 199
    assert any("not in the standard ImageNet-A list" in w and GOLDFISH[0] in w for w in report.warnings)
    assert report.layout.extra["class_subset"] == sorted([imagenet.wnid_index()[standard], GOLDFISH[1]])


def test_imagenet_v2_index_folders_and_wnid_folders_give_the_same_labels(ws, tmp_path, draw):
    by_index = make_folders(tmp_path / "v2", {"0": 1, "1": 2, "999": 1, "1000": 1}, draw)
    by_wnid = make_folders(tmp_path / "v2w", {imagenet.wnids()[0]: 1, imagenet.wnids()[1]: 2,
                                              imagenet.wnids()[999]: 1}, draw)
    register_benchmark(ws, "imagenet-v2", by_index, name="v2")
    register_benchmark(ws, "imagenet-v2", by_wnid, name="v2w")
    assert sorted(folder_labels(ws, "v2").values()) == sorted(folder_labels(ws, "v2w").values()) == [0, 1, 1, 999]
    assert ws.dataset("v2").extra["class_subset"] is None
    report = validate_benchmark("imagenet-v2", by_index)
    assert report.unexpected_folders == ["1000"] and len(report.missing_classes) == 997
    assert "2" in report.missing_classes


def test_flat_val_folder_is_a_layout_error_that_says_how_to_sort_it(ws, tmp_path, draw, capsys):
    flat = tmp_path / "val"
    flat.mkdir()
    for i in range(3):
        draw(i).save(flat / f"ILSVRC2012_val_{i:08d}.JPEG")
    report = validate_benchmark("imagenet-val", flat)
    assert not report.ok and str(flat) in report.errors[0] and "torchvision.datasets.ImageNet" in report.errors[0]
    with pytest.raises(DataError, match="was not registered"):
        register_benchmark(ws, "imagenet-val", flat)
    assert ws.dataset_names() == []
    args = ["register-benchmark", "--workspace", str(ws.root), "--kind", "imagenet-val", "--root", str(flat)]
    assert main(args) == 2
    capsys.readouterr()
    assert main(args + ["--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["registered"] is None and "wnid" in out["errors"][0]


def test_root_one_level_too_high_names_the_folder_to_use(tmp_path, draw):
    make_folders(tmp_path / "download" / "sketch", {GOLDFISH[0]: 1}, draw)
    report = validate_benchmark("imagenet-sketch", tmp_path / "download")
    assert f"use --root {tmp_path / 'download' / 'sketch'}" in report.errors[0]
    missing = validate_benchmark("imagenet-sketch", tmp_path / "nowhere")
    assert "does not exist" in missing.errors[0] and str(tmp_path / "nowhere") in missing.errors[0]


def test_report_counts_missing_empty_corrupt_and_duplicate_images(tmp_path, draw, monkeypatch):
    root = make_folders(tmp_path / "sketch", {GOLDFISH[0]: 3, WHITE_SHARK[0]: 2}, draw)
    (root / HAMMERHEAD[0]).mkdir()  # empty class folder
    (root / GOLDFISH[0] / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    shutil.copy(root / GOLDFISH[0] / "img_0.jpg", root / WHITE_SHARK[0] / "copy.jpg")
    draw(99).save(root / "stray.jpg")
    report = validate_benchmark("imagenet-sketch", root, check_images="all")
    assert (report.images_found, report.classes_found, report.checked_images) == (7, 2, 7)
    assert report.empty_classes == [HAMMERHEAD[0]] and len(report.missing_classes) == 997
    assert [u["key"] for u in report.unreadable] == [f"{GOLDFISH[0]}/broken"]
    assert report.duplicates == [[f"{GOLDFISH[0]}/img_0", f"{WHITE_SHARK[0]}/copy"]]
    text = "\n".join(report.warnings)
    assert "7 images found, the standard ImageNet-Sketch has 50,889 (-50,882)" in text
    assert "2 classes found, the standard ImageNet-Sketch has 1000" in text and "1 images directly in" in text
    assert report.ok and json.loads(json.dumps(report.to_dict()))["images_found"] == 7
    sample = validate_benchmark("imagenet-sketch", root, check_images=3, seed=1)
    assert sample.checked_images == 3 and sample.images_found == 7
    # Counts equal to the release: no count warnings.
    monkeypatch.setitem(benchmarks.KINDS, "imagenet-sketch", BenchmarkKind("imagenet-sketch", "S", "test", 7, 2))
    exact = validate_benchmark("imagenet-sketch", root, check_images=0)
    assert not any("images found" in w or "classes found" in w for w in exact.warnings)


def framed(image: Image.Image) -> Image.Image:
    """The image with a 1 px frame around it, as ObjectNet's images have."""
    out = Image.new("RGB", (image.width + 2, image.height + 2), BORDER)
    out.paste(image, (1, 1))
    return out


@pytest.fixture
def objectnet(tmp_path, draw) -> Path:
    root = tmp_path / "objectnet-1.0"
    folders = {"alarm_clock": "Alarm clock", "bicycle": "Bicycle", "air_freshener": "Air freshener"}
    for j, folder in enumerate(folders):
        (root / "images" / folder).mkdir(parents=True)
        for i in range(2):
            framed(draw(10 * j + i, size=(30, 26))).save(root / "images" / folder / f"{i}.png")
    (root / "mappings").mkdir()
    (root / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(folders))
    (root / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps({
        "Alarm clock": "analog clock; digital clock",
        "Bicycle": "mountain bike, all-terrain bike, off-roader; bicycle-built-for-two, tandem bicycle, tandem"}))
    return root


def test_objectnet_labels_groups_subset_and_border(ws, objectnet):
    ds, report = register_benchmark(ws, "objectnet", objectnet, check_images="all")
    assert Path(ds.source) == objectnet / "images" and ds.extra["crop_border"] == 1
    assert ds.extra["class_subset"] == sorted([ANALOG_CLOCK, DIGITAL_CLOCK, MOUNTAIN_BIKE, TANDEM])
    assert ds.extra["class_groups"] == [[ANALOG_CLOCK, DIGITAL_CLOCK], [MOUNTAIN_BIKE, TANDEM]]
    assert ds.extra["group_names"] == ["Alarm clock", "Bicycle"]
    assert (report.images_found, report.excluded_images, report.classes_found) == (4, 2, 2)
    assert report.unreadable == [] and report.unexpected_folders == []
    labels = folder_labels(ws, "objectnet")
    assert labels == {"alarm_clock/0": ANALOG_CLOCK, "alarm_clock/1": ANALOG_CLOCK,
                      "bicycle/0": MOUNTAIN_BIKE, "bicycle/1": MOUNTAIN_BIKE}
    path = objectnet / "images" / "bicycle" / "0.png"
    cropped = read_image(str(path), crop_border=ds.extra["crop_border"])
    assert cropped.size == (30, 26) and Image.open(path).size == (32, 28)
    pixels = np.asarray(cropped)
    edges = np.concatenate([pixels[[0, -1]].reshape(-1, 3), pixels[:, [0, -1]].reshape(-1, 3)])
    assert not (edges == BORDER).all(axis=1).any()  # no frame pixel left on any side
    assert np.array_equal(np.asarray(cropped)[0], np.asarray(Image.open(path).convert("RGB"))[1, 1:-1])


def test_objectnet_embedding_uses_the_cropped_image(ws, objectnet, tiny_model_config, tiny_checkpoint):
    register_benchmark(ws, "objectnet", objectnet, check_images=0)
    emb = embed_dataset(ws, "objectnet", model=str(tiny_model_config), pretrained=str(tiny_checkpoint),
                        device="cpu", workers=0, batch_size=8)
    meta = emb.metadata()
    assert meta["label"].tolist() == [ANALOG_CLOCK, ANALOG_CLOCK, MOUNTAIN_BIKE, MOUNTAIN_BIKE]
    net, preprocess, _, _ = load_model(str(tiny_model_config), str(tiny_checkpoint))
    whole = [Image.open(p).convert("RGB") for p in meta["path"]]
    cut = [im.crop((1, 1, im.width - 1, im.height - 1)) for im in whole]
    with torch.no_grad():
        def encode(images):
            feats = net.encode_image(torch.stack([preprocess(im) for im in images]))
            return torch.nn.functional.normalize(feats, dim=-1).numpy()
        want, uncropped = encode(cut), encode(whole)
    got = emb.all().astype(np.float32)
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert np.abs(got - uncropped).max() > 1e-2  # the frame changes the embedding: the crop really happened


def test_objectnet_name_resolution_through_the_pytorch_id_files(tmp_path, objectnet):
    mappings = objectnet / "mappings"
    lemmas = list(imagenet.lemmas())
    order = list(range(999, -1, -1))  # 2012 id j is sorted-wnid index 999 - j: a real permutation
    names = [lemmas[p] for p in order]
    names[order.index(ANALOG_CLOCK)] = "analogue clock (devkit spelling)"  # only the names file knows this one
    (mappings / "imagenet_to_label_2012_v2").write_text("\n".join(names) + "\n")
    (mappings / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(p): j for j, p in enumerate(order)}))
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps({
        "Alarm clock": "analogue clock (devkit spelling); digital clock", "Bicycle": "mountain bike, all-terrain "
        "bike, off-roader"}))
    report = validate_benchmark("objectnet", objectnet, check_images=0)
    assert report.ok and report.layout.extra["class_groups"] == [[ANALOG_CLOCK, DIGITAL_CLOCK], [MOUNTAIN_BIKE]]
    assert "pytorch_to_imagenet_2012_id.json" in report.layout.extra["mapping_files"]
    (mappings / "pytorch_to_imagenet_2012_id.json").unlink()  # without the pair, the devkit name cannot resolve
    broken = validate_benchmark("objectnet", objectnet, check_images=0)
    assert "analogue clock (devkit spelling)" in broken.errors[0]
    assert "pytorch_to_imagenet_2012_id.json" in broken.errors[0]


def test_objectnet_without_mappings_is_an_error_naming_the_file(tmp_path, objectnet):
    (objectnet / "mappings" / "objectnet_to_imagenet_1k.json").unlink()
    report = validate_benchmark("objectnet", objectnet)
    assert not report.ok and "objectnet_to_imagenet_1k.json" in report.errors[0]
    assert str(objectnet / "mappings") in report.errors[0]


def test_imagenet_train_becomes_the_reference_set(ws, tmp_path, draw):
    root = make_folders(tmp_path / "train", {GOLDFISH[0]: 1}, draw)
    ds, _ = register_benchmark(ws, "imagenet-train", root, name="imagenet")
    assert ds.role == "train" and ws.settings["reference"] == "imagenet"
    with pytest.raises(DataError, match="must be a number"):
        validate_benchmark("imagenet-train", root, check_images="some")
