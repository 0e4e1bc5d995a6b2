"""Scenes of coloured shapes, and the captions, questions and boxes that are true of them.

Everything here is plain Python over a `Scene`: no pixels. `draw.py` turns a
scene into an image; because every caption and answer below is derived from
the same `Scene`, they are true by construction.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

SHAPE_KINDS = ("circle", "square", "triangle", "star", "hexagon")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
# Answers and captions use American spelling ("color", "gray") because
# VQAv2 answers and COCO captions do.
BACKGROUNDS = ("white", "light gray", "beige")

KIND_PLURAL = {kind: kind + "s" for kind in SHAPE_KINDS}
KIND_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "五角星", "hexagon": "六边形"}
COLOUR_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}
BACKGROUND_ZH = {"white": "白色", "light gray": "浅灰色", "beige": "米色"}

NUMBER_EN = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
# 两 (not 二) is the counting form before a measure word.
NUMBER_ZH = {1: "一", 2: "两", 3: "三", 4: "四", 5: "五", 6: "六"}

MAX_SHAPES = 4
# Boxes keep this many pixels apart so that shapes never touch: each one is
# seen, counted and boxed on its own.
SHAPE_GAP = 2
# Two shapes closer than this many pixels (centre to centre for a caption's
# left-to-right order, edge to edge for "left of" and "above" questions) are
# not compared: a human rater would hesitate too.
MIN_SEPARATION = 6


@dataclass(frozen=True)
class Shape:
    """One filled shape; its box is in pixels, x1 and y1 exclusive."""

    kind: str
    colour: str
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass
class Scene:
    """An image to be: its size, background colour and shapes."""

    width: int
    height: int
    background: str
    shapes: list[Shape] = field(default_factory=list)


# ---------------------------------------------------------------- making scenes


def _pick_image_size(rng: random.Random, min_side: int, max_side: int) -> tuple[int, int]:
    width = rng.randint(min_side, max_side)
    # Two in five images are square; the rest have an aspect ratio of up to
    # max_side / min_side either way, so that resizing has work to do.
    if rng.random() < 0.4:
        return width, width
    return width, rng.randint(min_side, max_side)


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return (
        a[2] + SHAPE_GAP <= b[0]
        or b[2] + SHAPE_GAP <= a[0]
        or a[3] + SHAPE_GAP <= b[1]
        or b[3] + SHAPE_GAP <= a[1]
    )


def _place_boxes(rng: random.Random, width: int, height: int, count: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping square boxes; fewer than `count` only if the image cannot hold them."""
    short_side = min(width, height)
    smallest = max(10, int(0.16 * short_side))
    largest = min(max(smallest, int(0.42 * short_side)), short_side - 2)
    smallest = min(smallest, largest)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(count):
        for _attempt in range(60):
            side = rng.randint(smallest, largest)
            x0 = rng.randint(1, width - side - 1)
            y0 = rng.randint(1, height - side - 1)
            box = (x0, y0, x0 + side, y0 + side)
            if all(_boxes_apart(box, other) for other in boxes):
                boxes.append(box)
                break
            # Crowded images fall back to smaller shapes rather than giving up.
            largest = max(smallest, largest - 2)
    return boxes


def make_scene(
    rng: random.Random,
    width: int | None = None,
    height: int | None = None,
    shape_count: int | None = None,
    min_side: int = 96,
    max_side: int = 256,
) -> Scene:
    """A random scene of 1-4 non-overlapping shapes; pass width/height/shape_count to fix them."""
    if width is None or height is None:
        width, height = _pick_image_size(rng, min_side, max_side)
    if shape_count is None:
        shape_count = rng.randint(1, MAX_SHAPES)
    background = rng.choice(BACKGROUNDS)
    shapes: list[Shape] = []
    for box in _place_boxes(rng, width, height, shape_count):
        # Repeating an earlier shape's look now and then gives captions
        # like "two red circles" and count answers above one.
        if shapes and rng.random() < 0.3:
            twin = rng.choice(shapes)
            kind, colour = twin.kind, twin.colour
        else:
            kind, colour = rng.choice(SHAPE_KINDS), rng.choice(COLOURS)
        shapes.append(Shape(kind, colour, *box))
    return Scene(width, height, background, shapes)


# ---------------------------------------------------------------- geometry


def _regular_star(points: int = 5, inner_radius: float = 0.382) -> list[tuple[float, float]]:
    # 0.382 is the inner radius of a regular pentagram with outer radius 1.
    corners = []
    for i in range(2 * points):
        radius = 1.0 if i % 2 == 0 else inner_radius
        angle = -math.pi / 2 + i * math.pi / points
        corners.append((radius * math.cos(angle), radius * math.sin(angle)))
    return corners


