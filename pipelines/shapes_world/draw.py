"""Render a shapes-world `Scene` to pixels."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from .scenes import Scene, Shape, outline

# Far apart in RGB (every pair differs by >= 90 in some channel) so that,
# after a JPEG round trip, a shape's interior is still nearest its own colour.
COLOUR_RGB = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 230),
    "yellow": (245, 210, 0),
    "purple": (140, 40, 170),
    "orange": (250, 120, 0),
}
BACKGROUND_RGB = {
    "white": (255, 255, 255),
    "light gray": (211, 211, 211),
    "beige": (245, 240, 215),
}

# Drawn this many times larger and scaled down: cheap anti-aliasing, so edges
# look like a photographed drawing rather than a bitmap.
SUPERSAMPLE = 3


def _draw_shape(canvas: ImageDraw.ImageDraw, shape: Shape, scale: int) -> None:
    fill = COLOUR_RGB[shape.colour]
    if shape.kind == "circle":
        # x1/y1 are exclusive, so the last covered pixel ends at x1 * scale - 1.
        canvas.ellipse((shape.x0 * scale, shape.y0 * scale, shape.x1 * scale - 1, shape.y1 * scale - 1), fill=fill)
    elif shape.kind == "square":
        canvas.rectangle((shape.x0 * scale, shape.y0 * scale, shape.x1 * scale - 1, shape.y1 * scale - 1), fill=fill)
    else:
        canvas.polygon([(x * scale, y * scale) for x, y in outline(shape)], fill=fill)


def draw_scene(scene: Scene, supersample: int = SUPERSAMPLE) -> Image.Image:
    """The scene as an RGB image of exactly scene.width x scene.height pixels."""
    big = Image.new("RGB", (scene.width * supersample, scene.height * supersample), BACKGROUND_RGB[scene.background])
    canvas = ImageDraw.Draw(big)
    for shape in scene.shapes:
        _draw_shape(canvas, shape, supersample)
    if supersample == 1:
        return big
    return big.resize((scene.width, scene.height), Image.Resampling.BOX)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes; the same image always gives the same bytes (no timestamps, no EXIF)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def nearest_colour_name(rgb: tuple[int, int, int]) -> str:
    """The named shape or background colour nearest to a pixel, for checking drawings."""
    named = {**COLOUR_RGB, **{f"background:{k}": v for k, v in BACKGROUND_RGB.items()}}
    return min(named, key=lambda name: sum((a - b) ** 2 for a, b in zip(named[name], rgb)))
