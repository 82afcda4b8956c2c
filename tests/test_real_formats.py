"""A real-format study end to end through the CLI: ImageNet-style wnid folders (train as the reference, val,
sketch), an img2dataset webdataset shard and a LAION-style clip-retrieval embedding folder (urls, no images)
go through register -> embed / import -> search -> prune -> report, with planted near-duplicates as ground truth."""
from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from clipsim import Workspace, images, metadata
from clipsim.cli import main
from clipsim.prune.manifest import load_manifest

WNIDS = ["n01443537", "n01484850", "n01494475"]  # goldfish, great white shark, hammerhead (ImageNet 1, 2, 4)
PER_CLASS = {"train": 12, "val": 6, "sketch": 5}
WEB_RANDOM, LAION_RANDOM = 40, 24
PLANTED_WEB = {"val": 4, "sketch": 2}  # test images whose exact bytes also sit in the web tar
PLANTED_LAION = 2  # val images whose embedding rows also sit in the clip-retrieval folder


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def make_benchmarks(root: Path, draw) -> dict[str, dict[str, bytes]]:
    """root/<split>/<wnid>/<name>.JPEG as the ImageNet family ships them; sketches are greyscale edge drawings."""
    files: dict[str, dict[str, bytes]] = {}
    for s, (split, n) in enumerate(PER_CLASS.items()):
        files[split] = {}
        for c, wnid in enumerate(WNIDS):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                image = draw(1000 * s + 100 * c + i, (48, 48))
                if split == "sketch":
                    image = ImageOps.grayscale(image).convert("RGB")
                name = f"{wnid}_{i}.JPEG"
                data = jpeg(image)
                (root / split / wnid / name).write_bytes(data)
                files[split][f"{wnid}/{name}"] = data
    return files


def make_web_tar(path: Path, draw, planted: list[bytes]) -> list[str]:
    """An img2dataset shard: <key>.jpg/.txt/.json per sample; planted copies get keys p0, p1, ... (returned)."""
    samples = [(f"{i:09d}", jpeg(draw(50_000 + i, (48, 48))), f"a web photo number {i}") for i in range(WEB_RANDOM)]
    keys = [f"p{j}" for j in range(len(planted))]
    samples += [(k, data, "a copy of a benchmark image") for k, data in zip(keys, planted)]
    with tarfile.open(path, "w") as tar:
        for key, data, caption in samples:
            meta = json.dumps({"key": key, "url": f"https://example.org/{key}.jpg", "caption": caption}).encode()
            for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", caption.encode()), (f"{key}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return keys


def make_laion_folder(tmp: Path, draw, planted: list[bytes], model: list[str]) -> tuple[Path, list[str]]:
    """A clip-retrieval output as LAION publishes it: img_emb/img_emb_0.npy + metadata/metadata_0.parquet with
    url and caption, no images. Made by embedding images with the same model in a scratch workspace, then
    dropping every image locator."""
    images = tmp / "laion_images" / "all"
    images.mkdir(parents=True)
    for i in range(LAION_RANDOM):
        (images / f"l{i:04d}.jpg").write_bytes(jpeg(draw(70_000 + i, (48, 48))))
    keys = [f"copy{j}" for j in range(len(planted))]
    for key, data in zip(keys, planted):
        (images / f"{key}.jpg").write_bytes(data)
    scratch = str(tmp / "scratch")
    assert main(["init", "--workspace", scratch]) == 0
    assert main(["register", "--workspace", scratch, "--name", "laion", "--role", "train", "--kind", "folder",
                 "--source", str(tmp / "laion_images")]) == 0
    assert main(["embed", "--workspace", scratch, "--workers", "0", *model]) == 0
    out = tmp / "laion400m-embeddings"
    (out / "img_emb").mkdir(parents=True)
    (out / "metadata").mkdir()
    src = Path(scratch) / "embeddings" / "laion"
    [npy] = sorted((src / "img_emb").glob("*.npy"))
    [meta] = sorted((src / "metadata").glob("*.parquet"))
    shutil.copy(npy, out / "img_emb" / "img_emb_0.npy")
    frame = pd.read_parquet(meta)
    stem = frame["key"].str.replace(r"^.*/", "", regex=True).str.replace(".jpg", "", regex=False)
    pd.DataFrame({"key": stem, "url": "https://laion.example/" + stem + ".jpg",
                  "caption": "laion caption " + stem}).to_parquet(out / "metadata" / "metadata_0.parquet")
    return out, keys


