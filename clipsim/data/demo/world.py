"""Plan and write the demo's datasets: a web set (webdataset tars) with planted near-duplicates of test
images and planted duplicate groups inside itself (exact copies, re-encodings, small crops), a curated
photo-only set and five test sets (image folders), plus the ground truth of both plantings.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from clipsim import fileio
from clipsim.data.demo import captions
from clipsim.data.demo.draw import CLASSES, Scene, jitter_scene, perturb, render, sample_scene

TEST_SETS = {"val": "photo", "v2": "photo", "sketch": "sketch", "rendition": "rendition", "hard": "hard"}
WEB_DOMAIN_MIX = {"photo": 0.4, "sketch": 0.2, "rendition": 0.2, "hard": 0.2}  # LAION holds every style
TRAIN_PX = 32  # the demo model's input side
COPY_KINDS = ("exact", "reencode", "crop")  # how a planted web duplicate is made from its original
GROUP_SIZES = (2, 3, 4)  # members per planted web duplicate group, the original included


@dataclass(frozen=True)
class DemoSize:
    """How big the demo world is and how long its similarity model trains."""

    web: int
    curated: int
    test: int  # images per test set
    planted_share: float  # share of each test set with a near-duplicate planted in web
    web_shard: int  # samples per web tar shard
    train_steps: int
    batch: int
    dup_groups: int = 0  # planted within-web duplicate groups; their copies are appended after the `web` samples

    @property
    def web_total(self) -> int:
        """Web samples in all: `web` plus the planted copies (an upper bound: a group holds 1 to 3 copies)."""
        return self.web + self.dup_groups * (max(GROUP_SIZES) - 1)


PRESETS = {
    "full": DemoSize(web=24_000, curated=6_000, test=480, planted_share=0.1, web_shard=6_000, train_steps=240, batch=256,
                     dup_groups=240),
    "small": DemoSize(web=3_000, curated=960, test=96, planted_share=0.125, web_shard=1_000, train_steps=60, batch=128,
                      dup_groups=40),
}


@dataclass(frozen=True)
class Item:
    """One image to draw: where it goes, its scene, and whether it is a perturbed near-duplicate."""

    dataset: str
    key: str
    scene: Scene
    caption: str
    near_dup_of: str | None = None  # "<test set>/<test key>"
    post_seed: int = 0
    copy_of: str | None = None  # web key of the original of a planted web duplicate
    copy_kind: str | None = None  # one of COPY_KINDS


def plan(seed: int, size: DemoSize) -> list[Item]:
    """Every image of the demo world, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    items: list[Item] = []
    n_cls = len(CLASSES)
    for name, domain in TEST_SETS.items():
        for i in range(size.test):
            cls = i % n_cls
            scene = sample_scene(rng, cls, domain, shifted=name == "v2")
            items.append(Item(name, f"{CLASSES[cls]}/{name}_{i:05d}", scene, ""))
    for i in range(size.curated):
        cls = i % n_cls
        items.append(Item("curated", f"{CLASSES[cls]}/curated_{i:05d}", sample_scene(rng, cls, "photo"), ""))
    tests = [it for it in items if it.dataset in TEST_SETS]
    planted = _pick_planted(rng, tests, size)
    slots = rng.choice(size.web, size=len(planted), replace=False)
    dup_at = {int(s): t for s, t in zip(slots, planted)}
    domains = list(WEB_DOMAIN_MIX)
    probs = np.array(list(WEB_DOMAIN_MIX.values()))
    for i in range(size.web):
        key = f"{i // size.web_shard:05d}{i % size.web_shard:04d}"
        if i in dup_at:
            t = dup_at[i]
            scene = jitter_scene(t.scene, rng)
            items.append(Item("web", key, scene, captions.web_caption(rng, scene), f"{t.dataset}/{t.key}",
                              int(rng.integers(0, 2**31 - 1))))
        else:
            scene = sample_scene(rng, int(rng.integers(0, n_cls)), str(rng.choice(domains, p=probs)))
            items.append(Item("web", key, scene, captions.web_caption(rng, scene)))
    return items + _plan_copies(rng, items, size)


def _plan_copies(rng: np.random.Generator, items: list[Item], size: DemoSize) -> list[Item]:
    """Planted within-web duplicate groups: originals drawn from the plain web samples, 1-3 copies each, appended
    after them (drawn last from the same generator, so every earlier item stays as it was)."""
    plain = [it for it in items if it.dataset == "web" and it.near_dup_of is None]
    originals = [plain[j] for j in sorted(rng.choice(len(plain), size=min(size.dup_groups, len(plain)), replace=False))]
    copies, i = [], size.web
    for original in originals:
        for _ in range(int(rng.choice(GROUP_SIZES)) - 1):
            kind = str(rng.choice(COPY_KINDS))
            caption = original.caption if kind == "exact" else captions.web_caption(rng, original.scene)
            key = f"{i // size.web_shard:05d}{i % size.web_shard:04d}"
            copies.append(Item("web", key, original.scene, caption, post_seed=int(rng.integers(0, 2**31 - 1)),
                               copy_of=original.key, copy_kind=kind))
            i += 1
    return copies


