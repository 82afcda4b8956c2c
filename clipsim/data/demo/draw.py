"""Procedural drawing of the demo's objects: 12 classes, each in four domains (photo, sketch, rendition, hard).

A `Scene` holds every random choice of one image, so an image can be redrawn with small jitter to make a
near-duplicate. Rendering is deterministic given the scene.
"""
from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64  # stored image side; the demo model looks at 32 px
SUPER = 4  # supersampling factor for anti-aliased polygons
CLASSES = ("arrow", "circle", "crescent", "cross", "fish", "heart", "hexagon", "house", "ring", "square", "star", "triangle")
DOMAINS = ("photo", "sketch", "rendition", "hard")
HUE_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
_HUE_CENTRES = (0.0, 0.08, 0.15, 0.33, 0.5, 0.62, 0.76, 0.9)


def _circle(n=40, r=1.0, cx=0.0, cy=0.0, a0=0.0, a1=2 * math.pi):
    return [(cx + r * math.cos(a0 + (a1 - a0) * i / n), cy + r * math.sin(a0 + (a1 - a0) * i / n)) for i in range(n)]


def _regular(n, r=1.0, phase=-math.pi / 2):
    return [(r * math.cos(phase + 2 * math.pi * i / n), r * math.sin(phase + 2 * math.pi * i / n)) for i in range(n)]


def _star():
    return [(math.cos(-math.pi / 2 + math.pi * i / 5) * (1.0 if i % 2 == 0 else 0.42),
             math.sin(-math.pi / 2 + math.pi * i / 5) * (1.0 if i % 2 == 0 else 0.42)) for i in range(10)]


def _heart():
    pts = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.0, -y / 17.0 - 0.1))
    return pts


# Each class: list of (polygon, filled) parts in unit coordinates; filled=False cuts a hole.
SHAPES = {
    "arrow": [([(-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25), (-1, 0.25)], True)],
    "circle": [(_circle(), True)],
    "crescent": [(_circle(), True), (_circle(r=0.85, cx=0.45, cy=-0.2), False)],
    "cross": [([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
                (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)], True)],
    "fish": [(_circle(n=36, r=0.62, cx=-0.15), True), ([(0.35, 0), (1.0, -0.55), (1.0, 0.55)], True)],
    "heart": [(_heart(), True)],
    "hexagon": [(_regular(6, phase=0.0), True)],
    "house": [([(-0.7, -0.05), (0.7, -0.05), (0.7, 0.9), (-0.7, 0.9)], True), ([(-0.95, 0.0), (0, -0.95), (0.95, 0.0)], True),
              ([(-0.2, 0.35), (0.2, 0.35), (0.2, 0.9), (-0.2, 0.9)], False)],
    "ring": [(_circle(), True), (_circle(r=0.55), False)],
    "square": [([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)], True)],
    "star": [(_star(), True)],
    "triangle": [(_regular(3, r=1.05, phase=-math.pi / 2), True)],
}


@dataclass(frozen=True)
class Scene:
    """Every random choice behind one image."""

    cls: int
    domain: str
    cx: float
    cy: float
    scale: float
    angle: float
    hue: float
    sat: float
    val: float
    texture: int  # 0 stripes, 1 dots, 2 noise, 3 plain
    style: int  # rendition: 0 cartoon, 1 painting; hard: 0 occluded, 1 odd scale, 2 odd viewpoint, 3 dark
    shear: float
    seed: int  # background, clutter and texture randomness

    @property
    def class_name(self) -> str:
        return CLASSES[self.cls]

    @property
    def colour_name(self) -> str:
        return HUE_NAMES[int(np.argmin([min(abs(self.hue - c), 1 - abs(self.hue - c)) for c in _HUE_CENTRES]))]


def sample_scene(rng: np.random.Generator, cls: int, domain: str, shifted: bool = False) -> Scene:
    """Draw the random choices of one image of class `cls` in `domain`; `shifted` makes objects smaller (v2)."""
    style = int(rng.integers(0, 4 if domain == "hard" else 2))
    scale = rng.uniform(0.28, 0.4) * (0.85 if shifted else 1.0)
    if domain == "hard" and style == 1:
        scale = rng.choice([rng.uniform(0.12, 0.17), rng.uniform(0.55, 0.7)])
    return Scene(
        cls=cls, domain=domain, cx=rng.uniform(0.38, 0.62) * SIZE, cy=rng.uniform(0.38, 0.62) * SIZE,
        scale=scale * SIZE, angle=rng.normal(0, 0.35 if domain != "hard" else 1.2), hue=rng.uniform(0, 1),
        sat=rng.uniform(0.45, 0.95), val=rng.uniform(0.55, 0.95), texture=int(rng.integers(0, 4)),
        style=style, shear=rng.uniform(-0.6, 0.6) if domain == "hard" and style == 2 else 0.0,
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def jitter_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """A near-duplicate's scene: the same image redrawn with small shifts in place, size, angle and hue."""
    return replace(
        scene, cx=scene.cx + rng.uniform(-1, 1), cy=scene.cy + rng.uniform(-1, 1),
        scale=scene.scale * rng.uniform(0.97, 1.03), angle=scene.angle + rng.uniform(-0.05, 0.05),
        hue=(scene.hue + rng.uniform(-0.02, 0.02)) % 1.0,
    )


def _rgb(h, s, v) -> tuple[int, int, int]:
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)))


