"""The report's charts as inline SVG, with axes, ticks and legends: no plotting library, one HTML file."""
from __future__ import annotations

import html
import math

BLUE, ORANGE, GREY = "#1f77b4", "#ff7f0e", "#7f7f7f"
SERIES_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#d62728", "#8c564b", "#7f7f7f")
FONT = 'font-family="sans-serif" font-size="11"'


def nice_ticks(lo: float, hi: float, count: int = 5, whole: bool = False) -> list[float]:
    """About `count` round tick values (1, 2, 2.5 or 5 times a power of ten apart; whole numbers at least 1
    apart if `whole`, for steps) spanning [lo, hi]: the first at or below `lo`, the last at or above `hi`."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"ticks for [{lo}, {hi}]: the range must be finite")
    if hi <= lo:
        lo, hi = (lo - 0.5, hi + 0.5) if lo == 0 else (lo - abs(lo) * 0.1, hi + abs(hi) * 0.1)
    raw = (hi - lo) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    if whole:
        step = max(1, math.ceil(step))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def tick_label(value: float, ticks: list[float]) -> str:
    """A tick's text, as precise as the ticks' spacing needs (1e-4 style for learning rates)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1
    if value == 0:
        return "0"
    if step < 1e-2:
        return f"{value:.1e}".replace("e-0", "e-")
    spacing = f"{step:g}"  # 0.25, 0.5, 2, 2500
    decimals = len(spacing.split(".")[1]) if "." in spacing else 0
    return f"{value:,.{decimals}f}"


def line_chart(curve: list[list[float]], x_label: str = "step", y_label: str = "loss",
               right: list[list[float]] | None = None, right_label: str = "learning rate",
               width: int = 640, height: int = 240) -> str:
    """`curve` ([x, y] points) against a left axis and, when given, `right` (another quantity over the same x,
    e.g. the learning rate by step) against a right axis, each with its ticks, a grid and a legend. Points that
    are not finite (a loss that diverged to NaN) are left out and counted under the chart."""
    finite = [p for p in curve if math.isfinite(p[0]) and math.isfinite(p[1])]
    note = f"<p>({len(curve) - len(finite)} points not finite, not drawn)</p>" if len(finite) < len(curve) else ""
    curve, right = finite, [p for p in right or [] if math.isfinite(p[0]) and math.isfinite(p[1])]
    if len(curve) < 2:
        return "<p>(too few points to plot)</p>" + note
    left, right_margin, top, bottom = 64, 72 if right else 16, 22, 40
    xs = [p[0] for p in curve] + [p[0] for p in right or []]
    x_ticks = nice_ticks(min(xs), max(xs), whole=all(float(x).is_integer() for x in xs))
    y_ticks = nice_ticks(min(p[1] for p in curve), max(p[1] for p in curve))
    plot_w, plot_h = width - left - right_margin, height - top - bottom

    def at_x(x):
        return left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * plot_w

    def at(y, ticks):
        return top + plot_h - (y - ticks[0]) / (ticks[-1] - ticks[0]) * plot_h

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(y_label)} by {html.escape(x_label)}">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for x in x_ticks:
        parts.append(f'<line x1="{at_x(x):.1f}" y1="{top}" x2="{at_x(x):.1f}" y2="{top + plot_h}" stroke="#eee"/>'
                     f'<line x1="{at_x(x):.1f}" y1="{top + plot_h}" x2="{at_x(x):.1f}" y2="{top + plot_h + 4}" stroke="#999"/>'
                     f'<text x="{at_x(x):.1f}" y="{top + plot_h + 15}" text-anchor="middle" {FONT}>'
                     f'{tick_label(x, x_ticks)}</text>')
    for y in y_ticks:
        parts.append(f'<line x1="{left}" y1="{at(y, y_ticks):.1f}" x2="{left + plot_w}" y2="{at(y, y_ticks):.1f}" stroke="#eee"/>'
                     f'<line x1="{left - 4}" y1="{at(y, y_ticks):.1f}" x2="{left}" y2="{at(y, y_ticks):.1f}" stroke="#999"/>'
                     f'<text x="{left - 6}" y="{at(y, y_ticks) + 4:.1f}" text-anchor="end" {FONT}>'
                     f'{tick_label(y, y_ticks)}</text>')
    parts.append(_polyline([(at_x(x), at(y, y_ticks)) for x, y in curve], BLUE))
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" {FONT}>{html.escape(x_label)}</text>'
                 f'<text transform="translate(14,{top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" {FONT} '
                 f'fill="{BLUE}">{html.escape(y_label)}</text>')
    legend = [(y_label, BLUE, "")]
    if right:
        r_ticks = nice_ticks(min(0.0, min(p[1] for p in right)), max(p[1] for p in right))
        edge = left + plot_w
        for y in r_ticks:
            parts.append(f'<line x1="{edge}" y1="{at(y, r_ticks):.1f}" x2="{edge + 4}" y2="{at(y, r_ticks):.1f}" stroke="{ORANGE}"/>'
                         f'<text x="{edge + 6}" y="{at(y, r_ticks) + 4:.1f}" {FONT} fill="{ORANGE}">'
                         f'{tick_label(y, r_ticks)}</text>')
        parts.append(_polyline([(at_x(x), at(y, r_ticks)) for x, y in right], ORANGE, dashed=True))
        parts.append(f'<text transform="translate({width - 8},{top + plot_h / 2:.1f}) rotate(90)" text-anchor="middle" '
                     f'{FONT} fill="{ORANGE}">{html.escape(right_label)}</text>')
        legend.append((right_label, ORANGE, ' stroke-dasharray="5,3"'))
    x = left
    for label, colour, dash in legend:
        parts.append(f'<line x1="{x}" y1="10" x2="{x + 18}" y2="10" stroke="{colour}" stroke-width="2"{dash}/>'
                     f'<text x="{x + 22}" y="14" {FONT}>{html.escape(label)}</text>')
        x += 30 + 7 * len(label)
    return "".join(parts) + "</svg>" + note


