"""Product photos as real JPEGs whose content carries label signal.

Category -> shape (primitive x count x fill), sub_category -> aspect and rotation of the shape,
sex -> colour palette of the product, season -> background brightness/texture (snow speckles,
warm bright light, autumn stripes, plain grey). Fragility is NOT drawn: it lives only in the text.
Defects are produced here too: placeholder ("empty") images of the kinds a marketplace serves
(uniform colour, a "no photo" graphic, a faint logo, a heavily blurred picture), small clean product
shots on white (small files that are NOT empty) and corrupt bytes.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Product colours: name (used in text/characteristics) -> RGB. Palettes per latent sex code.
COLOURS: dict[str, tuple[int, int, int]] = {
    "розовый": (236, 96, 160),
    "красный": (214, 40, 57),
    "бордовый": (128, 20, 48),
    "пудровый": (232, 170, 170),
    "малиновый": (190, 30, 110),
    "синий": (30, 60, 150),
    "черный": (25, 25, 30),
    "серый": (110, 112, 118),
    "хаки": (100, 110, 60),
    "темно-синий": (20, 30, 80),
    "желтый": (250, 210, 30),
    "оранжевый": (250, 130, 20),
    "зеленый": (40, 170, 70),
    "сиреневый": (190, 140, 230),
    "фиолетовый": (130, 60, 190),
    "голубой": (90, 180, 240),
    "белый": (245, 245, 245),
    "бежевый": (220, 200, 160),
    "коричневый": (120, 75, 40),
    "бирюзовый": (30, 180, 170),
    "мультиколор": (200, 120, 60),
}
PALETTES: dict[str, tuple[str, ...]] = {
    "W": ("розовый", "красный", "бордовый", "пудровый", "малиновый"),
    "M": ("синий", "черный", "серый", "хаки", "темно-синий"),
    "K": ("желтый", "оранжевый", "зеленый", "мультиколор"),
    "G": ("сиреневый", "розовый", "фиолетовый", "пудровый"),
    "B": ("голубой", "зеленый", "синий", "оранжевый"),
    "U": ("бирюзовый", "серый", "черный", "белый"),
    "": ("черный", "белый", "серый", "бежевый", "коричневый", "синий", "красный", "зеленый", "бирюзовый"),
}
N_PRIMITIVES = 12
NOISE_TILE = 600  # > the largest image side, so any crop fits


@dataclass(frozen=True)
class ImagePlan:
    """What one product photo shows. Colour variants share everything but ``colour``."""

    width: int
    height: int
    category_index: int  # -> primitive, count, fill
    sub_category_hash: int  # -> aspect, rotation
    colour: tuple[int, int, int]
    season: str  # SEASON_CODES or "" (no seasonal background)
    layout_seed: int  # shared by colour variants -> near-duplicate photos
    mode: str = "RGB"  # "RGB", "L" or "CMYK" as stored in the JPEG
    quality: int = 90
    white_background: bool = False  # a studio shot: the product alone on white (season not drawn)


def make_noise_bank(seed: int, count: int = 4) -> list[np.ndarray]:
    """Reusable noise tiles (int16) so every photo gets sensor-like texture at low cost."""
    rng = np.random.default_rng([seed, 7])
    return [rng.normal(0.0, 1.0, size=(NOISE_TILE, NOISE_TILE, 3)).astype(np.float32) for _ in range(count)]


def _background(plan: ImagePlan, rng: np.random.Generator) -> np.ndarray:
    h, w = plan.height, plan.width
    if plan.white_background:
        return np.full((h, w, 3), 255.0, np.float32)
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    if plan.season == "S":  # bright, warm, high-key light
        top, bottom = np.array([255, 214, 110], np.float32), np.array([255, 248, 205], np.float32)
        return np.broadcast_to(top + (bottom - top) * rows, (h, w, 3)).copy()
    if plan.season == "W":  # cold, light, snow speckles
        bg = np.empty((h, w, 3), np.float32)
        bg[:] = (205, 222, 242)
        flakes = rng.random((h, w)) < 0.02
        bg[flakes] = 255.0
        return bg
    if plan.season == "D":  # muted brown with diagonal rain-like stripes
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = (((xx + yy) // 10) % 2).astype(np.float32)[:, :, None]
        return np.array([135, 115, 90], np.float32) + stripes * 22.0
    if plan.season == "A":  # neutral mid-grey studio backdrop
        bg = np.empty((h, w, 3), np.float32)
        bg[:] = (168, 168, 172)
        return bg
    pastel = rng.integers(200, 246, size=3).astype(np.float32)
    bg = np.empty((h, w, 3), np.float32)
    bg[:] = pastel
    return bg


def _primitive_points(primitive: int, aspect: float) -> list[tuple[float, float]]:
    """Polygon of a primitive in the unit square centred on 0 (x scaled by aspect)."""
    if primitive in (0, 5):  # ellipse / ring
        pts = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
    elif primitive == 1:  # rectangle
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif primitive == 2:  # triangle
        pts = [(0, -1), (1, 1), (-1, 1)]
    elif primitive == 3:  # diamond
        pts = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    elif primitive == 4:  # five-point star
        pts = [
            (
                (1.0 if i % 2 == 0 else 0.45) * math.sin(i * math.pi / 5),
                -(1.0 if i % 2 == 0 else 0.45) * math.cos(i * math.pi / 5),
            )
            for i in range(10)
        ]
    elif primitive == 6:  # plus / cross
        a = 0.35
        pts = [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ]
    elif primitive == 7:  # hexagon
        pts = [(math.cos(i * math.pi / 3), math.sin(i * math.pi / 3)) for i in range(6)]
    elif primitive == 8:  # dress-like trapezoid
        pts = [(-0.35, -1), (0.35, -1), (1, 1), (-1, 1)]
    elif primitive == 9:  # t-shirt-like T
        pts = [(-1, -1), (1, -1), (1, -0.4), (0.45, -0.4), (0.45, 1), (-0.45, 1), (-0.45, -0.4), (-1, -0.4)]
    elif primitive == 10:  # boot-like L
        pts = [(-0.6, -1), (0.0, -1), (0.0, 0.3), (1, 0.3), (1, 1), (-0.6, 1)]
    else:  # arrow / chevron
        pts = [(-1, -0.3), (0.2, -0.3), (0.2, -1), (1, 0), (0.2, 1), (0.2, 0.3), (-1, 0.3)]
    return [(x * aspect, y) for x, y in pts]


def _draw_product(image: Image.Image, plan: ImagePlan) -> None:
    layout = np.random.default_rng([plan.layout_seed, 11])
    primitive = plan.category_index % N_PRIMITIVES
    variant = plan.category_index // N_PRIMITIVES  # 0..5 -> count 1..3, filled or outlined
    count, outlined = 1 + variant % 3, variant >= 3
    aspect = 0.6 + (plan.sub_category_hash % 9) * 0.1
    rotation = math.radians((plan.sub_category_hash // 9) % 8 * 11.25)
    side = min(plan.width, plan.height)
    radius = side * layout.uniform(0.22, 0.32) / (1.0 + 0.35 * (count - 1))
    draw = ImageDraw.Draw(image)
    points = _primitive_points(primitive, aspect)
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    shade = tuple(int(c * 0.6) for c in plan.colour)
    for k in range(count):
        cx = plan.width * (0.5 + (k - (count - 1) / 2) * 0.3) + layout.uniform(-0.05, 0.05) * plan.width
        cy = plan.height * 0.5 + layout.uniform(-0.08, 0.08) * plan.height
        poly = [(cx + radius * (x * cos_r - y * sin_r), cy + radius * (x * sin_r + y * cos_r)) for x, y in points]
        if outlined or primitive == 5:
            draw.polygon(poly, outline=plan.colour, width=max(4, int(radius * 0.25)))
        else:
            draw.polygon(poly, fill=plan.colour, outline=shade, width=3)


def render_jpeg(
    plan: ImagePlan, rng: np.random.Generator, noise_bank: list[np.ndarray], noise_sigma: float, min_bytes: int
) -> bytes:
    """Encode a product photo; re-encode with more texture until it is at least ``min_bytes``."""
    canvas = Image.fromarray(np.clip(_background(plan, rng), 0, 255).astype(np.uint8), "RGB")
    _draw_product(canvas, plan)
    base = np.asarray(canvas, dtype=np.float32)
    tile = noise_bank[int(rng.integers(len(noise_bank)))]
    y0 = int(rng.integers(0, NOISE_TILE - plan.height + 1))
    x0 = int(rng.integers(0, NOISE_TILE - plan.width + 1))
    noise = tile[y0 : y0 + plan.height, x0 : x0 + plan.width]
    sigma = noise_sigma
    for _ in range(4):
        pixels = np.clip(base + noise * sigma, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
        if plan.mode != "RGB":
            image = image.convert(plan.mode)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=plan.quality)
        data = buffer.getvalue()
        if len(data) >= min_bytes:
            return data
        sigma *= 1.6  # too smooth for a realistic photo size: add texture and try again
    return data


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _fit_under(image: Image.Image, quality: int, max_bytes: int) -> bytes:
    """JPEG bytes of `image` below `max_bytes`: lower quality, then smaller, until it fits."""
    while True:
        data = _jpeg(image, quality)
        if len(data) < max_bytes or min(image.size) < 32:
            return data
        if quality > 60:
            quality -= 10
        else:
            image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)


def render_small_clean_jpeg(plan: ImagePlan, rng: np.random.Generator, max_bytes: int) -> bytes:
    """A clean studio shot: the product alone on white, little sensor noise, a small file (below
    `max_bytes`, i.e. under the "empty image" size cut) that is nonetheless a good photo."""
    white = dataclasses.replace(plan, white_background=True, season="")
    canvas = Image.fromarray(_background(white, rng).astype(np.uint8), "RGB")
    _draw_product(canvas, white)
    # a soft contact shadow under the product, as studio shots have
    shadow = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(shadow).ellipse(
        [plan.width * 0.2, plan.height * 0.78, plan.width * 0.8, plan.height * 0.86], fill=40
    )
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(2, plan.width // 40)))
    pixels = np.asarray(canvas, np.float32) - np.asarray(shadow, np.float32)[:, :, None] * 0.5
    pixels += rng.normal(0.0, 1.0, size=pixels.shape[:2] + (1,)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if plan.mode != "RGB":
        image = image.convert(plan.mode)
    return _fit_under(image, plan.quality, max_bytes)


# Placeholder ("empty image") kinds: what a marketplace shows when a card has no real photo.
PLACEHOLDER_KINDS = ("uniform", "no_photo", "logo", "blurred")
_PLACEHOLDER_GREYS = ((255, 255, 255), (245, 245, 245), (238, 238, 240), (242, 238, 230))
LOGO_PLACEHOLDER_SIZE = (400, 533)  # the one logo placeholder picture, shared by many products


def render_placeholder_jpeg(kind: str, plan: ImagePlan, rng: np.random.Generator, max_bytes: int) -> bytes:
    """A placeholder image of `kind` (one of PLACEHOLDER_KINDS), below `max_bytes`.

    uniform: a flat colour with +-1 level of noise; no_photo: a thin grey camera icon and
    "NO PHOTO" on a light card; logo: a faint grey marketplace logo on a light card, the same
    bytes for every product (pass the same `rng` seed); blurred: the product picture under a
    Gaussian blur of 3% of its long side (a lazy-load preview stretched to full size).
    """
    w, h = plan.width, plan.height
    if kind == "uniform":
        pixels = np.full((h, w, 3), _PLACEHOLDER_GREYS[int(rng.integers(len(_PLACEHOLDER_GREYS)))], np.int16)
        pixels += rng.integers(-1, 2, size=(h, w, 1), dtype=np.int16)
        return _fit_under(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), 75, max_bytes)
    if kind == "no_photo":
        card = Image.new("RGB", (w, h), _PLACEHOLDER_GREYS[int(rng.integers(1, len(_PLACEHOLDER_GREYS)))])
        grey = int(rng.integers(150, 200))
        side = min(w, h)  # the graphic is drawn to the short side, so it stays small in any frame
        draw, r, stroke = ImageDraw.Draw(card), side * 0.16, max(2, int(side * 0.01))
        cx, cy = w / 2, h * 0.45
        draw.rounded_rectangle(
            [cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], radius=r * 0.15, outline=(grey,) * 3, width=stroke
        )
        draw.ellipse([cx - r * 0.4, cy - r * 0.4, cx + r * 0.4, cy + r * 0.4], outline=(grey,) * 3, width=stroke)
        draw.text(
            (cx, cy + r * 1.1),
            "NO PHOTO",
            fill=(grey,) * 3,
            font=ImageFont.load_default(size=max(8, int(side * 0.06))),
            anchor="mt",
        )
        return _fit_under(card, 85, max_bytes)
    if kind == "logo":
        lw, lh = LOGO_PLACEHOLDER_SIZE
        card = Image.new("RGB", (lw, lh), (242, 242, 242))
        ImageDraw.Draw(card).text(
            (lw / 2, lh / 2), "WB", fill=(190, 190, 190), font=ImageFont.load_default(size=int(lw * 0.25)), anchor="mm"
        )
        return _fit_under(card, 85, max_bytes)
    if kind == "blurred":
        canvas = Image.fromarray(np.clip(_background(plan, rng), 0, 255).astype(np.uint8), "RGB")
        _draw_product(canvas, plan)
        return _fit_under(canvas.filter(ImageFilter.GaussianBlur(max(w, h) * 0.03)), 70, max_bytes)
    raise ValueError(f"unknown placeholder kind {kind!r}; expected one of {PLACEHOLDER_KINDS}")


CORRUPT_KINDS = ("truncated", "garbage_after_header", "html_error_page")


def corrupt_bytes(kind: str, valid_jpeg: bytes, rng: np.random.Generator) -> bytes:
    """Bytes stored as ``{nm}.jpg`` that no decoder can read."""
    if kind == "truncated":
        return valid_jpeg[: int(len(valid_jpeg) * rng.uniform(0.3, 0.7))]
    if kind == "garbage_after_header":
        return b"\xff\xd8\xff\xe0" + rng.integers(0, 256, size=int(rng.integers(2000, 40000)), dtype=np.uint8).tobytes()
    if kind == "html_error_page":
        return b"<html><head><title>404 Not Found</title></head><body>image not found</body></html>\n"
    raise ValueError(f"unknown corrupt kind {kind!r}; expected one of {CORRUPT_KINDS}")
