"""Embedding pipeline on a tiny open_clip model: shards, metadata, equality with encode_image, resume, skips."""
from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clipsim import Workspace, store
from clipsim.data.sources import read_image, row_locator
from clipsim.embed import embed_dataset, embed_images, encode_texts, load_model
from clipsim.errors import DataError, ModelError
from clipsim.models import resolve_weights

F16_ATOL = 2e-3  # float16 storage of unit-norm rows: half an ulp at 0.5 is 2.4e-4; CPU kernels differ a bit more


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.create(tmp_path / "ws")


@pytest.fixture
def folder(tmp_path, draw) -> Path:
    root = tmp_path / "folder"
    for c in range(3):
        for i in range(3):
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            draw(10 * c + i, size=(36 + 4 * i, 44)).save(root / f"class{c}" / f"{i}.png")
    return root


def run(ws, name, model, checkpoint, **kw):
    return embed_dataset(ws, name, model=str(model), pretrained=str(checkpoint), device="cpu",
                         batch_size=kw.pop("batch_size", 4), workers=kw.pop("workers", 0), **kw)


def direct(model_config, checkpoint, images: list[Image.Image]) -> np.ndarray:
    """Reference: plain model.encode_image on preprocessed images, normalised."""
    net, preprocess, _, _ = load_model(model_config, checkpoint)
    with torch.no_grad():
        feats = net.encode_image(torch.stack([preprocess(im) for im in images]))
    return torch.nn.functional.normalize(feats, dim=-1).numpy()


def test_folder_shards_metadata_and_equality(ws, folder, tiny_model_config, tiny_checkpoint):
    ws.register_dataset("val", "test", folder, "folder")
    emb = run(ws, "val", tiny_model_config, tiny_checkpoint, shard_size=4, workers=2)
    assert emb.count == 9 and emb.dim == 32 and [s.rows for s in emb.shards] == [4, 4, 1]
    vectors = emb.all()
    assert vectors.dtype == np.float16
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=1e-3)
    meta = emb.metadata()
    assert list(meta.columns) == ["key", "caption", "label", "path", "offset", "size"]
    assert meta["key"].tolist() == [f"class{c}/{i}" for c in range(3) for i in range(3)]
    assert meta["label"].tolist() == [c for c in range(3) for _ in range(3)]
    assert (meta["offset"] == -1).all() and meta["caption"].isna().all()
    originals = [Image.open(p).convert("RGB") for p in meta["path"]]
    assert all(np.array_equal(np.asarray(read_image(row_locator(r))), np.asarray(o))
               for (_, r), o in zip(meta.iterrows(), originals))
    np.testing.assert_allclose(vectors.astype(np.float32), direct(tiny_model_config, tiny_checkpoint, originals),
                               atol=F16_ATOL)
    config = store_json(ws, "val", "config.json")
    assert config["model"] == "clipsim-test-tiny" and config["dim"] == 32 and config["image_size"] == [32, 32]
    summary = store_json(ws, "val", "summary.json")
    assert summary["rows"] == 9 and summary["skipped"] == 0 and summary["complete"]


def store_json(ws, name, file):
    from clipsim import fileio

    return fileio.read_json(ws.path("embeddings", name, file))