def test_real_formats_register_embed_search_prune_report(tmp_path, draw, tiny_model_config, tiny_checkpoint, capsys):
    model = ["--model", str(tiny_model_config), "--pretrained", str(tiny_checkpoint)]
    files = make_benchmarks(tmp_path / "data", draw)
    planted_tests = [("val", k) for k in list(files["val"])[: PLANTED_WEB["val"]]]
    planted_tests += [("sketch", k) for k in list(files["sketch"])[: PLANTED_WEB["sketch"]]]
    (tmp_path / "web").mkdir()
    web_keys = make_web_tar(tmp_path / "web" / "00000.tar", draw, [files[s][k] for s, k in planted_tests])
    laion_tests = list(files["val"])[-PLANTED_LAION:]
    laion_dir, laion_keys = make_laion_folder(tmp_path, draw, [files["val"][k] for k in laion_tests], model)

    ws_dir = str(tmp_path / "study")
    w = ["--workspace", ws_dir]
    assert main(["init", *w]) == 0
    for kind, name, split in (("imagenet-train", "imagenet", "train"), ("imagenet-val", "val", "val"),
                              ("imagenet-sketch", "sketch", "sketch")):
        assert main(["register-benchmark", *w, "--kind", kind, "--root", str(tmp_path / "data" / split),
                     "--name", name]) == 0
    out = capsys.readouterr().out
    assert "registered imagenet" in out and "registered val" in out and "registered sketch" in out
    assert main(["register", *w, "--name", "web", "--role", "train", "--kind", "wds",
                 "--source", str(tmp_path / "web")]) == 0
    assert main(["register", *w, "--name", "laion", "--role", "train", "--kind", "embeddings",
                 "--source", str(laion_dir)]) == 0
    assert main(["embed", *w, "--workers", "0", *model]) == 0
    assert main(["search", *w, "--k", "5"]) == 0
    capsys.readouterr()

    ws = Workspace.open(ws_dir)
    assert ws.settings["reference"] == "imagenet"
    counts = ws.datasets().set_index("name")["count"].to_dict()
    assert counts == {"imagenet": 36, "val": 18, "sketch": 15, "web": WEB_RANDOM + len(web_keys),
                      "laion": LAION_RANDOM + PLANTED_LAION}
    val = ws.dataset("val")
    assert len(val.classes) == 1000 and val.classes[1] == "goldfish"  # ImageNet indices from the wnid folders

    # planted copies are the rank-1 neighbours (same bytes: similarity 1 up to float noise of batching)
    for (test, key), web_key in zip(planted_tests, web_keys):
        nn = ws.neighbours(test, "web", k=1).set_index("test_key")
        test_key = key.rsplit(".", 1)[0]  # folder keys: <class folder>/<file stem>
        assert nn.loc[test_key, "train_key"] == web_key and nn.loc[test_key, "similarity"] > 0.995
    laion_nn = ws.neighbours("val", "laion", k=1).set_index("test_key")
    for key, laion_key in zip(laion_tests, laion_keys):
        test_key = key.rsplit(".", 1)[0]
        assert laion_nn.loc[test_key, "train_key"] == laion_key and laion_nn.loc[test_key, "similarity"] > 0.995
    # brute force over the stored embeddings agrees
    t16 = np.concatenate([np.load(p) for p in sorted((Path(ws_dir) / "embeddings/val/img_emb").glob("*.npy"))])
    x16 = np.concatenate([np.load(p) for p in sorted((Path(ws_dir) / "embeddings/web/img_emb").glob("*.npy"))])
    brute = (t16.astype(np.float64) @ x16.astype(np.float64).T).astype(np.float32)
    assert np.array_equal(np.sort(ws.nn_similarity("val", "web").to_numpy()), np.sort(brute.max(axis=1)))

    # similarity-gap pruning removes every planted web copy (cos = 1 > s_imagenet(t))
    assert main(["prune", *w, "--rule", "similarity-gap", "--web", "web", "--reference", "imagenet",
                 "--tests", "val,sketch", "--name", "gap"]) == 0
    manifest = load_manifest(ws, "gap")
    removed = set(manifest.removed_keys())
    assert set(web_keys) <= removed and len(removed) < counts["web"]

    # captions and urls of the imported set come from its parquet (DuckDB), thumbnails from the url
    found = metadata.lookup(ws, "laion", keys=laion_keys, columns=("key", "url", "caption"))
    assert list(found["url"]) == [f"https://laion.example/{k}.jpg" for k in laion_keys]
    thumbs = images.dataset_thumbs(ws, "laion", np.arange(3), 64)
    assert [t.uri for t in thumbs] == [f"https://laion.example/{k}.jpg" for k in ws.keys("laion")[:3]]
    assert all(t.fallback.startswith("data:image/png") for t in thumbs)
    assert images.dataset_thumbs(ws, "web", np.array([0]), 64)[0].uri.startswith("data:image/jpeg")  # tar member
    report = tmp_path / "study.html"
    assert main(["report", *w, "--out", str(report)]) == 0
    html = report.read_text()
    for name in ("imagenet", "val", "sketch", "web", "laion", "gap"):
        assert name in html
    assert len(re.findall(r'<img[^>]+src="data:image/jpeg;base64,', html)) >= 4  # local thumbnails embedded
    remote = re.findall(r'<img[^>]+src="(https://laion\.example/[^"]+)"[^>]+background:url\(data:image/png', html)
    assert remote and set(remote) <= {f"https://laion.example/{k}.jpg" for k in laion_keys + [f"l{i:04d}" for i in
                                                                                               range(LAION_RANDOM)]}