def _regular_polygon(sides: int, start: float = 0.0) -> list[tuple[float, float]]:
    return [(math.cos(start + i * 2 * math.pi / sides), math.sin(start + i * 2 * math.pi / sides)) for i in range(sides)]


# Unit outlines, centred on the origin; `outline` stretches them onto a box.
_UNIT_OUTLINES = {
    "circle": _regular_polygon(32),
    "square": [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)],
    "triangle": [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)],
    "star": _regular_star(),
    "hexagon": _regular_polygon(6),
}


def outline(shape: Shape) -> list[tuple[float, float]]:
    """The shape's polygon in pixel coordinates, stretched so its bounding box is exactly the shape's box.

    Circles come back as a 32-gon; that is close enough for a segmentation
    polygon and an area, while drawing uses a true ellipse.
    """
    unit = _UNIT_OUTLINES[shape.kind]
    xs = [p[0] for p in unit]
    ys = [p[1] for p in unit]
    sx = (shape.x1 - shape.x0) / (max(xs) - min(xs))
    sy = (shape.y1 - shape.y0) / (max(ys) - min(ys))
    return [(shape.x0 + (x - min(xs)) * sx, shape.y0 + (y - min(ys)) * sy) for x, y in unit]


def area(shape: Shape) -> float:
    """The shape's area in pixels (exact for circles, shoelace for the polygons)."""
    if shape.kind == "circle":
        return math.pi * (shape.x1 - shape.x0) * (shape.y1 - shape.y0) / 4
    corners = outline(shape)
    doubled = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]))
    return abs(doubled) / 2


# ---------------------------------------------------------------- boxes


