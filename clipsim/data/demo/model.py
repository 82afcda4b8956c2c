"""The demo's similarity model: a tiny open_clip CLIP (our own JSON config) trained from scratch on `web`
with the contrastive loss, in process, on images already in memory.
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
CONFIG = Path(__file__).with_name("clipsim-demo-vit.json")
MODEL_NAME = CONFIG.stem
LR = 5e-4  # cosine-decayed after 10% warmup
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
        x = (_shift(pixels[idx], rng).float() / 255 - mean) / std
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            img_f, txt_f, scale = model(x, tokens[idx])
            loss = loss_fn(img_f.float(), txt_f.float(), scale)
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


def _shift(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random translation by up to 2 px (reflect padding): cheap augmentation."""
    dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
    x = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    return x[:, :, 2 + dy : 2 + dy + x.shape[2] - 4, 2 + dx : 2 + dx + x.shape[3] - 4]


def _save(model, out_dir: Path, info: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONFIG, out_dir / CONFIG.name)
    ckpt = out_dir / "checkpoint.pt"
    fileio.atomic_write(ckpt, lambda tmp: torch.save({"state_dict": model.state_dict(), "name": MODEL_NAME}, tmp))
    fileio.write_json(out_dir / "train.json", {**info, "model": MODEL_NAME, "config": json.loads(CONFIG.read_text())})
    log.info("demo model trained: loss %.2f -> %.2f in %.0f s", info["loss_first"], info["loss_last"], info["seconds"])
    return ckpt