def _polyline(points: list[tuple[float, float]], colour: str, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="5,3"' if dashed else ""
    return (f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')


def grouped_bars(groups: dict[str, dict[str, float]], series: list[str], x_label: str = "accuracy",
                 high: float = 1.0, width: int = 640, bar: int = 12) -> str:
    """Horizontal bars: for each group (a question type) one bar per series that has a value for it (the model,
    each baseline), on one axis from 0 to `high` with its ticks; a legend names the series."""
    if not groups:
        return "<p>(nothing to plot)</p>"
    colours = {name: SERIES_COLOURS[i % len(SERIES_COLOURS)] for i, name in enumerate(series)}
    label_w, value_w, top, gap = 90, 40, 18 + 16 * len(series), 10
    plot_w = width - label_w - value_w
    ticks = nice_ticks(0, high)
    rows = [sum(1 for s in series if s in values) for values in groups.values()]
    plot_h = sum(n * bar + gap for n in rows)
    height = top + plot_h + 34

    def at_x(v):
        return label_w + v / ticks[-1] * plot_w

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(x_label)} by group">']
    for i, name in enumerate(series):
        parts.append(f'<rect x="{label_w}" y="{4 + 16 * i}" width="12" height="10" fill="{colours[name]}"/>'
                     f'<text x="{label_w + 18}" y="{13 + 16 * i}" {FONT}>{html.escape(name)}</text>')
    for v in ticks:
        parts.append(f'<line x1="{at_x(v):.1f}" y1="{top}" x2="{at_x(v):.1f}" y2="{top + plot_h}" stroke="#eee"/>'
                     f'<line x1="{at_x(v):.1f}" y1="{top + plot_h}" x2="{at_x(v):.1f}" y2="{top + plot_h + 4}" stroke="#999"/>'
                     f'<text x="{at_x(v):.1f}" y="{top + plot_h + 15}" text-anchor="middle" {FONT}>{tick_label(v, ticks)}</text>')
    y = top
    for group, values in groups.items():
        shown = [s for s in series if s in values]
        parts.append(f'<text x="{label_w - 6}" y="{y + len(shown) * bar / 2 + 4:.1f}" text-anchor="end" {FONT}>'
                     f'{html.escape(group)}</text>')
        for name in shown:
            value = values[name]
            parts.append(f'<rect x="{label_w}" y="{y + 1}" width="{max(0.0, at_x(value) - label_w):.1f}" height="{bar - 2}" '
                         f'fill="{colours[name]}"><title>{html.escape(name)}: {value:.3f}</title></rect>'
                         f'<text x="{at_x(value) + 3:.1f}" y="{y + bar - 2}" font-family="sans-serif" font-size="9">'
                         f'{value:.2f}</text>')
            y += bar
        y += gap
    parts.append(f'<line x1="{label_w}" y1="{top}" x2="{label_w}" y2="{top + plot_h}" stroke="#999"/>'
                 f'<line x1="{label_w}" y1="{top + plot_h}" x2="{label_w + plot_w}" y2="{top + plot_h}" stroke="#999"/>'
                 f'<text x="{label_w + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" {FONT}>'
                 f'{html.escape(x_label)}</text>')
    return "".join(parts) + "</svg>"
