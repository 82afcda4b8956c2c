"""Benchmark kinds as released and their on-disk layouts: where the images are and how folders become labels.

ImageNet-family folders are named by wnid (ImageNet-V2's release: 0..999, the class index); ObjectNet's class
folders map to ImageNet classes through its mapping files. Labels are always ImageNet class indices (0..999).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clipsim.data import imagenet
from clipsim.data.objectnet import CROP_BORDER, read_mapping
from clipsim.data.sources import IMAGE_SUFFIXES
from clipsim.errors import DataError

LISTED = 12  # names shown in one message before "(+N more)"


@dataclass(frozen=True)
class BenchmarkKind:
    """A benchmark as released: its role in a study, standard image count and number of scored classes."""

    name: str
    title: str
    role: str
    images: int
    classes: int


KINDS = {k.name: k for k in (
    BenchmarkKind("imagenet-train", "ImageNet train", "train", 1_281_167, 1000),  # the reference set
    BenchmarkKind("imagenet-val", "ImageNet val", "test", 50_000, 1000),
    BenchmarkKind("imagenet-v2", "ImageNet-V2", "test", 10_000, 1000),
    BenchmarkKind("imagenet-sketch", "ImageNet-Sketch", "test", 50_889, 1000),
    BenchmarkKind("imagenet-r", "ImageNet-R", "test", 30_000, 200),
    BenchmarkKind("imagenet-a", "ImageNet-A", "test", 7_500, 200),
    BenchmarkKind("objectnet", "ObjectNet", "test", 18_574, 113),  # its ImageNet-overlapping classes only
)}


@dataclass
class Layout:
    """Where a benchmark's images are and how its folders become labels."""

    image_root: Path
    label_map: dict[str, int]  # present class folder -> ImageNet class index
    expected: list[str]  # class folders the release has
    extra: dict  # class_subset, and for ObjectNet crop_border and class groups
    ignored: set[str] = field(default_factory=set)  # known folders outside the benchmark (ObjectNet)
    notes: list[str] = field(default_factory=list)


def benchmark_kind(kind: str) -> BenchmarkKind:
    """The BenchmarkKind named `kind`.

    Raises:
        DataError: unknown kind (the message lists the known ones).
    """
    if kind not in KINDS:
        raise DataError(f"benchmark kind {kind!r} is not one of {', '.join(KINDS)}")
    return KINDS[kind]


def listed(names: list[str]) -> str:
    """The first LISTED names joined by commas, then '(+N more)'."""
    more = f" (+{len(names) - LISTED} more)" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def subfolders(folder: Path) -> list[str]:
    """Names of the non-hidden sub-folders of `folder`, sorted."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _class_folders(kind: str, names: list[str]) -> dict[str, int]:
    """Folder -> ImageNet index for the folders that name a class: wnids, or 0..999 for ImageNet-V2's release."""
    index = imagenet.wnid_index()
    found = {n: index[n] for n in names if n in index}
    if kind == "imagenet-v2" and not found:
        found = {n: int(n) for n in names if n.isdigit() and str(int(n)) == n and int(n) < imagenet.NUM_CLASSES}
    return found


def _layout_problem(kind: str, root: Path, names: list[str]) -> str:
    """Why `root` holds no class folders, and the fix."""
    title = KINDS[kind].title
    flat = sum(1 for e in os.scandir(root) if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    if flat:
        return (f"{title} at {root} holds {flat:,} images directly in the folder (the flat ILSVRC2012 layout), but "
                "each image must sit in a sub-folder named for its class wnid: put ILSVRC2012_img_val.tar and "
                "ILSVRC2012_devkit_t12.tar.gz in one folder F and run `python -c \"import torchvision; "
                "torchvision.datasets.ImageNet('F', split='val')\"` (it sorts the images into F/val/<wnid>/ using "
                "the devkit), or use the widely used valprep.sh script, then register F/val")
    for sub in names[:50]:
        if _class_folders(kind, subfolders(root / sub)):
            return f"{title} root {root} holds no class folders, but {root / sub} does: use --root {root / sub}"
    expected = "folders 0..999 or wnid folders" if kind == "imagenet-v2" else "wnid folders such as n01440764/"
    return (f"{title} root {root} holds no ImageNet class folders (expected {expected} holding the images; found "
            f"{listed(names) or 'no folders'}); point --root at the folder that holds the class folders")


def _imagenet_layout(kind: str, root: Path) -> Layout:
    names = subfolders(root)
    label_map = _class_folders(kind, names)
    if not label_map:
        raise DataError(_layout_problem(kind, root, names))
    extra, notes = {"class_subset": None}, []
    if all(n.isdigit() for n in label_map):
        expected = [str(i) for i in range(imagenet.NUM_CLASSES)]
    elif kind in imagenet.SUBSETS:
        expected = list(imagenet.subset_wnids(kind))
        odd = sorted(set(label_map) - set(expected))
        if odd:
            notes.append(f"{len(odd)} class folders are not in the standard {KINDS[kind].title} list but are kept "
                         f"(and scored over): {listed(odd)}")
        extra["class_subset"] = sorted(set(label_map.values()))
    else:
        expected = list(imagenet.wnids())
    return Layout(root, label_map, expected, extra, notes=notes)


def _objectnet_layout(root: Path) -> Layout:
    if (root / "images").is_dir():
        image_root, mappings = root / "images", root / "mappings"
    elif (root.parent / "mappings").is_dir():
        image_root, mappings = root, root.parent / "mappings"
    else:
        raise DataError(f"ObjectNet root {root} holds no `images/` folder; point --root at the objectnet-1.0 folder "
                        "of the download (it holds images/ and mappings/)")
    mapping = read_mapping(mappings)
    names = set(subfolders(image_root))
    label_map = {f: i for f, i in mapping.label_map().items() if f in names}
    if not label_map:
        raise DataError(f"none of the {len(mapping.groups)} ImageNet-overlapping ObjectNet classes of "
                        f"{mappings} has a folder in {image_root} (found {listed(sorted(names)) or 'no folders'}); "
                        "point --root at the objectnet-1.0 folder of the download")
    folder_of = mapping.folder_of()
    order = sorted(mapping.groups, key=lambda lab: mapping.groups[lab][0])
    extra = {"class_subset": mapping.class_subset(), "crop_border": CROP_BORDER,
             "class_groups": [mapping.groups[lab] for lab in order], "group_names": order,
             "mapping_files": mapping.resolved_by}
    expected = sorted(folder_of[lab] for lab in mapping.groups if lab in folder_of)
    return Layout(image_root, label_map, expected, extra, set(mapping.folder_label), list(mapping.notes))


def benchmark_layout(kind: str, root: str | Path) -> Layout:
    """Find a benchmark's image folder and class folders.

    Raises:
        DataError: a wrong layout (names the folder and the fix) or unreadable ObjectNet mappings.
    """
    spec, root = benchmark_kind(kind), Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"{spec.title} root {root} does not exist or is not a folder; check --root")
    return _objectnet_layout(root) if kind == "objectnet" else _imagenet_layout(kind, root)