def _polygons(scene: Scene) -> list[tuple[list[tuple[float, float]], bool]]:
    """Class polygons in supersampled pixel coordinates."""
    ca, sa = math.cos(scene.angle), math.sin(scene.angle)
    out = []
    for pts, filled in SHAPES[scene.class_name]:
        tr = []
        for x, y in pts:
            x = x + scene.shear * y
            xr, yr = ca * x - sa * y, sa * x + ca * y
            tr.append(((scene.cx + scene.scale * xr) * SUPER, (scene.cy + scene.scale * yr) * SUPER))
        out.append((tr, filled))
    return out


def _mask(scene: Scene) -> Image.Image:
    mask = Image.new("L", (SIZE * SUPER, SIZE * SUPER), 0)
    draw = ImageDraw.Draw(mask)
    for pts, filled in _polygons(scene):
        draw.polygon(pts, fill=255 if filled else 0)
    return mask


def _texture(scene: Scene, rng: np.random.Generator, base: tuple[int, int, int]) -> np.ndarray:
    """Fill pattern of the object: (SIZE, SIZE, 3) float32 in 0..255."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    col = np.array(base, np.float32)
    if scene.texture == 0:
        f = 0.5 + 0.5 * np.sign(np.sin((xx * math.cos(scene.hue * 9) + yy * math.sin(scene.hue * 9)) * 0.9))
        shade = 0.7 + 0.3 * f
    elif scene.texture == 1:
        shade = 0.75 + 0.25 * ((np.sin(xx * 1.3) * np.sin(yy * 1.3)) > 0.3)
    elif scene.texture == 2:
        shade = 0.7 + 0.3 * np.kron(rng.random((SIZE // 4, SIZE // 4)).astype(np.float32), np.ones((4, 4), np.float32))
    else:
        shade = np.ones((SIZE, SIZE), np.float32)
    light = 1.0 - 0.35 * ((xx - scene.cx) + (yy - scene.cy)) / (SIZE * 1.2)  # light from the top-left
    return np.clip(col[None, None, :] * (shade * light)[..., None], 0, 255)


def _background(rng: np.random.Generator, clutter: int) -> np.ndarray:
    """Gradient with blurred clutter: (SIZE, SIZE, 3) float32."""
    h0, h1 = rng.uniform(0, 1, 2)
    c0, c1 = np.array(_rgb(h0, 0.35, 0.75)), np.array(_rgb(h1, 0.35, 0.45))
    t = np.linspace(0, 1, SIZE, dtype=np.float32)[:, None, None]
    bg = Image.fromarray((c0 * (1 - t) + c1 * t).repeat(SIZE, axis=1).astype(np.uint8))
    draw = ImageDraw.Draw(bg)
    for _ in range(clutter):
        x, y = rng.uniform(0, SIZE, 2)
        r = rng.uniform(2, 9)
        colour = _rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.9))
        if rng.random() < 0.5:
            draw.ellipse([x - r, y - r * rng.uniform(0.4, 1), x + r, y + r], fill=colour)
        else:
            draw.line([x, y, x + rng.uniform(-1, 1) * 4 * r, y + rng.uniform(-1, 1) * 4 * r], fill=colour, width=2)
    return np.asarray(bg.filter(ImageFilter.GaussianBlur(0.8)), np.float32)


def _photo(scene: Scene, rng: np.random.Generator, dark: bool = False) -> Image.Image:
    bg = _background(rng, clutter=int(rng.integers(4, 10)))
    alpha_img = _mask(scene).resize((SIZE, SIZE), Image.BOX)
    alpha = np.asarray(alpha_img, np.float32)[..., None] / 255
    shadow = Image.new("L", (SIZE, SIZE), 0)
    shadow.paste(alpha_img, (2, 2))
    shadow_a = np.asarray(shadow.filter(ImageFilter.GaussianBlur(3)), np.float32)[..., None] / 510
    bg = bg * (1 - shadow_a) + 20 * shadow_a
    arr = bg * (1 - alpha) + _texture(scene, rng, _rgb(scene.hue, scene.sat, scene.val)) * alpha
    arr = arr + rng.normal(0, 6, (SIZE, SIZE, 3))
    if dark:
        arr = arr * 0.45 + 30
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _sketch(scene: Scene, rng: np.random.Generator) -> Image.Image:
    paper = int(rng.integers(225, 256))
    img = Image.new("RGB", (SIZE * SUPER, SIZE * SUPER), (paper, paper, paper - int(rng.integers(0, 12))))
    draw = ImageDraw.Draw(img)
    ink = int(rng.integers(20, 90))
    for stroke in range(int(rng.integers(1, 4))):
        wobble = 0.8 * SUPER * (stroke + 1)
        for pts, _ in _polygons(scene):
            pts = [(x + rng.normal(0, wobble * 0.3), y + rng.normal(0, wobble * 0.3)) for x, y in pts]
            draw.line(pts + pts[:1], fill=(ink, ink, ink), width=int(SUPER * rng.uniform(0.8, 1.6)))
    if scene.texture in (0, 1):  # hatching inside the object
        hatch = Image.new("L", img.size, 0)
        hd = ImageDraw.Draw(hatch)
        for off in range(-SIZE * SUPER, SIZE * SUPER, int(SUPER * rng.uniform(4, 7))):
            hd.line([off, 0, off + SIZE * SUPER, SIZE * SUPER], fill=140, width=SUPER // 2)
        mask = Image.fromarray(np.minimum(np.asarray(hatch), np.asarray(_mask(scene))))
        img.paste((ink + 60,) * 3, (0, 0), mask)
    img = img.resize((SIZE, SIZE), Image.LANCZOS)
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + rng.normal(0, 3, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8))


def _rendition(scene: Scene, rng: np.random.Generator) -> Image.Image:
    bg_col = _rgb(rng.uniform(0, 1), 0.25, 0.97)
    img = Image.new("RGB", (SIZE * SUPER, SIZE * SUPER), bg_col)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 3))):  # big flat decorations
        x, y, r = *rng.uniform(0, SIZE * SUPER, 2), rng.uniform(8, 20) * SUPER
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_rgb(rng.uniform(0, 1), 0.3, 0.9))
    fill = _rgb(scene.hue, 1.0, 1.0)
    for pts, filled in _polygons(scene):
        draw.polygon(pts, fill=fill if filled else bg_col, outline=(0, 0, 0), width=int(SUPER * 2.2))
    img = img.resize((SIZE, SIZE), Image.LANCZOS)
    if scene.style == 1:  # painting: posterised with brush-stroke noise
        arr = np.asarray(img.filter(ImageFilter.ModeFilter(3)), np.float32)
        strokes = np.repeat(rng.normal(0, 18, (SIZE, SIZE // 4, 3)), 4, axis=1)
        arr = np.round((arr + strokes) / 48) * 48
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


def _hard(scene: Scene, rng: np.random.Generator) -> Image.Image:
    img = _photo(scene, rng, dark=scene.style == 3)
    if scene.style == 0:  # occluder covering about half of the object
        draw = ImageDraw.Draw(img)
        w = scene.scale * rng.uniform(0.9, 1.3)
        x0 = scene.cx + rng.choice([-1, 0]) * w + rng.uniform(-3, 3)
        y0 = scene.cy - scene.scale * rng.uniform(0.6, 1.2)
        draw.rectangle([x0, y0, x0 + w, y0 + 2.2 * scene.scale], fill=_rgb(rng.uniform(0, 1), 0.4, rng.uniform(0.3, 0.8)))
    return img


def render(scene: Scene) -> Image.Image:
    """Draw a scene: a SIZE x SIZE RGB image."""
    rng = np.random.default_rng(scene.seed)
    if scene.domain == "photo":
        return _photo(scene, rng)
    if scene.domain == "sketch":
        return _sketch(scene, rng)
    if scene.domain == "rendition":
        return _rendition(scene, rng)
    return _hard(scene, rng)


def perturb(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Near-duplicate post-processing: one or two of a small crop, a colour shift and JPEG recompression."""
    ops = rng.permutation(3)[: int(rng.integers(1, 3))]
    if 0 in ops:
        c = rng.integers(0, 3, 4)
        img = img.crop((c[0], c[1], SIZE - c[2], SIZE - c[3])).resize((SIZE, SIZE), Image.BILINEAR)
    if 1 in ops:
        arr = np.asarray(img, np.float32) * rng.uniform(0.95, 1.05, 3) + rng.uniform(-6, 6, 3)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if 2 in ops:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(40, 80)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img
