"""The demo's similarity model: a tiny open_clip CLIP (our own JSON config, a small ModifiedResNet image
tower) trained from scratch on `web` in process, on images already in memory.

The loss is CLIP's image-text contrastive loss plus, as in SLIP (Mu et al. 2022), an image-image
contrastive term between two augmented views. A 5M-parameter tower trained for two minutes learns classes
and domains from captions alone but not instance identity; the SLIP term gives it the instance-level
features that make near-duplicates stand out, as they do for a real CLIP.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from clipsim import fileio

log = logging.getLogger(__name__)
CONFIG = Path(__file__).with_name("clipsim-demo.json")
MODEL_NAME = CONFIG.stem
LR = 1e-3  # cosine-decayed after 10% warmup; 2e-3 collapsed the image features in trials
SLIP_WEIGHT = 1.0  # image-image term; 0 gave 39% planted-duplicate recall in trials, 1.0 gave 94%
SLIP_TEMPERATURE = 0.1
WEIGHT_DECAY = 0.1


def _register() -> None:
    import open_clip

    open_clip.add_model_config(CONFIG)


def train_similarity_model(
    images: np.ndarray, captions: list[str], out_dir: Path, steps: int, batch: int, seed: int = 0, progress=None
) -> Path:
    """Train the tiny CLIP on (image, caption) pairs and save it.

    Args:
        images: (n, 32, 32, 3) uint8.
        captions: n strings.
        out_dir: receives the model config JSON, `checkpoint.pt` and `train.json`.
        steps: optimisation steps; batch: contrastive batch size.

    Returns:
        Path of the checkpoint (loadable with open_clip.load_checkpoint / clipsim.embed.load_model).
    """
    import open_clip

    _register()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = open_clip.create_model(MODEL_NAME, pretrained=None)
    tokens = open_clip.get_tokenizer(MODEL_NAME)(list(captions))
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
    )
    bf16 = torch.backends.mkldnn.is_available()
    losses, t0 = [], time.time()
    model.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(pixels), size=min(batch, len(pixels)), replace=False))
        x = (pixels[idx].float() / 255 - mean) / std
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            img_f, txt_f, scale = model(x, tokens[idx])
            loss = loss_fn(img_f.float(), txt_f.float(), scale)
            loss = loss + SLIP_WEIGHT * _view_loss(img_f.float(), model.encode_image(_augment(x)).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % 10 == 0:
            progress(step + 1, steps, f"train demo model (loss {np.mean(losses[-10:]):.2f})")
    return _save(model, out_dir, {"steps": steps, "batch": batch, "seed": seed, "samples": len(pixels),
                                  "loss_first": losses[0], "loss_last": float(np.mean(losses[-10:])),
                                  "seconds": round(time.time() - t0, 1), "losses": losses[::5]})


def _augment(x: torch.Tensor) -> torch.Tensor:
    """A second view: random zoom (0.85-1) and shift (+-10%), per-channel gain and offset."""
    n = len(x)
    theta = torch.zeros(n, 2, 3)
    scale = torch.empty(n).uniform_(0.85, 1.0)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    theta[:, :, 2] = torch.empty(n, 2).uniform_(-0.1, 0.1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    return x * torch.empty(n, 3, 1, 1).uniform_(0.9, 1.1) + torch.empty(n, 3, 1, 1).uniform_(-0.15, 0.15)


def _view_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between two views' embeddings (n, d)."""
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    logits = a @ b.T / SLIP_TEMPERATURE
    labels = torch.arange(len(a))
    return 0.5 * (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels))


def _save(model, out_dir: Path, info: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONFIG, out_dir / CONFIG.name)
    ckpt = out_dir / "checkpoint.pt"
    fileio.atomic_write(ckpt, lambda tmp: torch.save({"state_dict": model.state_dict(), "name": MODEL_NAME}, tmp))
    fileio.write_json(out_dir / "train.json", {**info, "model": MODEL_NAME, "config": json.loads(CONFIG.read_text())})
    log.info("demo model trained: loss %.2f -> %.2f in %.0f s", info["loss_first"], info["loss_last"], info["seconds"])
    return ckpt
