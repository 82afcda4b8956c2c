"""A corpus of bad inputs for sources and embedding folders, each run through the CLI (`clipsim.cli.main`).

Every case ends in one of two ways. A clear error: exit code 2, no traceback, a message naming the file or value,
the workspace byte-identical afterwards and `status` still working. Or the right result: exit code 0 with the
numbers planted in the input (what was lost is counted and listed, never dropped silently) and the earlier
artifacts byte-identical. `TALLY` counts the outcomes; run with `-s` to print them.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipsim import Workspace, store
from clipsim.cli import main
from clipsim.data.imageio import MAX_IMAGE_BYTES, read_image
from clipsim.embed import embed_dataset
from clipsim.errors import ClipsimError
from tests.conftest import draw_image
from tests.helpers import unit16

pytestmark = pytest.mark.usefixtures("one_thread")
TALLY: Counter = Counter()
RUN = ["--device", "cpu", "--workers", "0", "--batch-size", "4"]


@pytest.fixture(scope="module", autouse=True)
def _print_tally():
    yield
    print(f"\nbad-input corpus: {sum(TALLY.values())} cases: " + ", ".join(f"{v} {k}" for k, v in sorted(TALLY.items())))


# ----- harness -------------------------------------------------------------------------------------------
def files(root: Path) -> dict[str, bytes]:
    """Every file of a workspace (the job database aside) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("jobs.sqlite")}


