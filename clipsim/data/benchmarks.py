"""ImageNet-family benchmarks and ObjectNet as users have them on disk: validation report and registration.

Every benchmark is registered as a `folder` dataset whose record maps each class folder to its ImageNet class
index (`extra["label_map"]`), names the 1000 classes with OpenAI's prompt names, and, for ImageNet-R/-A and
ObjectNet, lists the class indices it is scored over (`extra["class_subset"]`; None = all 1000). Kinds and
layouts: clipsim.data.layouts.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim.data import imagenet
from clipsim.data.layouts import KINDS, BenchmarkKind, Layout, benchmark_kind, benchmark_layout, listed, subfolders
from clipsim.data.sources import list_folder, read_image, read_image_bytes, row_locator
from clipsim.errors import ClipsimError, DataError

__all__ = ["KINDS", "BenchmarkKind", "BenchmarkReport", "benchmark_kind", "benchmark_layout", "register_benchmark",
           "register_report", "validate_benchmark"]
DEFAULT_CHECK_IMAGES = 100  # ~1 s of JPEG decoding: catches a bad copy without reading a whole benchmark


@dataclass
class BenchmarkReport:
    """What validation found; `errors` block registration, `warnings` do not."""

    kind: str
    root: str
    image_root: str = ""
    classes_expected: int = 0
    classes_found: int = 0
    images_expected: int = 0
    images_found: int = 0
    excluded_images: int = 0
    missing_classes: list[str] = field(default_factory=list)
    unexpected_folders: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    checked_images: int = 0
    unreadable: list[dict] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    layout: Layout | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when nothing blocks registration."""
        return not self.errors

    def to_dict(self) -> dict:
        """Plain JSON-able data (without the label map)."""
        out = {k: v for k, v in asdict(self).items() if k != "layout"}
        return {**out, "ok": self.ok}

    def text(self) -> str:
        """A human-readable summary, one finding per line."""
        title = KINDS[self.kind].title
        lines = [f"{title} at {self.image_root or self.root}",
                 f"  classes: {self.classes_found} found, {self.classes_expected} expected",
                 f"  images:  {self.images_found:,} found, {self.images_expected:,} expected"
                 + (f" ({self.excluded_images:,} outside the benchmark's classes left out)" if self.excluded_images
                    else ""),
                 (f"  decoded: {self.checked_images:,} checked, {len(self.unreadable)} unreadable, "
                 f"{len(self.duplicates)} groups of identical files")]
        lines += [f"  warning: {w}" for w in self.warnings] + [f"  ERROR: {e}" for e in self.errors]
        return "\n".join(lines)


def _count(report: BenchmarkReport, layout: Layout, listing: pd.DataFrame) -> pd.DataFrame:
    """Fill class and image counts; return the benchmark's own images (mapped class folders)."""
    keys = listing["key"]
    nested = keys.str.contains("/", regex=False)
    folder = keys.str.split("/", n=1).str[0].where(nested)
    mine = folder.isin(list(layout.label_map))
    counts = folder[mine].value_counts()
    present = [f for f in layout.label_map if counts.get(f, 0) > 0]
    report.classes_found, report.images_found = len(present), int(mine.sum())
    report.excluded_images = int((~mine).sum())
    report.missing_classes = sorted(set(layout.expected) - set(layout.label_map))
    report.empty_classes = sorted(set(layout.label_map) - set(present))
    known = set(layout.label_map) | layout.ignored
    report.unexpected_folders = sorted(set(subfolders(layout.image_root)) - known)
    return listing[mine].reset_index(drop=True)


def _count_warnings(report: BenchmarkReport, stray: int) -> None:
    title = KINDS[report.kind].title
    if report.classes_found != report.classes_expected:
        report.warnings.append(f"{report.classes_found} classes found, the standard {title} has "
                               f"{report.classes_expected}")
    if report.missing_classes:
        report.warnings.append(f"{len(report.missing_classes)} class folders missing: {listed(report.missing_classes)}")
    if report.empty_classes:
        report.warnings.append(f"{len(report.empty_classes)} class folders hold no images: "
                               f"{listed(report.empty_classes)}")
    if report.images_found != report.images_expected:
        diff = report.images_found - report.images_expected
        report.warnings.append(f"{report.images_found:,} images found, the standard {title} has "
                               f"{report.images_expected:,} ({diff:+,})")
    if report.unexpected_folders:
        report.warnings.append(f"{len(report.unexpected_folders)} folders are not {title} classes and are left out: "
                               f"{listed(report.unexpected_folders)}")
    if stray:
        report.warnings.append(f"{stray:,} images directly in {report.image_root} are left out (not in a class folder)")


