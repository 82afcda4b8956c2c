"""ObjectNet's mapping files -> its 113 ImageNet-overlapping classes, each a group of ImageNet class indices.

Required (both ship in `objectnet-1.0/mappings/`): `folder_to_objectnet_label.json` (image folder -> ObjectNet
label) and `objectnet_to_imagenet_1k.json` (ObjectNet label -> ImageNet class names joined by '; '). The names
are turned into class indices with `pytorch_to_imagenet_2012_id.json` + `imagenet_to_label_2012_v2` when both
exist (what the reference evaluation code does), else by matching the WordNet lemma names of the 1000 classes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from clipsim.data import imagenet
from clipsim.errors import DataError

FOLDER_FILE = "folder_to_objectnet_label.json"
IMAGENET_FILE = "objectnet_to_imagenet_1k.json"
PYTORCH_FILE = "pytorch_to_imagenet_2012_id.json"
NAMES_FILE = "imagenet_to_label_2012_v2"
CROP_BORDER = 1  # ObjectNet images carry a 1 px frame that is customarily cut off before evaluation


@dataclass
class ObjectNetMapping:
    """ObjectNet's classes: image folder -> ObjectNet label (all classes) and label -> ImageNet indices (113).

    Attributes:
        folder_label: image folder name -> ObjectNet label, for every ObjectNet class.
        groups: ObjectNet label -> its ImageNet class indices, in file order, for the ImageNet-overlapping classes.
        resolved_by: which files turned ImageNet names into class indices.
        notes: warnings about the mapping files.
    """

    folder_label: dict[str, str]
    groups: dict[str, list[int]]
    resolved_by: str
    notes: list[str] = field(default_factory=list)

    def label_map(self) -> dict[str, int]:
        """Image folder -> label (the first ImageNet index of its group) for the ImageNet-overlapping classes."""
        return {f: self.groups[lab][0] for f, lab in self.folder_label.items() if lab in self.groups}

    def folder_of(self) -> dict[str, str]:
        """ObjectNet label -> image folder name."""
        return {lab: f for f, lab in self.folder_label.items()}

    def class_subset(self) -> list[int]:
        """Sorted ImageNet class indices that ObjectNet is scored over (the union of the groups)."""
        return sorted(i for group in self.groups.values() for i in group)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read ObjectNet mapping {path} ({err}); restore it from the ObjectNet "
                        "download") from err
    if not isinstance(data, dict):
        raise DataError(f"ObjectNet mapping {path} holds a {type(data).__name__}, expected a JSON object")
    return data


def _name_index(folder: Path, notes: list[str]) -> tuple[dict[str, int], str]:
    """ImageNet class name -> class index, and a description of the files used."""
    pytorch, names = folder / PYTORCH_FILE, folder / NAMES_FILE
    if pytorch.is_file() and names.is_file():
        by_2012 = {int(v): int(k) for k, v in _read_json(pytorch).items()}
        lines = [line.strip() for line in names.read_text().splitlines() if line.strip()]
        if len(lines) != imagenet.NUM_CLASSES or sorted(by_2012) != list(range(imagenet.NUM_CLASSES)):
            raise DataError(f"{names} ({len(lines)} names) and {pytorch} ({len(by_2012)} ids) must both cover "
                            "the 1000 ImageNet classes; restore them from the ObjectNet download")
        return {name: by_2012[i] for i, name in enumerate(lines)}, f"{PYTORCH_FILE} + {NAMES_FILE}"
    if pytorch.is_file() or names.is_file():
        notes.append(f"{folder} holds only one of {PYTORCH_FILE} and {NAMES_FILE}; ImageNet names were matched "
                     "with timm's WordNet lemma names instead")
    lemmas = imagenet.lemmas()
    counts: dict[str, int] = {}
    for name in lemmas:
        counts[name] = counts.get(name, 0) + 1
    return {n: i for i, n in enumerate(lemmas) if counts[n] == 1}, "WordNet lemma names (timm)"


def read_mapping(folder: str | Path) -> ObjectNetMapping:
    """Read ObjectNet's mapping files from its `mappings/` folder.

    Args:
        folder: the `mappings/` folder of the ObjectNet download.

    Returns:
        The ObjectNetMapping.

    Raises:
        DataError: a required file is missing or malformed, an ImageNet name cannot be resolved, or two
            ObjectNet classes share an ImageNet class.
    """
    folder = Path(folder)
    missing = [n for n in (FOLDER_FILE, IMAGENET_FILE) if not (folder / n).is_file()]
    if missing:
        raise DataError(f"ObjectNet mappings folder {folder} lacks {', '.join(missing)}; copy the `mappings/` folder "
                        "of the ObjectNet download (objectnet-1.0/mappings) next to `images/`")
    folder_label = {str(k): str(v) for k, v in _read_json(folder / FOLDER_FILE).items()}
    notes: list[str] = []
    index, resolved_by = _name_index(folder, notes)
    groups, owner = {}, {}
    for label, joined in _read_json(folder / IMAGENET_FILE).items():
        ids = []
        for name in (n.strip() for n in str(joined).split(";") if n.strip()):
            if name not in index:
                raise DataError(f"{folder / IMAGENET_FILE}: ImageNet class {name!r} (of ObjectNet class {label!r}) "
                                f"is not found by {resolved_by}; add {PYTORCH_FILE} and {NAMES_FILE} from the "
                                "ObjectNet download to that folder")
            if index[name] in owner:
                raise DataError(f"{folder / IMAGENET_FILE}: ImageNet class {name!r} belongs to ObjectNet classes "
                                f"{owner[index[name]]!r} and {label!r}; each ImageNet class may map to one only")
            owner[index[name]] = label
            ids.append(index[name])
        groups[str(label)] = ids
    unknown = sorted(set(groups) - set(folder_label.values()))
    if unknown:
        notes.append(f"{len(unknown)} ObjectNet classes of {IMAGENET_FILE} have no folder in {FOLDER_FILE}: "
                     f"{', '.join(unknown[:5])}")
    return ObjectNetMapping(folder_label, groups, resolved_by, notes)
