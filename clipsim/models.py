"""OpenCLIP model loading, offline only (architecture names or our own JSON configs; weights from local files),
and batched encoding of images and texts with a loaded model.

A pretrained tag is resolved to a file in the Hugging Face cache or open_clip's url cache before open_clip
runs, so nothing is ever downloaded and a missing file fails at once with instructions.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub (imported by open_clip) reads it

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip import pretrained as oc_pretrained

from clipsim import fileio
from clipsim.errors import ModelError
from clipsim.search.exact import resolve_device

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16-plus-240"  # the paper's similarity model (embedding dim 640)
DEFAULT_PRETRAINED = "laion400m_e32"
# open_clip's registry sends this tag to the e31 repository on the hub (only its url names the e32 file), so a
# hub-cached "laion400m_e32" would silently be the e31 weights. The e32 weights have their own timm repo.
_HUB_REPO_FIXES = {("ViT-B-16-plus-240", "laion400m_e32"): "timm/vit_base_patch16_plus_clip_240.laion400m_e32/"}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def go_offline() -> None:
    """Forbid hub downloads in this process, also when huggingface_hub was imported before this module."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def register_model_config(model: str | Path) -> tuple[str, Path | None]:
    """Resolve a model argument to an open_clip architecture name, registering a JSON config file if given.

    Args:
        model: open_clip architecture name (e.g. 'ViT-B-16-plus-240') or path to a JSON model config
            (keys embed_dim, vision_cfg, text_cfg); the registered name is the file stem.

    Returns:
        (architecture name, config file or None).

    Raises:
        ModelError: the config file is missing or malformed, or the name is unknown.
    """
    text = str(model)
    if text.endswith(".json") or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise ModelError(f"model config {path} does not exist; pass an open_clip model name or a JSON config path")
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ModelError(f"model config {path} is not readable JSON ({err}); fix the file") from err
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ModelError(f"model config {path} lacks {missing}; an open_clip config needs embed_dim, vision_cfg, "
                             "text_cfg (copy one from open_clip/model_configs/ and edit it)")
        open_clip.add_model_config(path)
        return path.stem, path
    if text.startswith(("hf-hub:", "local-dir:")):
        return text, None
    name = text.replace("/", "-")  # open_clip accepts 'ViT-B/16' for 'ViT-B-16'
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise ModelError(f"unknown model {text!r}; did you mean {close}? (open_clip.list_models() lists all; "
                         "or pass the path of a JSON model config)")
    return name, None


def resolve_weights(name: str, pretrained: str | Path | None, cache_dir: str | None = None) -> tuple[Path | None, dict]:
    """Find the checkpoint file for `pretrained` locally, without network.

    Args:
        name: open_clip architecture name.
        pretrained: a pretrained tag of that architecture, a checkpoint path, or None (random init).
        cache_dir: the cache_dir given to open_clip when the weights were downloaded (None: its defaults).

    Returns:
        (checkpoint file or None, the tag's open_clip config ({} for files): preprocessing, quick_gelu).

    Raises:
        ModelError: no such file, unknown tag, or the tag's weights are not cached.
    """
    if pretrained is None:
        return None, {}
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path, {}
    cfg = open_clip.get_pretrained_cfg(name, str(pretrained))
    if not cfg:
        if path.suffix in _CHECKPOINT_SUFFIXES or os.sep in str(pretrained):
            raise ModelError(f"checkpoint file {path} does not exist; fix --pretrained (a .pt state dict or a tag)")
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ModelError(f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {name} "
                         f"(tags: {', '.join(tags) or 'none'}); pass a tag or --pretrained /path/to/checkpoint.pt")
    found = _cached_file(name, str(pretrained), cfg, cache_dir)
    if found is None:
        raise ModelError(_missing_weights_message(name, str(pretrained), cfg, cache_dir))
    return found, cfg


def _hub_location(name: str, tag: str, cfg: dict) -> tuple[str, list[str]] | None:
    """(repo id, candidate file names) of a tag's hub weights, or None when the tag has no hub entry."""
    hub = _HUB_REPO_FIXES.get((name, tag), cfg.get("hf_hub", ""))
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    if filename:
        return repo, [*oc_pretrained._get_safe_alternatives(filename), filename]
    return repo, [oc_pretrained.HF_SAFE_WEIGHTS_NAME, oc_pretrained.HF_WEIGHTS_NAME]


def _url_cache_file(cfg: dict, cache_dir: str | None) -> Path | None:
    """Where open_clip's url download would have put the tag's file (None when the tag has no url)."""
    url = cfg.get("url", "")
    return Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url) if url else None


def _cached_file(name: str, tag: str, cfg: dict, cache_dir: str | None) -> Path | None:
    """The tag's weights in a local cache (hub cache first, then the url cache), or None."""
    from huggingface_hub import try_to_load_from_cache

    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    hub = _hub_location(name, tag, cfg)
    for filename in hub[1] if hub else []:
        hit = try_to_load_from_cache(hub[0], filename, cache_dir=cache_dir)
        if isinstance(hit, str):
            return Path(hit)
    url_file = _url_cache_file(cfg, cache_dir)
    return url_file if url_file is not None and url_file.is_file() else None


def _missing_weights_message(name: str, tag: str, cfg: dict, cache_dir: str | None) -> str:
    from huggingface_hub import constants

    hub, url_file = _hub_location(name, tag, cfg), _url_cache_file(cfg, cache_dir)
    steps = []
    if hub:
        steps.append(f"`hf download {hub[0]} {hub[1][-1]}` (fills the hub cache {cache_dir or constants.HF_HUB_CACHE})")
    if url_file:
        steps.append(f"download {cfg['url']} to {url_file}")
    return (f"weights for {name} / {tag} are not on this machine and clipsim never downloads. On a machine with "
            f"internet, {' or '.join(steps) or 'download them'}, then copy the file or cache here "
            f"(HF_HOME / --cache-dir), or pass --pretrained /path/to/checkpoint.pt")