def test_table_and_wds_captions_and_locators(ws, tmp_path, draw, tiny_model_config, tiny_checkpoint):
    imgs = tmp_path / "tbl"
    imgs.mkdir()
    for i in range(3):
        draw(i).save(imgs / f"{i}.jpg", quality=95)
    pd.DataFrame({"path": [f"{i}.jpg" for i in range(3)], "caption": ["a", "b", "c"], "label": [0, 1, -1]}).to_csv(
        imgs / "list.csv", index=False)
    ws.register_dataset("tbl", "test", imgs / "list.csv", "table")
    meta = run(ws, "tbl", tiny_model_config, tiny_checkpoint).metadata()
    assert meta["key"].tolist() == ["0", "1", "2"] and meta["caption"].tolist() == ["a", "b", "c"]
    assert meta["label"].tolist() == [0, 1, -1]

    raw = [_jpeg(draw(20 + i)) for i in range(5)]
    (tmp_path / "wds").mkdir()
    for t in range(2):
        with tarfile.open(tmp_path / "wds" / f"{t:05d}.tar", "w") as tar:
            for i in range(t * 3, min(t * 3 + 3, 5)):
                _add(tar, f"{i:09d}.jpg", raw[i])
                _add(tar, f"{i:09d}.txt", f"photo {i}".encode())
    ws.register_dataset("web", "train", str(tmp_path / "wds" / "{00000..00001}.tar"), "wds")
    emb = run(ws, "web", tiny_model_config, tiny_checkpoint)
    assert [s.rows for s in emb.shards] == [3, 2]
    meta = emb.metadata()
    assert meta["key"].tolist() == [f"{i:09d}" for i in range(5)]
    assert meta["caption"].tolist() == [f"photo {i}" for i in range(5)]
    assert meta["path"].tolist() == [str(tmp_path / "wds" / f"{t:05d}.tar") for t in (0, 0, 0, 1, 1)]
    assert (meta["offset"] > 0).all() and meta["size"].tolist() == [len(r) for r in raw]
    decoded = [Image.open(io.BytesIO(r)).convert("RGB") for r in raw]
    assert np.array_equal(np.asarray(read_image(row_locator(meta.iloc[4]))), np.asarray(decoded[4]))
    np.testing.assert_allclose(emb.all().astype(np.float32), direct(tiny_model_config, tiny_checkpoint, decoded),
                               atol=F16_ATOL)


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_resume_recomputes_only_missing_shards(ws, folder, tiny_model_config, tiny_checkpoint):
    ws.register_dataset("val", "test", folder, "folder")
    first = run(ws, "val", tiny_model_config, tiny_checkpoint, shard_size=4)
    before = {p: p.stat().st_mtime_ns for s in first.shards for p in (s.emb, s.meta)}
    store.emb_path(first.root, 1).unlink()
    store.meta_path(first.root, 1).unlink()
    time.sleep(0.01)
    calls = []
    again = run(ws, "val", tiny_model_config, tiny_checkpoint, shard_size=4, progress=lambda *a: calls.append(a))
    after = {p: p.stat().st_mtime_ns for s in again.shards for p in (s.emb, s.meta)}
    changed = sorted(p.name for p in after if after[p] != before.get(p))
    assert changed == ["img_emb_1.npy", "metadata_1.parquet"]
    np.testing.assert_array_equal(again.all(), first.all())
    assert calls[-1][:2] == (9, 9) and "val" in calls[-1][2]


def test_other_model_or_shard_size_needs_force(ws, folder, tiny_model_config, tiny_checkpoint, tmp_path):
    ws.register_dataset("val", "test", folder, "folder")
    run(ws, "val", tiny_model_config, tiny_checkpoint, shard_size=4)
    with pytest.raises(DataError, match="shard_size: 4 -> 5.*--force"):
        run(ws, "val", tiny_model_config, tiny_checkpoint, shard_size=5)
    other = tmp_path / "other.pt"
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["state_dict"] = {k: v + 0.01 for k, v in state["state_dict"].items()}
    torch.save(state, other)
    with pytest.raises(DataError, match="checkpoint_fingerprint"):
        run(ws, "val", tiny_model_config, other, shard_size=4)
    emb = run(ws, "val", tiny_model_config, other, shard_size=5, force=True)
    assert [s.rows for s in emb.shards] == [5, 4]


def test_corrupt_image_is_skipped_and_recorded(ws, folder, tiny_model_config, tiny_checkpoint, caplog):
    bad = folder / "class1" / "zz_corrupt.jpg"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    ws.register_dataset("val", "test", folder, "folder")
    emb = run(ws, "val", tiny_model_config, tiny_checkpoint, shard_size=4, workers=2)
    assert emb.count == 9 and "class1/zz_corrupt" not in set(emb.keys())
    skipped = pd.read_parquet(emb.root / "skipped.parquet")
    assert skipped["key"].tolist() == ["class1/zz_corrupt"] and skipped["path"].tolist() == [str(bad)]
    assert "does not decode" in skipped["error"].iloc[0] and skipped["shard"].tolist() == [1]
    assert "class1/zz_corrupt" in caplog.text
    assert store_json(ws, "val", "summary.json")["skipped"] == 1
    again = run(ws, "val", tiny_model_config, tiny_checkpoint, shard_size=4)  # resume keeps the record
    assert again.count == 9 and len(pd.read_parquet(emb.root / "skipped.parquet")) == 1


def test_embeddings_kind_is_validated_not_embedded(ws, tmp_path):
    folder = tmp_path / "imported"
    vecs = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    store.write_shard(folder, 0, vecs / np.linalg.norm(vecs, axis=1, keepdims=True),
                      pd.DataFrame({"key": ["a", "b", "c"]}))
    ws.register_dataset("imp", "train", folder, "embeddings")
    emb = embed_dataset(ws, "imp", model="no-such-model", pretrained=None)
    assert emb.count == 3 and not ws.path("embeddings", "imp").exists()