def cli(capsys, *argv) -> tuple[int, str]:
    """Run the CLI (an exception escaping `main` is a traceback for the user and fails the test)."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    return rc, text


def expect_error(capsys, root: Path, argv: list, *needles: str) -> str:
    """A clear error: exit 2, the needles in the message, nothing in the workspace changed, status still works."""
    before = files(root)
    rc, text = cli(capsys, *argv)
    assert rc == 2, text
    for needle in needles:
        assert needle in text, (needle, text)
    assert files(root) == before, "the workspace changed"
    assert cli(capsys, "status", "--workspace", root)[0] == 0
    TALLY["clear errors"] += 1
    return text


def expect_result(capsys, root: Path, argv: list, keep: list[str]) -> str:
    """The right result: exit 0 and the folders in `keep` (earlier artifacts) byte-identical."""
    before = {k: v for k, v in files(root).items() if k.startswith(tuple(keep))}
    rc, text = cli(capsys, *argv)
    assert rc == 0, text
    assert {k: v for k, v in files(root).items() if k.startswith(tuple(keep))} == before
    assert cli(capsys, "status", "--workspace", root)[0] == 0
    TALLY["right results"] += 1
    return text


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    draw_image(seed, size=(24, 20)).save(buf, format="JPEG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def samples(keys: list[str], seed: int = 0) -> list[tuple[str, bytes]]:
    return [m for i, k in enumerate(keys) for m in ((f"{k}.jpg", jpeg(seed + i)), (f"{k}.txt", f"caption {k}".encode()))]


# ----- a workspace with two embedded, searched folders ---------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_config, tiny_checkpoint) -> Path:
    top = tmp_path_factory.mktemp("bad")
    for name, n in (("val", 4), ("web", 6)):
        for i in range(n):
            (top / "src" / name / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            draw_image(100 * len(name) + i, size=(24, 20)).save(top / "src" / name / f"c{i % 2}" / f"{i}.png")
    root = top / "ws"
    for name, role in (("val", "test"), ("web", "train")):
        assert main(["register", "--workspace", str(root), "--name", name, "--role", role, "--kind", "folder",
                     "--source", str(top / "src" / name)]) == 0
    assert main(["embed", "--workspace", str(root), "--model", str(tiny_model_config), "--pretrained",
                 str(tiny_checkpoint), *RUN]) == 0
    assert main(["search", "--workspace", str(root), "--device", "cpu", "--k", "3"]) == 0
    return root


@pytest.fixture
def ws(base, tmp_path) -> Path:
    """A private copy of the base workspace (modification times kept: its search stays fresh)."""
    shutil.copytree(base, tmp_path / "ws")
    return tmp_path / "ws"


KEEP = ["embeddings/val", "embeddings/web", "search", "clipsim.json"]


@pytest.fixture
def embed(capsys, ws, tiny_model_config, tiny_checkpoint):
    """register(name, kind, source) then embed it: the right result expected; returns the CLI output."""
    def run(name: str, kind: str, source: Path, role: str = "train") -> str:
        assert cli(capsys, "register", "--workspace", ws, "--name", name, "--role", role, "--kind", kind,
                   "--source", source)[0] == 0
        return expect_result(capsys, ws, ["embed", "--workspace", ws, "--datasets", name, "--model",
                                          tiny_model_config, "--pretrained", tiny_checkpoint, *RUN], KEEP)
    return run


def embed_fails(capsys, ws, cfg, ckpt, name: str, kind: str, source: Path, *needles: str) -> None:
    assert cli(capsys, "register", "--workspace", ws, "--name", name, "--role", "train", "--kind", kind,
               "--source", source)[0] == 0
    expect_error(capsys, ws, ["embed", "--workspace", ws, "--datasets", name, "--model", cfg, "--pretrained", ckpt,
                              *RUN], *needles)


def summary(ws: Path, name: str) -> dict:
    return json.loads((ws / "embeddings" / name / "summary.json").read_text())


def skipped(ws: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(ws / "embeddings" / name / "skipped.parquet")


# ----- webdataset tars -----------------------------------------------------------------------------------
def test_tar_cut_between_members_keeps_the_rest_and_lists_the_loss(embed, ws, tmp_path):
    whole = write_tar(tmp_path / "t" / "000.tar", samples(["a", "b", "c", "d"])).read_bytes()
    with tarfile.open(tmp_path / "t" / "000.tar") as tar:
        cut = next(m for m in tar.getmembers() if m.name == "c.jpg").offset  # the header of sample c
    (tmp_path / "t" / "000.tar").write_bytes(whole[:cut])
    write_tar(tmp_path / "t" / "001.tar", samples(["e", "f"], 10))
    text = embed("shards", "wds", tmp_path / "t")
    assert "2 losses" not in text and "complete with 1 losses" in text  # the cut stretch: one listed loss
    s = summary(ws, "shards")
    assert s["rows"] == 4 and s["shard_rows"] == {"0": 2, "1": 2} and not s["lossless"]
    assert s["losses"]["0"]["count"] == 1 and "cut short" in s["losses"]["0"]["first"][0]
    assert Workspace.open(ws).keys("shards").tolist() == ["a", "b", "e", "f"]


def test_tar_with_a_member_cut_mid_image_lists_that_sample(embed, ws, tmp_path):
    data = write_tar(tmp_path / "t" / "000.tar", samples(["a", "b"])).read_bytes()
    with tarfile.open(tmp_path / "t" / "000.tar") as tar:
        b = next(m for m in tar.getmembers() if m.name == "b.jpg")
    (tmp_path / "t" / "000.tar").write_bytes(data[: b.offset_data + b.size // 2])
    embed("cut", "wds", tmp_path / "t")
    lost = skipped(ws, "cut")
    assert lost["key"].tolist() == ["b"] and "'b.jpg' is truncated" in lost["error"].iloc[0]
    assert summary(ws, "cut")["rows"] == 1


def test_tar_with_a_damaged_header_lists_the_unreadable_rest(embed, ws, tmp_path):
    data = bytearray(write_tar(tmp_path / "t" / "000.tar", samples(["a", "b", "c"])).read_bytes())
    with tarfile.open(tmp_path / "t" / "000.tar") as tar:
        at = next(m for m in tar.getmembers() if m.name == "b.jpg").offset
    data[at : at + 512] = b"\x7f" * 512  # garbage where a header should be
    (tmp_path / "t" / "000.tar").write_bytes(bytes(data))
    embed("damaged", "wds", tmp_path / "t")
    assert summary(ws, "damaged")["rows"] == 1 and "damaged" in skipped(ws, "damaged")["error"].iloc[0]


def test_tar_member_with_a_blank_key_is_listed(embed, ws, tmp_path):
    write_tar(tmp_path / "t" / "000.tar", [(".jpg", jpeg(1)), *samples(["a"])])
    embed("blank", "wds", tmp_path / "t")
    lost = skipped(ws, "blank")
    assert "blank key" in lost["error"].iloc[0] and summary(ws, "blank")["rows"] == 1


def test_tar_with_a_corrupt_image_counts_it(embed, ws, tmp_path):
    write_tar(tmp_path / "t" / "000.tar", [("bad.jpg", b"\xff\xd8 not really a jpeg"), *samples(["a", "b"])])
    text = embed("corrupt", "wds", tmp_path / "t")
    assert "complete with 1 losses" in text and skipped(ws, "corrupt")["key"].tolist() == ["bad"]
    assert "does not decode" in skipped(ws, "corrupt")["error"].iloc[0] and summary(ws, "corrupt")["rows"] == 2


def test_gzipped_tar_is_refused(capsys, ws, tmp_path, tiny_model_config, tiny_checkpoint):
    plain = write_tar(tmp_path / "p.tar", samples(["a"]))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "000.tar").write_bytes(gzip.compress(plain.read_bytes()))
    embed_fails(capsys, ws, tiny_model_config, tiny_checkpoint, "gz", "wds", tmp_path / "t", "000.tar", "compressed")


def test_empty_tar_file_is_refused(capsys, ws, tmp_path, tiny_model_config, tiny_checkpoint):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "000.tar").write_bytes(b"")
    embed_fails(capsys, ws, tiny_model_config, tiny_checkpoint, "empty", "wds", tmp_path / "t", "000.tar")


def test_key_in_two_tars_is_refused_and_never_committed(capsys, ws, tmp_path, tiny_model_config, tiny_checkpoint):
    write_tar(tmp_path / "t" / "000.tar", samples(["a", "same"]))
    write_tar(tmp_path / "t" / "001.tar", samples(["same", "z"], 5))
    assert cli(capsys, "register", "--workspace", ws, "--name", "dup", "--role", "train", "--kind", "wds",
               "--source", tmp_path / "t")[0] == 0
    before = {k: v for k, v in files(ws).items() if k.startswith(tuple(KEEP))}
    rc, text = cli(capsys, "embed", "--workspace", ws, "--datasets", "dup", "--model", tiny_model_config,
                   "--pretrained", tiny_checkpoint, *RUN)
    assert rc == 2 and "key 'same' occurs in tar" in text and "000.tar" in text and "001.tar" in text
    assert {k: v for k, v in files(ws).items() if k.startswith(tuple(KEEP))} == before
    assert Workspace.open(ws).embedding_state("dup").label == "incomplete (2 of 2 shards)"  # never committed
    expect_error(capsys, ws, ["search", "--workspace", ws, "--train", "dup", "--tests", "val", "--device", "cpu"],
                 "incomplete (2 of 2 shards)", "clipsim embed")


def test_two_images_under_one_key_in_a_tar_are_refused(capsys, ws, tmp_path, tiny_model_config, tiny_checkpoint):
    write_tar(tmp_path / "t" / "000.tar", [("k.jpg", jpeg(0)), ("k.png", jpeg(1))])
    embed_fails(capsys, ws, tiny_model_config, tiny_checkpoint, "twice", "wds", tmp_path / "t", "two images", "'k'")


# ----- image folders -------------------------------------------------------------------------------------
def folder_of(tmp_path: Path, n: int = 4) -> Path:
    root = tmp_path / "imgs"
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        draw_image(500 + i, size=(24, 20)).save(root / f"c{i % 2}" / f"{i}.png")
    return root


def test_symlink_loop_adds_no_class_and_no_image_twice(embed, ws, tmp_path):
    root = folder_of(tmp_path)
    (root / "aloop").symlink_to(".")
    (root / "c0" / "up").symlink_to("..")
    embed("loop", "folder", root)
    reg = Workspace.open(ws)
    assert reg.dataset("loop").classes == ["c0", "c1"] and summary(ws, "loop")["rows"] == 4
    assert sorted(reg.keys("loop")) == ["c0/0", "c0/2", "c1/1", "c1/3"]
    assert any("aloop" in note for note in summary(ws, "loop")["source_notes"])


def test_two_images_with_one_key_are_refused_at_register(capsys, ws, tmp_path):
    root = folder_of(tmp_path)
    draw_image(9).save(root / "c0" / "0.jpg")  # c0/0.png and c0/0.jpg: key c0/0 twice
    expect_error(capsys, ws, ["register", "--workspace", ws, "--name", "d", "--role", "train", "--kind", "folder",
                              "--source", root], "key 'c0/0' occurs 2 times", "0.jpg")


def test_missing_folder_is_refused_at_register(capsys, ws, tmp_path):
    expect_error(capsys, ws, ["register", "--workspace", ws, "--name", "m", "--role", "train", "--kind", "folder",
                              "--source", tmp_path / "nowhere"], "nowhere", "does not exist")


def test_folder_without_images_is_refused(capsys, ws, tmp_path):
    (tmp_path / "e" / "cls").mkdir(parents=True)
    (tmp_path / "e" / "cls" / "notes.txt").write_text("x")
    expect_error(capsys, ws, ["register", "--workspace", ws, "--name", "e", "--role", "train", "--kind", "folder",
                              "--source", tmp_path / "e"], "holds no images")


def test_empty_image_file_is_skipped_and_named(embed, ws, tmp_path):
    root = folder_of(tmp_path)
    (root / "c1" / "empty.png").write_bytes(b"")
    embed("hole", "folder", root)
    assert skipped(ws, "hole")["key"].tolist() == ["c1/empty"] and summary(ws, "hole")["rows"] == 4


def test_image_link_to_dev_zero_is_skipped_without_reading(embed, ws, tmp_path):
    root = folder_of(tmp_path)
    (root / "c0" / "zero.jpg").symlink_to("/dev/zero")
    embed("zero", "folder", root)
    lost = skipped(ws, "zero")
    assert lost["key"].tolist() == ["c0/zero"] and "not a regular file" in lost["error"].iloc[0]


def test_fifo_named_like_an_image_is_skipped_without_hanging(embed, ws, tmp_path):
    root = folder_of(tmp_path)
    os.mkfifo(root / "c1" / "pipe.png")
    embed("fifo", "folder", root)
    assert "not a regular file" in skipped(ws, "fifo")["error"].iloc[0]


def test_image_larger_than_the_byte_cap_is_skipped(embed, ws, tmp_path):
    root = folder_of(tmp_path)
    with open(root / "c0" / "huge.png", "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: no disk used
    embed("huge", "folder", root)
    assert "more than the" in skipped(ws, "huge")["error"].iloc[0]


def test_decompression_bomb_is_skipped(embed, ws, tmp_path):
    root = folder_of(tmp_path)
    Image.new("1", (20_000, 20_000)).save(root / "c0" / "bomb.png")  # 400 Mpx: over PIL's limit, a few kB on disk
    embed("bomb", "folder", root)
    assert "DecompressionBombError" in skipped(ws, "bomb")["error"].iloc[0]


# ----- every PIL mode decodes to what it shows ---------------------------------------------------------------
def test_sixteen_bit_png_embeds_like_its_eight_bit_twin(embed, ws, tmp_path):
    root = tmp_path / "depth"
    root.mkdir()
    grey8 = np.tile(np.arange(0, 240, 10, dtype=np.uint8), (20, 1))
    Image.fromarray(grey8).save(root / "eight.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(root / "sixteen.png")  # 0..61,680: the same picture
    assert Image.open(root / "sixteen.png").mode == "I;16"
    embed("depth", "folder", root)
    vectors = Workspace.open(ws).embeddings("depth").all()
    assert np.array_equal(vectors[0], vectors[1])  # keys sorted: eight, sixteen


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "CMYK", "LA", "P", "1", "RGBA"])
def test_every_mode_decodes_to_what_it_shows(tmp_path, mode):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 5)).astype(np.uint8)
    alpha = np.where(np.arange(30).reshape(6, 5) % 3 == 0, 0, 255).astype(np.uint8)
    if mode in ("I;16", "I"):
        image, want = Image.fromarray(grey.astype(np.uint16 if mode == "I;16" else np.int32) * 257), grey
        fmt = "PNG" if mode == "I;16" else "TIFF"
    elif mode == "F":
        image, want, fmt = Image.fromarray(grey.astype(np.float32) / 255), grey, "TIFF"
    elif mode == "CMYK":
        cmyk = rng.integers(0, 256, (6, 5, 4)).astype(np.uint8)
        image, fmt = Image.fromarray(cmyk, "CMYK"), "TIFF"
        want = np.rint((255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255)
    elif mode == "LA":
        image, fmt = Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG"
        want = np.where(alpha == 0, 255, grey)  # transparent pixels over white
    elif mode == "P":
        image = Image.fromarray(grey).convert("P")
        image.info["transparency"] = int(np.asarray(image)[0, 0])
        fmt, want = "PNG", None
    elif mode == "1":
        image, want, fmt = Image.fromarray(grey > 127), np.where(grey > 127, 255, 0), "PNG"
    else:
        image, fmt = Image.fromarray(np.dstack([grey, grey, grey, alpha]), "RGBA"), "PNG"
        want = np.where(alpha == 0, 255, grey)
    path = tmp_path / f"img.{fmt.lower()}"
    image.save(path, format=fmt, **({"transparency": image.info["transparency"]} if mode == "P" else {}))
    assert Image.open(path).mode == mode
    got = np.asarray(read_image(path)).astype(int)
    assert got.shape == (6, 5, 3)
    if mode == "P":  # the pixels of the transparent palette entry are white, the others their grey
        index = np.asarray(Image.open(path))
        want = np.where(index == index[0, 0], 255, grey)
    want = np.broadcast_to(np.asarray(want)[..., None] if np.ndim(want) == 2 else want, got.shape)
    assert np.abs(got - want).max() <= 1, mode
    TALLY["right results"] += 1


# ----- tables --------------------------------------------------------------------------------------------
def table_of(tmp_path: Path, rows: dict) -> Path:
    path = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_table_with_a_blank_key_is_refused(capsys, ws, tmp_path, tiny_model_config, tiny_checkpoint):
    root = folder_of(tmp_path)
    table = table_of(tmp_path, {"path": [str(root / "c0" / "0.png"), str(root / "c1" / "1.png")], "key": ["a", ""]})
    embed_fails(capsys, ws, tiny_model_config, tiny_checkpoint, "tb", "table", table, "column `key` is empty", "table.csv")


def test_table_with_an_empty_path_is_refused(capsys, ws, tmp_path, tiny_model_config, tiny_checkpoint):
    root = folder_of(tmp_path)
    table = table_of(tmp_path, {"path": [str(root / "c0" / "0.png"), None]})
    embed_fails(capsys, ws, tiny_model_config, tiny_checkpoint, "tp", "table", table, "column `path` is empty")


def test_table_with_repeated_keys_names_them(capsys, ws, tmp_path, tiny_model_config, tiny_checkpoint):
    root = folder_of(tmp_path)
    table = table_of(tmp_path, {"path": [str(root / "c0" / f"{i}.png") for i in (0, 2)] * 2, "key": ["x", "y", "x", "y"]})
    embed_fails(capsys, ws, tiny_model_config, tiny_checkpoint, "tk", "table", table, "key 'x' occurs 2 times",
                "2 keys repeat", "'y'")


def test_table_source_that_is_a_device_is_refused(capsys, ws, tiny_model_config, tiny_checkpoint):
    embed_fails(capsys, ws, tiny_model_config, tiny_checkpoint, "dev", "table", Path("/dev/zero"), "/dev/zero",
                "not a regular file")


def test_empty_table_file_is_refused(capsys, ws, tmp_path, tiny_model_config, tiny_checkpoint):
    (tmp_path / "t.csv").write_bytes(b"")
    embed_fails(capsys, ws, tiny_model_config, tiny_checkpoint, "te", "table", tmp_path / "t.csv", "t.csv")


def test_table_row_pointing_at_dev_zero_is_skipped(embed, ws, tmp_path):
    root = folder_of(tmp_path)
    table = table_of(tmp_path, {"path": [str(root / "c0" / "0.png"), "/dev/zero"], "key": ["ok", "zero"]})
    embed("tz", "table", table)
    assert skipped(ws, "tz")["key"].tolist() == ["zero"] and summary(ws, "tz")["rows"] == 1


def test_classes_file_that_is_a_device_is_refused(capsys, ws, tmp_path):
    expect_error(capsys, ws, ["register", "--workspace", ws, "--name", "c", "--role", "test", "--kind", "folder",
                              "--source", folder_of(tmp_path), "--classes", "/dev/zero"], "/dev/zero",
                 "not a regular file")


# ----- embedding folders (imported clip-retrieval layout and the workspace's own) --------------------------
def imported(tmp_path: Path, shards: list[int], dim: int = 8, keys: list[list[str]] | None = None) -> Path:
    folder = tmp_path / "imp"
    rng = np.random.default_rng(1)
    start = 0
    for i, n in enumerate(shards):
        k = keys[i] if keys else [f"k{start + j}" for j in range(n)]
        store.write_shard(folder, i, unit16(rng.standard_normal((n, dim))), pd.DataFrame({"key": k}))
        start += n
    return folder


def register_imported(capsys, ws: Path, folder: Path, *needles: str, name: str = "imp") -> None:
    argv = ["register", "--workspace", ws, "--name", name, "--role", "train", "--kind", "embeddings", "--source", folder]
    if needles:
        expect_error(capsys, ws, argv, *needles)
    else:
        assert cli(capsys, *argv)[0] == 0


def test_imported_keys_repeated_across_shards_are_refused(capsys, ws, tmp_path):
    folder = imported(tmp_path, [3, 3], keys=[["a", "b", "c"], ["d", "b", "a"]])
    register_imported(capsys, ws, folder, "key 'a' occurs in shard 0 and in shard 1", "'b'")


def test_imported_keys_repeated_within_a_shard_are_refused(capsys, ws, tmp_path):
    register_imported(capsys, ws, imported(tmp_path, [3], keys=[["a", "b", "a"]]), "key 'a' occurs twice in shard 0")


def test_imported_shards_of_two_dimensions_are_refused(capsys, ws, tmp_path):
    folder = imported(tmp_path, [3])
    store.write_shard(folder, 1, unit16(np.ones((2, 6))), pd.DataFrame({"key": ["x", "y"]}))
    register_imported(capsys, ws, folder, "img_emb_1.npy has dimension 6")


def test_imported_metadata_row_count_mismatch_is_refused(capsys, ws, tmp_path):
    folder = imported(tmp_path, [3])
    pd.DataFrame({"key": ["a", "b"]}).to_parquet(store.meta_path(folder, 0))
    register_imported(capsys, ws, folder, "metadata_0.parquet has 2 rows", "img_emb_0.npy has 3")


def test_imported_shard_without_metadata_is_refused(capsys, ws, tmp_path):
    folder = imported(tmp_path, [3, 2])
    store.meta_path(folder, 1).unlink()
    register_imported(capsys, ws, folder, "img_emb_1.npy has no metadata file")


def test_imported_metadata_that_is_not_parquet_is_refused(capsys, ws, tmp_path):
    folder = imported(tmp_path, [3])
    store.meta_path(folder, 0).write_bytes(b"not parquet")
    register_imported(capsys, ws, folder, "metadata_0.parquet", "not valid parquet")


def test_imported_npy_of_the_wrong_shape_or_type_is_refused(capsys, ws, tmp_path):
    folder = imported(tmp_path, [3])
    np.save(store.emb_path(folder, 0), np.zeros(3, dtype=np.float16))
    register_imported(capsys, ws, folder, "img_emb_0.npy holds float16 of shape (3,)")
    np.save(store.emb_path(folder, 0), np.zeros((3, 8), dtype=np.int32))
    register_imported(capsys, ws, folder, "img_emb_0.npy holds int32")


def test_imported_npy_with_trailing_bytes_is_refused(capsys, ws, tmp_path):
    folder = imported(tmp_path, [3])
    with open(store.emb_path(folder, 0), "ab") as f:
        f.write(b"\0" * 7)
    register_imported(capsys, ws, folder, "img_emb_0.npy has 7 bytes too many")


def test_imported_npy_linked_to_dev_zero_is_refused(capsys, ws, tmp_path):
    folder = imported(tmp_path, [3])
    store.emb_path(folder, 0).unlink()
    store.emb_path(folder, 0).symlink_to("/dev/zero")
    register_imported(capsys, ws, folder, "img_emb_0.npy", "not a regular file")


def test_truncated_imported_shard_is_shown_then_refused_by_search(capsys, ws, tmp_path):
    folder = imported(tmp_path, [4, 4], dim=32)
    register_imported(capsys, ws, folder)
    path = store.emb_path(folder, 1)
    path.write_bytes(path.read_bytes()[:-40])  # cut after registering, as a failed copy would
    rc, text = cli(capsys, "status", "--workspace", ws)
    assert rc == 0 and "unreadable" in text and "truncated" in text  # not counted whole
    expect_error(capsys, ws, ["search", "--workspace", ws, "--train", "imp", "--tests", "val", "--device", "cpu"],
                 "img_emb_1.npy is truncated", "header declares 4 rows")


def test_truncated_shard_of_an_embedded_set_is_refused(capsys, ws):
    path = store.emb_path(ws / "embeddings" / "web", 0)
    path.write_bytes(path.read_bytes()[:-3])
    rc, text = cli(capsys, "status", "--workspace", ws)
    assert rc == 0 and "truncated" in text
    expect_error(capsys, ws, ["search", "--workspace", ws, "--train", "web", "--tests", "val", "--device", "cpu",
                              "--force"], "img_emb_0.npy is truncated", "clipsim embed")


def test_nan_rows_are_refused_by_search(capsys, ws, tmp_path):
    folder = imported(tmp_path, [4], dim=32)
    arr = np.load(store.emb_path(folder, 0))
    arr[2] = np.nan
    np.save(store.emb_path(folder, 0), arr)
    register_imported(capsys, ws, folder)
    expect_error(capsys, ws, ["search", "--workspace", ws, "--train", "imp", "--tests", "val", "--device", "cpu"],
                 "img_emb_0.npy: row 2 holds NaN")


def test_unnormalised_rows_are_refused_by_search(capsys, ws, tmp_path):
    folder = imported(tmp_path, [4], dim=32)
    np.save(store.emb_path(folder, 0), np.load(store.emb_path(folder, 0)) * np.float16(2))
    register_imported(capsys, ws, folder)
    expect_error(capsys, ws, ["search", "--workspace", ws, "--train", "imp", "--tests", "val", "--device", "cpu"],
                 "img_emb_0.npy: row 0 has L2 norm 2.0")


def test_corrupt_summary_is_shown_and_refused(capsys, ws):
    (ws / "embeddings" / "web" / "summary.json").write_text("{not json")
    rc, text = cli(capsys, "status", "--workspace", ws)
    assert rc == 0 and "unreadable" in text
    expect_error(capsys, ws, ["search", "--workspace", ws, "--train", "web", "--tests", "val", "--device", "cpu",
                              "--force"], "summary.json is not valid JSON")


def test_shard_added_after_commit_is_refused(capsys, ws):
    web = ws / "embeddings" / "web"
    shutil.copy(store.emb_path(web, 0), store.emb_path(web, 1))  # a shard copied in by hand
    shutil.copy(store.meta_path(web, 0), store.meta_path(web, 1))
    expect_error(capsys, ws, ["search", "--workspace", ws, "--train", "web", "--tests", "val", "--device", "cpu",
                              "--force"], "changed after its embedding run committed it")


# ----- interrupted embedding, and validation before anything is destroyed -------------------------------------
def interrupt(ws: Path) -> None:
    """The web set as an `embed --force` killed after 1 of 3 shards leaves it without staging: config, one shard."""
    root = ws / "embeddings" / "web"
    config = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**config, "shards": 3}))
    (root / "summary.json").unlink()


@pytest.mark.parametrize("argv", [
    ["search", "--train", "web", "--tests", "val", "--device", "cpu", "--force"],
    ["prune", "--rule", "threshold", "--tau", "0.5", "--name", "cut"],
    ["map", "--datasets", "val,web"],
    ["train", "--manifest", "full", "--web", "web"],
], ids=["search", "prune", "map", "train"])
def test_incomplete_set_is_shown_and_refused(capsys, ws, argv):
    interrupt(ws)
    rc, text = cli(capsys, "status", "--workspace", ws)
    assert rc == 0 and "incomplete (1 of 3 shards)" in text
    assert Workspace.open(ws).datasets().set_index("name").loc["web", "count"] == 0  # not counted as data
    expect_error(capsys, ws, [argv[0], "--workspace", ws, *argv[1:]], "incomplete (1 of 3 shards)",
                 f"python -m clipsim embed --workspace {ws} --datasets web")


@pytest.mark.parametrize("flag", [["--batch-size", "0"], ["--workers", "-1"]], ids=["batch0", "workers-1"])
def test_embed_force_with_a_bad_argument_keeps_the_embeddings(capsys, ws, flag, tiny_model_config, tiny_checkpoint):
    expect_error(capsys, ws, ["embed", "--workspace", ws, "--datasets", "web", "--force", "--model", tiny_model_config,
                              "--pretrained", tiny_checkpoint, "--device", "cpu", *flag], *flag)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"workers": -1}, {"precision": "fp8"}, {"shard_size": 0}],
                         ids=["batch0", "workers-1", "precision", "shard0"])
def test_embed_force_through_the_api_with_a_bad_argument_keeps_the_embeddings(ws, kwargs, tiny_model_config,
                                                                              tiny_checkpoint):
    before = files(ws)
    args = {"model": str(tiny_model_config), "pretrained": str(tiny_checkpoint), "device": "cpu", "force": True,
            **kwargs}
    with pytest.raises(ClipsimError, match=next(iter(kwargs))):
        embed_dataset(Workspace.open(ws), "web", **args)
    assert files(ws) == before
    TALLY["clear errors"] += 1


def test_search_force_with_a_bad_argument_keeps_the_result(capsys, ws):
    expect_error(capsys, ws, ["search", "--workspace", ws, "--train", "web", "--tests", "val", "--device", "cpu",
                              "--force", "--block-rows", "0"], "--block-rows", "0")


def test_report_with_an_image_path_at_dev_zero_is_bounded(capsys, ws, tmp_path):
    folder = imported(tmp_path, [4], dim=32)
    meta = pd.read_parquet(store.meta_path(folder, 0))
    meta["path"], meta["offset"], meta["size"] = "/dev/zero", -1, -1
    meta.to_parquet(store.meta_path(folder, 0))
    register_imported(capsys, ws, folder)
    assert cli(capsys, "search", "--workspace", ws, "--train", "imp", "--tests", "val", "--device", "cpu")[0] == 0
    out = tmp_path / "report.html"
    expect_result(capsys, ws, ["report", "--workspace", ws, "--out", out], KEEP)
    assert out.stat().st_size < 5_000_000  # thumbnails are placeholders; nothing read from the device
