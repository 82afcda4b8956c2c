"""The 1000 ImageNet classes offline: sorted wnids, class names and the ImageNet-R/-A 200-class subsets.

Wnids and subsets come from the lists timm installs (`timm/data/_info/`), class names for zero-shot prompts
from `open_clip.IMAGENET_CLASSNAMES` (OpenAI's cleaned names); both are in the standard sorted-wnid order,
so class index i is `wnids()[i]` everywhere (torchvision's ImageFolder order).
"""
from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from pathlib import Path

from clipsim.errors import DataError

NUM_CLASSES = 1000
SUBSETS = {"imagenet-r": "imagenet_r_synsets.txt", "imagenet-a": "imagenet_a_synsets.txt"}


def _timm_info(name: str) -> Path:
    """A file of timm's `data/_info` folder, found without importing timm (which imports torch)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the ImageNet class lists come from the `timm` package, which is not installed; "
                        "`pip install timm` (open_clip_torch[training] installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info" / name
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall timm (`pip install --force-reinstall timm`)")
    return path


def _lines(name: str) -> list[str]:
    return [line.strip() for line in _timm_info(name).read_text().splitlines() if line.strip()]


@lru_cache(maxsize=1)
def wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in sorted order: class index i is wnids()[i]."""
    found = tuple(_lines("imagenet_synsets.txt"))
    if len(found) != NUM_CLASSES or list(found) != sorted(found):
        raise DataError(f"{_timm_info('imagenet_synsets.txt')} does not hold 1000 sorted wnids; reinstall timm")
    return found


@lru_cache(maxsize=1)
def wnid_index() -> dict[str, int]:
    """wnid -> ImageNet class index (0..999)."""
    return {w: i for i, w in enumerate(wnids())}


@lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """OpenAI's 1000 ImageNet class names (the zero-shot prompt names), in class-index order."""
    if "open_clip" not in sys.modules:  # `import open_clip` takes seconds (torch); this data module imports nothing
        spec = importlib.util.find_spec("open_clip")
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / "zero_shot_metadata.py"
            module_spec = importlib.util.spec_from_file_location("_open_clip_zero_shot_metadata", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return tuple(module.IMAGENET_CLASSNAMES)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


@lru_cache(maxsize=1)
def lemmas() -> tuple[str, ...]:
    """WordNet lemma names of the 1000 classes ('tench, Tinca tinca', ...) in class-index order.

    These are the names ImageNet's devkit and ObjectNet's mapping files use.
    """
    table = dict(line.split("\t", 1) for line in _lines("imagenet_synset_to_lemma.txt"))
    return tuple(table[w] for w in wnids())


def subset_wnids(kind: str) -> tuple[str, ...]:
    """The standard wnids of a 200-class benchmark, 'imagenet-r' or 'imagenet-a' (sorted).

    Raises:
        ValueError: another kind.
    """
    if kind not in SUBSETS:
        raise ValueError(f"no standard class subset for {kind!r}; use one of {sorted(SUBSETS)}")
    return tuple(sorted(_lines(SUBSETS[kind])))


def class_indices(names: list[str] | tuple[str, ...]) -> list[int]:
    """ImageNet class indices of wnids, sorted.

    Raises:
        DataError: a name is not one of the 1000 ImageNet wnids.
    """
    index = wnid_index()
    unknown = [n for n in names if n not in index]
    if unknown:
        raise DataError(f"{unknown[:5]} are not ImageNet-1k wnids (e.g. 'n01440764'); check the folder names")
    return sorted(index[n] for n in names)