def test_bad_sources_raise_data_error(ws, tmp_path, tiny_model_config):
    ws.register_dataset("gone", "test", tmp_path / "gone", "folder")
    with pytest.raises(DataError, match="does not exist"):
        embed_dataset(ws, "gone", model=str(tiny_model_config), pretrained=None)
    (tmp_path / "t.csv").write_text("file\nx.png\n")
    ws.register_dataset("nopath", "test", tmp_path / "t.csv", "table")
    with pytest.raises(DataError, match="no `path` column"):
        embed_dataset(ws, "nopath", model=str(tiny_model_config), pretrained=None)


def test_key_repeated_across_tars_raises(ws, tmp_path, draw, tiny_model_config, tiny_checkpoint):
    (tmp_path / "dup").mkdir()
    for t in range(2):
        with tarfile.open(tmp_path / "dup" / f"{t}.tar", "w") as tar:
            _add(tar, "same.jpg", _jpeg(draw(t)))
    ws.register_dataset("dup", "train", tmp_path / "dup", "wds")
    with pytest.raises(DataError, match=r"key 'same' occurs in tar .*0.tar and in .*1.tar"):
        run(ws, "dup", tiny_model_config, tiny_checkpoint)


def test_checkpoint_with_module_prefix_loads_identically(tiny_model_config, tiny_checkpoint, draw):
    import open_clip

    open_clip.add_model_config(tiny_model_config)
    torch.manual_seed(0)
    reference = open_clip.create_model(tiny_model_config.stem, pretrained=None).eval()
    net, preprocess, tokenizer, info = load_model(tiny_model_config, tiny_checkpoint)
    assert info["checkpoint"] == str(tiny_checkpoint) and info["checkpoint_fingerprint"]
    pixels = torch.stack([preprocess(draw(i)) for i in range(3)])
    with torch.no_grad():
        assert torch.equal(net.encode_image(pixels), reference.encode_image(pixels))
    images = embed_images(net, preprocess, [draw(i) for i in range(3)], batch_size=2)
    texts = encode_texts(net, tokenizer, ["a photo of a dog", "a sketch"])
    assert images.shape == (3, 32) and texts.shape == (2, 32) and images.dtype == np.float32
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    _, _, _, random_info = load_model(tiny_model_config, None)
    assert random_info["checkpoint"] is None


def test_uncached_tag_fails_fast_without_network(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ModelError, match=r"not on this machine.*hf download timm/vit_base_patch16_plus_clip_240"
                                         r"\.laion400m_e32.*--pretrained"):
        load_model("ViT-B-16-plus-240", "laion400m_e32", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    with pytest.raises(ModelError, match="neither a checkpoint file nor a pretrained tag"):
        load_model("ViT-B-16-plus-240", "no_such_tag", cache_dir=str(tmp_path))
    with pytest.raises(ModelError, match="checkpoint file .* does not exist"):
        load_model("ViT-B-16-plus-240", str(tmp_path / "missing.pt"))
    with pytest.raises(ModelError, match="unknown model 'ViT-B-16-plux-240'.*did you mean"):
        load_model("ViT-B-16-plux-240", None)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def _fake_hub_file(cache: Path, repo: str, filename: str) -> Path:
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("abc123")
    path = folder / "snapshots" / "abc123" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return path


def test_tag_resolves_from_local_caches_with_e32_fix(tmp_path):
    # open_clip maps this tag to the e31 hub repo; a cached e31 file must not stand in for e32.
    _fake_hub_file(tmp_path, "timm/vit_base_patch16_plus_clip_240.laion400m_e31", "open_clip_pytorch_model.bin")
    with pytest.raises(ModelError):
        resolve_weights("ViT-B-16-plus-240", "laion400m_e32", cache_dir=str(tmp_path))
    url_file = tmp_path / "vit_b_16_plus_240-laion400m_e32-699c4b84.pt"
    url_file.write_bytes(b"weights")
    assert resolve_weights("ViT-B-16-plus-240", "laion400m_e32", cache_dir=str(tmp_path))[0] == url_file
    hub = _fake_hub_file(tmp_path, "timm/vit_base_patch16_plus_clip_240.laion400m_e32", "open_clip_pytorch_model.bin")
    found, cfg = resolve_weights("ViT-B-16-plus-240", "laion400m_e32", cache_dir=str(tmp_path))
    assert found == hub and cfg["resize_mode"] == "shortest"