def _pick_planted(rng: np.random.Generator, tests: list[Item], size: DemoSize) -> list[Item]:
    picked = []
    for name in TEST_SETS:
        members = [t for t in tests if t.dataset == name]
        n = round(size.planted_share * len(members))
        picked += [members[j] for j in sorted(rng.choice(len(members), size=n, replace=False))]
    return picked


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _copy(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """A planted web duplicate of the original's JPEG bytes: the same bytes, re-encoded at another quality (60-89),
    or a 1 px strip cut from one side and the rest scaled back to full size (the demo model sees 32 px, where a
    1 px crop of the 64 px image is already a half-pixel shift)."""
    if kind == "exact":
        return data
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if kind == "reencode":
        return _jpeg(img, int(rng.integers(60, 90)))
    box = [0, 0, img.size[0], img.size[1]]
    side = int(rng.integers(0, 4))
    box[side] += 1 if side < 2 else -1
    return _jpeg(img.crop(tuple(box)).resize(img.size, Image.BILINEAR), 90)


def _draw(item: Item) -> tuple[bytes, np.ndarray]:
    """Render one item: (JPEG bytes, TRAIN_PX x TRAIN_PX x 3 uint8 thumbnail for model training)."""
    img = render(item.scene)
    if item.near_dup_of is not None:
        img = perturb(img, np.random.default_rng(item.post_seed))
    data = _jpeg(img, 90)
    if item.copy_of is not None:
        data = _copy(data, item.copy_kind, np.random.default_rng(item.post_seed))
    small = Image.open(io.BytesIO(data)).convert("RGB").resize((TRAIN_PX, TRAIN_PX), Image.BICUBIC)
    return data, np.asarray(small, dtype=np.uint8)


def draw_all(items: list[Item], workers: int, progress=None) -> tuple[list[bytes], np.ndarray]:
    """Render items in `workers` processes, keeping order: (JPEG bytes per item, (n, 32, 32, 3) uint8)."""
    jpgs, smalls = [], []
    chunk = 256
    with get_context("fork").Pool(max(1, workers)) as pool:
        for n, (data, small) in enumerate(pool.imap(_draw, items, chunksize=chunk), 1):
            jpgs.append(data)
            smalls.append(small)
            if progress and n % 1000 == 0:
                progress(n, len(items), "draw demo images")
    return jpgs, np.stack(smalls) if smalls else np.zeros((0, TRAIN_PX, TRAIN_PX, 3), np.uint8)


def write_folder(root: Path, items: list[Item], jpgs: list[bytes]) -> None:
    """Write an ImageNet-style folder: root/<class>/<name>.jpg (keys are '<class>/<name>')."""
    for item, data in zip(items, jpgs):
        fileio.write_bytes(root / f"{item.key}.jpg", data)


def write_web_shards(root: Path, items: list[Item], jpgs: list[bytes], shard_size: int) -> None:
    """Write img2dataset-style tar shards root/<00000>.tar holding <key>.jpg, .txt (caption), .cls (label), .json."""
    for s, lo in enumerate(range(0, len(items), shard_size)):

        def _write(tmp: Path, lo=lo) -> None:
            with tarfile.open(tmp, "w") as tar:
                for item, data in zip(items[lo : lo + shard_size], jpgs[lo : lo + shard_size]):
                    meta = {"key": item.key, "caption": item.caption}
                    members = (("jpg", data), ("txt", item.caption.encode()), ("cls", str(item.scene.cls).encode()),
                               ("json", json.dumps(meta).encode()))
                    for ext, payload in members:
                        info = tarfile.TarInfo(f"{item.key}.{ext}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))

        fileio.atomic_write(root / f"{s:05d}.tar", _write)


def web_truth(items: list[Item]) -> pd.DataFrame:
    """What the demo knows of every web sample: key, domain, true class, and the test image it duplicates."""
    web = [it for it in items if it.dataset == "web"]
    return pd.DataFrame({"key": [it.key for it in web], "domain": [it.scene.domain for it in web],
                         "label": np.array([it.scene.cls for it in web], np.int64),
                         "near_dup_of": [it.near_dup_of for it in web]})


def web_duplicates(items: list[Item]) -> pd.DataFrame:
    """Ground truth of the planted web duplicate groups: key, group (int), kind ('original' or a COPY_KINDS entry);
    one row per member, originals first in each group."""
    copies = [it for it in items if it.copy_of is not None]
    groups = {key: g for g, key in enumerate(dict.fromkeys(it.copy_of for it in copies))}
    rows = [{"key": key, "group": g, "kind": "original"} for key, g in groups.items()]
    rows += [{"key": it.key, "group": groups[it.copy_of], "kind": it.copy_kind} for it in copies]
    frame = pd.DataFrame(rows, columns=["key", "group", "kind"])
    return frame.sort_values(["group", "kind"], key=lambda c: c if c.name == "group" else c != "original",
                             kind="stable").reset_index(drop=True)


def planted_table(items: list[Item]) -> pd.DataFrame:
    """Ground truth: test_dataset, test_key, train_dataset, train_key of every planted near-duplicate."""
    rows = []
    for it in items:
        if it.near_dup_of is not None:
            test, key = it.near_dup_of.split("/", 1)
            rows.append({"test_dataset": test, "test_key": key, "train_dataset": it.dataset, "train_key": it.key})
    return pd.DataFrame(rows, columns=["test_dataset", "test_key", "train_dataset", "train_key"])