@functools.lru_cache(maxsize=8)  # building the BPE tokenizer takes ~0.4 s; it holds no per-model weights
def _tokenizer(name: str, cache_dir: str | None) -> Callable:
    return open_clip.get_tokenizer(name, cache_dir=cache_dir)


def load_model(
    model: str | Path, pretrained: str | Path | None, device: str | torch.device = "cpu", cache_dir: str | None = None
) -> tuple[torch.nn.Module, Callable, Callable, dict]:
    """Load an OpenCLIP model in eval mode, offline.

    Args:
        model: architecture name or JSON config path (see register_model_config).
        pretrained: tag (resolved from the local cache), checkpoint file (a state dict or {'state_dict': ...},
            'module.' prefixes allowed), or None for random init (tests only).
        device: torch device for the model ('auto': cuda if available).
        cache_dir: open_clip/hub cache folder used when the weights were fetched (None: defaults).

    Returns:
        (model, preprocess (PIL -> tensor), tokenizer (list[str] -> tokens), info) where info holds model,
        pretrained, checkpoint, checkpoint_fingerprint, model_config_fingerprint, image_size, dim, quick_gelu.

    Raises:
        ModelError: unknown model, missing weights, or a checkpoint that does not fit the architecture.
    """
    go_offline()
    device = resolve_device(device)
    name, config_file = register_model_config(model)
    checkpoint, tag_cfg = resolve_weights(name, pretrained, cache_dir)
    try:
        model_cfg = open_clip.get_model_config(name) or {}
        quick_gelu = bool(tag_cfg.get("quick_gelu")) and not model_cfg.get("quick_gelu", False)
        net, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(checkpoint) if checkpoint else None, device=device, cache_dir=cache_dir,
            force_quick_gelu=quick_gelu,  # tags trained with QuickGELU need it whatever the config says
            image_mean=tag_cfg.get("mean"), image_std=tag_cfg.get("std"),
            image_interpolation=tag_cfg.get("interpolation"), image_resize_mode=tag_cfg.get("resize_mode"),
            pretrained_text=False,  # never fetch base text-tower weights from the hub
        )
        tokenizer = _tokenizer(name, cache_dir)
    except Exception as err:  # open_clip raises RuntimeError, KeyError, OSError, hub errors...
        what = f"checkpoint {checkpoint}" if checkpoint else f"model {name}"
        raise ModelError(f"cannot load {what} ({type(err).__name__}: {err}); check that the checkpoint was saved "
                         f"from architecture {name} and that its files are cached locally") from err
    net.eval()
    info = {
        "model": name, "model_config": str(config_file) if config_file else None,
        "model_config_fingerprint": hashlib.sha256(fileio.json_bytes(model_cfg)).hexdigest()[:16],
        "pretrained": str(pretrained) if pretrained is not None else None,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_fingerprint": fileio.file_fingerprint([checkpoint]) if checkpoint else None,
        "image_size": list(_pair(net.visual.image_size)), "dim": int(model_cfg.get("embed_dim", 0)),
        "quick_gelu": bool(model_cfg.get("quick_gelu", False) or quick_gelu),
    }
    log.info("loaded %s / %s from %s", name, pretrained, checkpoint or "random init")
    return net, preprocess, tokenizer, info


def _pair(size) -> tuple[int, int]:
    return tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))


def autocast(device: torch.device, precision: str):
    """fp16 autocast on CUDA for 'amp' (and 'auto'); plain fp32 otherwise.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in ("auto", "amp", "fp32"):
        raise ValueError(f"precision {precision!r} must be 'auto', 'amp' or 'fp32'")
    amp = device.type == "cuda" and precision in ("auto", "amp")
    return torch.autocast(device.type, dtype=torch.float16, enabled=amp)


def encode_pixels(model: torch.nn.Module, pixels: torch.Tensor, device: torch.device, precision: str) -> np.ndarray:
    """encode_image on a preprocessed batch, L2-normalised in float32: (n, d) float32."""
    with torch.inference_mode(), autocast(device, precision):
        feats = model.encode_image(pixels.to(device, non_blocking=True))
    return F.normalize(feats.float(), dim=-1).cpu().numpy()


def embed_images(model: torch.nn.Module, preprocess: Callable, images: list, device: str | torch.device = "cpu",
                 batch_size: int = 256, precision: str = "auto") -> np.ndarray:
    """Embed PIL images with the image tower.

    Args:
        model: open_clip model in eval mode, on `device`.
        preprocess: its eval transform (PIL image -> (3, H, W) tensor).
        images: PIL images.
        batch_size: images per forward pass.
        precision: 'auto' (fp16 autocast on CUDA, fp32 on CPU), 'amp' or 'fp32'.

    Returns:
        (len(images), d) float32, rows L2-normalised.
    """
    device = resolve_device(device)
    parts = [
        encode_pixels(model, torch.stack([preprocess(im) for im in images[lo : lo + batch_size]]), device, precision)
        for lo in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, getattr(model.visual, "output_dim", 0)), np.float32)


def encode_texts(model: torch.nn.Module, tokenizer: Callable, texts: list[str], device: str | torch.device = "cpu",
                 batch_size: int = 1024) -> np.ndarray:
    """Embed texts with the text tower (for zero-shot classifiers).

    Returns:
        (len(texts), d) float32, rows L2-normalised.
    """
    device = resolve_device(device)
    parts = []
    with torch.inference_mode():
        for lo in range(0, len(texts), batch_size):
            feats = model.encode_text(tokenizer(list(texts[lo : lo + batch_size])).to(device))
            parts.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