def normalised_box(scene: Scene, shape: Shape) -> tuple[int, int, int, int]:
    """A shape's box as integers in [0, 1000), the way Qwen-VL and MiniGPT-v2 write boxes."""

    def scale(value: int, size: int) -> int:
        return min(999, value * 1000 // size)

    return (
        scale(shape.x0, scene.width),
        scale(shape.y0, scene.height),
        scale(shape.x1, scene.width),
        scale(shape.y1, scene.height),
    )


def normalised_boxes(scene: Scene) -> list[tuple[int, int, int, int]]:
    return [normalised_box(scene, shape) for shape in scene.shapes]


# ---------------------------------------------------------------- captions


def _groups(shapes: list[Shape]) -> list[tuple[str, str, int]]:
    """(colour, kind, count) per distinct look, in order of first appearance."""
    counts = Counter((s.colour, s.kind) for s in shapes)
    seen: list[tuple[str, str]] = []
    for s in shapes:
        if (s.colour, s.kind) not in seen:
            seen.append((s.colour, s.kind))
    return [(colour, kind, counts[(colour, kind)]) for colour, kind in seen]


def _a_or_an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase_en(colour: str, kind: str, count: int) -> str:
    if count == 1:
        return f"{_a_or_an(colour)} {colour} {kind}"
    return f"{NUMBER_EN[count]} {colour} {KIND_PLURAL[kind]}"


def _phrase_zh(colour: str, kind: str, count: int) -> str:
    return f"{NUMBER_ZH[count]}个{COLOUR_ZH[colour]}{KIND_ZH[kind]}"


def _join_en(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _join_zh(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return "、".join(parts[:-1]) + "和" + parts[-1]


def _left_to_right(scene: Scene) -> list[Shape] | None:
    """The shapes ordered by centre x, or None when two are too close to order."""
    ordered = sorted(scene.shapes, key=lambda s: s.centre[0])
    for a, b in zip(ordered, ordered[1:]):
        if b.centre[0] - a.centre[0] < MIN_SEPARATION:
            return None
    return ordered


def _captions_en(scene: Scene, rng: random.Random) -> list[str]:
    groups = _groups(scene.shapes)
    rng.shuffle(groups)
    listed = _join_en([_phrase_en(*g) for g in groups])
    bg = scene.background
    total = len(scene.shapes)
    be = "is" if groups[0][2] == 1 else "are"
    shapes_word = "shape" if total == 1 else "shapes"
    candidates = [
        f"{listed} on a {bg} background.",
        f"A {bg} background with {listed}.",
        f"There {be} {listed} on a {bg} background.",
        f"An image of {NUMBER_EN[total]} {shapes_word} on {bg}: {listed}.",
        f"A simple drawing of {listed}.",
        f"A picture showing {listed} against a {bg} background.",
    ]
    if total == 1:
        only = scene.shapes[0]
        candidates.append(f"A single {only.colour} {only.kind} on a {bg} background.")
    ordered = _left_to_right(scene) if total > 1 else None
    if ordered:
        in_order = _join_en([_phrase_en(s.colour, s.kind, 1) for s in ordered])
        candidates.append(f"From left to right: {in_order}.")
        if total == 2:
            left, right = ordered
            candidates.append(
                f"{_phrase_en(left.colour, left.kind, 1)} to the left of {_phrase_en(right.colour, right.kind, 1)}."
            )
    return [c[0].upper() + c[1:] for c in candidates]


def _captions_zh(scene: Scene, rng: random.Random) -> list[str]:
    groups = _groups(scene.shapes)
    rng.shuffle(groups)
    listed = _join_zh([_phrase_zh(*g) for g in groups])
    bg = BACKGROUND_ZH[scene.background]
    total = len(scene.shapes)
    candidates = [
        f"{bg}背景上有{listed}。",
        f"图中有{listed}，背景是{bg}。",
        f"这张图片里有{listed}。",
        f"一张{bg}背景的图片，上面画着{listed}。",
        f"图片中共有{NUMBER_ZH[total]}个图形：{listed}。",
        f"在{bg}的背景上画着{listed}。",
    ]
    if total == 1:
        only = scene.shapes[0]
        candidates.append(f"{bg}背景上只有一个{COLOUR_ZH[only.colour]}{KIND_ZH[only.kind]}。")
    ordered = _left_to_right(scene) if total > 1 else None
    if ordered:
        in_order = _join_zh([_phrase_zh(s.colour, s.kind, 1) for s in ordered])
        candidates.append(f"从左到右依次是{in_order}。")
    return candidates


def captions(scene: Scene, lang: str, rng: random.Random, count: int = 5) -> list[str]:
    """`count` distinct true captions of the scene in "en" or "zh" (fewer if the scene allows fewer)."""
    if lang == "en":
        candidates = _captions_en(scene, rng)
    elif lang == "zh":
        candidates = _captions_zh(scene, rng)
    else:
        raise ValueError(f"captions: language {lang!r} is not one the shapes world writes; use 'en' or 'zh'")
    unique = list(dict.fromkeys(candidates))
    rng.shuffle(unique)
    return unique[:count]


# ---------------------------------------------------------------- questions


def _qa(question: str, answer: str | int, answer_type: str, question_type: str) -> dict:
    return {
        "question": question,
        "answer": str(answer),
        "answer_type": answer_type,
        "question_type": question_type,
    }


def _referring_names(scene: Scene) -> dict[Shape, str]:
    """The shortest unambiguous name of each shape that has one ("the star", "the red shape", "the red star")."""
    kinds = Counter(s.kind for s in scene.shapes)
    colours = Counter(s.colour for s in scene.shapes)
    looks = Counter((s.colour, s.kind) for s in scene.shapes)
    names: dict[Shape, str] = {}
    for s in scene.shapes:
        if kinds[s.kind] == 1:
            names[s] = f"the {s.kind}"
        elif colours[s.colour] == 1:
            names[s] = f"the {s.colour} shape"
        elif looks[(s.colour, s.kind)] == 1:
            names[s] = f"the {s.colour} {s.kind}"
    return names


def _colour_questions(scene: Scene) -> list[dict]:
    out = []
    for kind, count in Counter(s.kind for s in scene.shapes).items():
        colours = {s.colour for s in scene.shapes if s.kind == kind}
        if len(colours) != 1:
            continue  # "what color is the circle?" has no single answer
        colour = colours.pop()
        if count == 1:
            for template in ("What color is the {k}?", "What is the color of the {k}?", "Which color is the {k}?"):
                out.append(_qa(template.format(k=kind), colour, "other", "colour"))
        else:
            out.append(_qa(f"What color are the {KIND_PLURAL[kind]}?", colour, "other", "colour"))
    return out


def _shape_questions(scene: Scene) -> list[dict]:
    out = []
    for colour, count in Counter(s.colour for s in scene.shapes).items():
        kinds = {s.kind for s in scene.shapes if s.colour == colour}
        if len(kinds) != 1:
            continue
        kind = kinds.pop()
        if count == 1:
            for template in ("What shape is the {c} object?", "What is the shape of the {c} object?", "Which shape is {c}?"):
                out.append(_qa(template.format(c=colour), kind, "other", "shape"))
        else:
            out.append(_qa(f"What shape are the {colour} objects?", kind, "other", "shape"))
    return out


def _count_questions(scene: Scene, rng: random.Random) -> list[dict]:
    shapes = scene.shapes
    kind = rng.choice(SHAPE_KINDS)
    colour = rng.choice(COLOURS)
    # Asking about a look that is present keeps "0" from dominating the answers.
    present = rng.choice(shapes)
    return [
        _qa("How many shapes are there?", len(shapes), "number", "count"),
        _qa("How many objects are in the image?", len(shapes), "number", "count"),
        _qa(f"How many {KIND_PLURAL[kind]} are there?", sum(s.kind == kind for s in shapes), "number", "count"),
        _qa(f"How many {colour} shapes are there?", sum(s.colour == colour for s in shapes), "number", "count"),
        _qa(
            f"How many {present.colour} {KIND_PLURAL[present.kind]} are there?",
            sum((s.colour, s.kind) == (present.colour, present.kind) for s in shapes),
            "number",
            "count",
        ),
    ]


def _exists_question(scene: Scene, rng: random.Random) -> dict:
    looks = {(s.colour, s.kind) for s in scene.shapes}
    if rng.random() < 0.5:
        colour, kind = rng.choice(sorted(looks))
        answer = "yes"
    else:
        # Near misses (right kind, wrong colour or the reverse) make "no"
        # depend on both words, not just on whether the kind is present.
        anchor_colour, anchor_kind = rng.choice(sorted(looks))
        misses = [(c, anchor_kind) for c in COLOURS] + [(anchor_colour, k) for k in SHAPE_KINDS]
        misses = [look for look in misses if look not in looks]
        if not misses:
            misses = [(c, k) for c in COLOURS for k in SHAPE_KINDS if (c, k) not in looks]
        colour, kind = rng.choice(misses)
        answer = "no"
    template = rng.choice(("Is there {a} {c} {k}?", "Is there {a} {c} {k} in the image?", "Do you see {a} {c} {k}?"))
    return _qa(template.format(a=_a_or_an(colour), c=colour, k=kind), answer, "yes/no", "exists")


def _position_questions(scene: Scene, rng: random.Random) -> list[dict]:
    names = _referring_names(scene)
    out = []
    for shape, name in names.items():
        cx, cy = shape.centre
        if cx < 0.4 * scene.width or cx > 0.6 * scene.width:
            side = "left" if cx < 0.4 * scene.width else "right"
            out.append(_qa(f"Is {name} on the left or the right side of the image?", side, "other", "position"))
            out.append(_qa(f"Which side of the image is {name} on?", side, "other", "position"))
        if cy < 0.4 * scene.height or cy > 0.6 * scene.height:
            end = "top" if cy < 0.4 * scene.height else "bottom"
            out.append(_qa(f"Is {name} at the top or the bottom of the image?", end, "other", "position"))
    named = list(names.items())
    for a, a_name in named:
        for b, b_name in named:
            if a is b:
                continue
            # Only whole-box separation counts, so the answer holds for every pixel.
            if a.x1 + MIN_SEPARATION <= b.x0:
                out.append(_qa(f"Is {a_name} to the left of {b_name}?", "yes", "yes/no", "position"))
                out.append(_qa(f"Is {b_name} to the left of {a_name}?", "no", "yes/no", "position"))
                out.append(_qa(f"Is {a_name} on the left or the right of {b_name}?", "left", "other", "position"))
                out.append(_qa(f"Is {b_name} on the left or the right of {a_name}?", "right", "other", "position"))
            if a.y1 + MIN_SEPARATION <= b.y0:
                out.append(_qa(f"Is {a_name} above {b_name}?", "yes", "yes/no", "position"))
                out.append(_qa(f"Is {b_name} above {a_name}?", "no", "yes/no", "position"))
                out.append(_qa(f"Is {a_name} above or below {b_name}?", "above", "other", "position"))
                out.append(_qa(f"Is {b_name} above or below {a_name}?", "below", "other", "position"))
    return out


QUESTION_TYPES = ("colour", "shape", "count", "exists", "position")


def questions(scene: Scene, rng: random.Random) -> list[dict]:
    """True question-answer pairs about the scene, at most one per question type.

    Each is {question, answer, answer_type, question_type}; answers are short,
    lowercase and use digits for numbers, as VQAv2's multiple_choice_answer.
    """
    if not scene.shapes:
        return []
    candidates = {
        "colour": _colour_questions(scene),
        "shape": _shape_questions(scene),
        "count": _count_questions(scene, rng),
        "exists": [_exists_question(scene, rng)],
        "position": _position_questions(scene, rng),
    }
    out = []
    for question_type in QUESTION_TYPES:
        pool = candidates[question_type]
        if pool:
            out.append(rng.choice(pool))
    return out
