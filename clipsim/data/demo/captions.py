"""Web-style captions for demo images (varied templates, some noisy or wrong) and zero-shot prompts."""
from __future__ import annotations

import numpy as np

from clipsim.data.demo.draw import CLASSES, Scene

WEB_TEMPLATES = {
    "photo": ("a photo of a {c}", "{c}", "a {col} {c} on a busy background", "close-up photo of the {c}",
              "IMG_{n}.jpg {c}", "a picture of my {col} {c}", "{col} {c} for sale", "the {c} in the garden"),
    "sketch": ("a sketch of a {c}", "pencil drawing of a {c}", "{c} line art", "hand-drawn {c}",
               "doodle of a {c}", "black and white sketch: {c}"),
    "rendition": ("a cartoon {c}", "{c} illustration", "a painting of a {col} {c}", "clip art {col} {c}",
                  "{c} sticker", "cute {col} {c} cartoon"),
    "hard": ("a {c} partly hidden", "tiny {c} far away", "a {c} seen from an odd angle", "dark photo of a {c}",
             "{c}", "a photo of a {c} behind something"),
}
NOISE = ("untitled", "image", "stock photo", "free download", "IMG_{n}.jpg", "my favourite things", "new post")
WRONG_CLASS_SHARE = 0.08  # LAION captions often name the wrong thing
NO_CLASS_SHARE = 0.05

# Zero-shot prompts for the demo (the real study uses open_clip's 80 OpenAI ImageNet templates).
DEMO_TEMPLATES = ("a photo of a {}.", "a sketch of a {}.", "a cartoon {}.", "a painting of a {}.",
                  "a drawing of a {}.", "a {} partly hidden.", "a dark photo of a {}.", "{}")


def web_caption(rng: np.random.Generator, scene: Scene) -> str:
    """A caption for a web image: usually right, sometimes naming another class or none."""
    u = rng.random()
    n = int(rng.integers(1000, 9999))
    if u < NO_CLASS_SHARE:
        return str(rng.choice(NOISE)).format(n=n)
    cls = scene.class_name
    if u < NO_CLASS_SHARE + WRONG_CLASS_SHARE:
        cls = CLASSES[int(rng.integers(0, len(CLASSES)))]
    template = str(rng.choice(WEB_TEMPLATES[scene.domain]))
    return template.format(c=cls, col=scene.colour_name, n=n)