def _check_images(report: BenchmarkReport, images: pd.DataFrame, check: int | str, seed: int, crop: int,
                  progress: Callable[[int, int, str], None] | None) -> None:
    """Decode all or `check` random images (as embedding will, crop included); note failures and duplicates."""
    n = len(images) if check == "all" else min(int(check), len(images))
    picked = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False)) if n else []
    by_hash: dict[str, list[str]] = {}
    for done, i in enumerate(picked, 1):
        row = images.iloc[int(i)]
        try:
            read_image(row_locator(row), crop)
            digest = hashlib.sha256(read_image_bytes(row_locator(row))).hexdigest()
            by_hash.setdefault(digest, []).append(row["key"])
        except ClipsimError as err:
            report.unreadable.append({"key": row["key"], "path": row["path"], "error": str(err)})
        if progress is not None:
            progress(done, n, f"{report.kind}: decoding")
    report.checked_images = n
    report.duplicates = sorted(keys for keys in by_hash.values() if len(keys) > 1)
    if report.unreadable:
        report.warnings.append(f"{len(report.unreadable)} of {n:,} decoded images are unreadable (embedding skips "
                               f"them), e.g. {report.unreadable[0]['path']}: re-copy those files")
    if report.duplicates:
        report.warnings.append(f"{len(report.duplicates)} groups of byte-identical images among the {n:,} decoded, "
                               f"e.g. {', '.join(report.duplicates[0][:3])}")


def validate_benchmark(kind: str, root: str | Path, check_images: int | str = DEFAULT_CHECK_IMAGES, seed: int = 0,
                       progress: Callable[[int, int, str], None] | None = None) -> BenchmarkReport:
    """Check a benchmark folder: layout, class and image counts against the release, decodable images, duplicates.

    Args:
        kind: one of KINDS ('imagenet-val', 'objectnet', ...).
        root: the folder as downloaded (class folders inside; ObjectNet: objectnet-1.0 with images/ and mappings/).
        check_images: how many random images to decode, or 'all'.
        seed: seed of the random sample.
        progress: progress(done, total, description) while decoding, or None.

    Returns:
        The BenchmarkReport; a wrong layout is in `errors`, counts off the standard size are `warnings`.

    Raises:
        DataError: unknown kind or a bad check_images value.
    """
    spec = benchmark_kind(kind)
    if check_images != "all" and (not str(check_images).isdigit()):
        raise DataError(f"check_images {check_images!r} must be a number of images or 'all'")
    report = BenchmarkReport(kind, str(Path(root).absolute()), classes_expected=spec.classes,
                             images_expected=spec.images)
    try:
        layout = benchmark_layout(kind, root)
        report.image_root, report.layout = str(layout.image_root), layout
        listing, _ = list_folder(layout.image_root)
    except DataError as err:
        report.errors.append(str(err))
        return report
    report.warnings.extend(layout.notes)
    images = _count(report, layout, listing)
    _count_warnings(report, int((~listing["key"].str.contains("/", regex=False)).sum()))
    _check_images(report, images, check_images, seed, int(layout.extra.get("crop_border", 0)), progress)
    return report


def register_report(ws, report: BenchmarkReport, name: str | None = None):
    """Register a validated benchmark as a `folder` dataset with ImageNet labels.

    Args:
        ws: the Workspace.
        report: from validate_benchmark, without errors.
        name: dataset name (default: the kind, e.g. 'imagenet-val').

    Returns:
        The registered Dataset. Registering ImageNet train also makes it the workspace's `reference` set
        when none is set.

    Raises:
        DataError: the report holds errors (nothing is registered).
    """
    if not report.ok or report.layout is None:
        raise DataError(f"{report.kind} at {report.root} was not registered: " + "; ".join(report.errors))
    spec, layout = KINDS[report.kind], report.layout
    name = name or spec.name
    extra = {"benchmark": spec.name, "benchmark_root": report.root, "images": report.images_found,
             "label_map": layout.label_map, **layout.extra}
    ds = ws.register_dataset(name, spec.role, layout.image_root, "folder", classes=list(imagenet.class_names()),
                             **extra)
    if spec.role == "train" and not ws.settings.get("reference"):
        ws.update_settings(reference=name)
    return ds


def register_benchmark(ws, kind: str, root: str | Path, name: str | None = None,
                       check_images: int | str = DEFAULT_CHECK_IMAGES, seed: int = 0, progress=None):
    """Validate a benchmark folder and register it (see validate_benchmark and register_report).

    Returns:
        (the Dataset, the BenchmarkReport).

    Raises:
        DataError: a wrong layout (the message holds the report's errors) or bad arguments.
    """
    report = validate_benchmark(kind, root, check_images, seed, progress)
    return register_report(ws, report, name), report
