"""Image folders listed as records: `root/<class>/.../<image>` or flat, every directory read at most once.

Directory symlinks are followed (class folders linked in from other disks are common), but a directory reached a
second time, through a loop (`aloop -> .`, `up -> ..`) or a second link to the same folder, is skipped and named
in `notes` and the log: it would list every image under it again and, as a class folder, shift the labels.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim.data.keys import check_listing
from clipsim.errors import DataError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
RECORD_COLUMNS = ["key", "caption", "label", "path", "offset", "size"]


def list_folder(root: str | Path, label_map: dict[str, int] | None = None,
                notes: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """List an image folder: `root/<class>/.../<image>` (label = index of the sorted class folder) or flat.

    Images directly in `root` get label -1. Keys are paths relative to root, without extension. With a
    `label_map`, only the class folders it names are listed, each with its mapped label (benchmarks whose
    labels are ImageNet class indices); other folders and images directly in root are left out.

    Args:
        root: the folder.
        label_map: class folder -> label, or None (sorted class folders get 0, 1, ...).
        notes: a list that receives one line per directory left out (loops, second links to a folder,
            unreadable folders); they are logged as warnings too. Entries named like images are always listed,
            even when they are not readable files (a broken link, a device): embedding counts them as losses.

    Returns:
        (records with RECORD_COLUMNS sorted by key, class folder names: in label order, or sorted with a label_map).

    Raises:
        DataError: the folder is missing, holds no images, or two images share a key (`a.jpg` and `a.png`).
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; fix the dataset source (expected root/<class>/<image>)")
    walk = _Walk(root)
    classes = [c for c in walk.subfolders(root) if label_map is None or c in label_map]
    classes = [c for c in classes if walk.enter(root / c)]
    labels = {c: int(label_map[c]) for c in classes} if label_map is not None else {c: i for i, c in enumerate(classes)}
    rels = [] if label_map is not None else [(rel, -1) for rel in walk.images(root, recursive=False)]
    for name in classes:
        rels.extend((f"{name}/{rel}", labels[name]) for rel in walk.images(root / name, recursive=True))
    for note in walk.notes:
        log.warning("listing %s: %s", root, note)
    if notes is not None:
        notes.extend(walk.notes)
    if not rels:
        raise DataError(
            f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}, any case); expected "
            "root/<class>/<image> or images directly in root: check the path"
            + (f" (only the {len(label_map)} class folders of the label map are read)" if label_map else "")
        )
    rel_paths = [r for r, _ in rels]
    listing = pd.DataFrame({
        "key": [os.path.splitext(r)[0] for r in rel_paths],
        "path": [str(root / r) for r in rel_paths],
        "offset": np.full(len(rels), -1, dtype=np.int64),
        "size": np.full(len(rels), -1, dtype=np.int64),
        "caption": pd.Series([None] * len(rels), dtype="str"),
        "label": np.array([lab for _, lab in rels], dtype=np.int64),
    })
    check_listing(listing, str(root))
    return listing.sort_values("key", kind="stable", ignore_index=True)[RECORD_COLUMNS], classes


class _Walk:
    """One listing: the directories entered so far (by device and inode) and what was left out."""

    def __init__(self, root: Path):
        self.root = root
        self.seen = {_identity(p) for p in (root, *root.parents)}  # root and its ancestors: links to them loop
        self.notes: list[str] = []

    def subfolders(self, folder: Path) -> list[str]:
        """Non-hidden sub-folder names (links to folders included), sorted."""
        return sorted(e.name for e in self._entries(folder) if not e.name.startswith(".") and e.is_dir())

    def enter(self, folder: Path) -> bool:
        """True the first time a directory is reached; False (with a note) when it was reached before."""
        ident = _identity(folder)
        if ident in self.seen:
            target = os.path.realpath(folder)
            self.notes.append(f"{folder} is a link to {target}, which is already listed (a symlink loop or a second "
                              "link to the same folder); skipped so no image is listed twice")
            return False
        self.seen.add(ident)
        return True

    def images(self, folder: Path, recursive: bool) -> list[str]:
        """Image files under `folder` as sorted posix paths relative to it; hidden files and folders skipped."""
        found, stack = [], [("", folder)]
        while stack:
            prefix, current = stack.pop()
            for entry in self._entries(current):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if recursive and self.enter(Path(entry.path)):
                        stack.append((f"{prefix}{entry.name}/", Path(entry.path)))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    found.append(prefix + entry.name)  # broken links and devices too: unreadable, counted at embed
        return sorted(found)

    def _entries(self, folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as it:
                return list(it)
        except OSError as err:
            self.notes.append(f"cannot read folder {folder} ({err.strerror}); skipped")
            return []


def _identity(path: Path) -> tuple[int, int]:
    """(device, inode) of what `path` points to (links followed)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino
