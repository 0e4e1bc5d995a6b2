"""The report's charts as inline SVG, with axes, ticks and legends: no plotting library, one HTML file."""
from __future__ import annotations

import html
import math

BLUE, ORANGE, GREY = "#1f77b4", "#ff7f0e", "#7f7f7f"
SERIES_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#d62728", "#8c564b", "#7f7f7f")
DASHED = ' stroke-dasharray="5,3"'


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
    xs = [p[0] for p in curve] + [p[0] for p in right]
    x_ticks = nice_ticks(min(xs), max(xs), whole=all(float(x).is_integer() for x in xs))
    y_ticks = nice_ticks(min(p[1] for p in curve), max(p[1] for p in curve))
    plot_w, plot_h = width - left - right_margin, height - top - bottom
    bottom_y, edge = top + plot_h, left + plot_w

    def at_x(x):
        return left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * plot_w

    def at(y, ticks):
        return bottom_y - (y - ticks[0]) / (ticks[-1] - ticks[0]) * plot_h

    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(y_label)} by {html.escape(x_label)}">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for x in x_ticks:  # grid line, tick mark, label
        parts += [_line(at_x(x), top, at_x(x), bottom_y, "#eee"), _line(at_x(x), bottom_y, at_x(x), bottom_y + 4),
                  _text(at_x(x), bottom_y + 15, tick_label(x, x_ticks), anchor="middle")]
    for y in y_ticks:
        level = at(y, y_ticks)
        parts += [_line(left, level, edge, level, "#eee"), _line(left - 4, level, left, level),
                  _text(left - 6, level + 4, tick_label(y, y_ticks), anchor="end")]
    parts += [_polyline([(at_x(x), at(y, y_ticks)) for x, y in curve], BLUE),
              _text(left + plot_w / 2, height - 6, x_label, anchor="middle"),
              _text(0, 0, y_label, anchor="middle", colour=BLUE, turned=(14, top + plot_h / 2, -90))]
    legend = [(y_label, BLUE, "")]
    if right:
        r_ticks = nice_ticks(min(0.0, min(p[1] for p in right)), max(p[1] for p in right))
        for y in r_ticks:
            parts += [_line(edge, at(y, r_ticks), edge + 4, at(y, r_ticks), ORANGE),
                      _text(edge + 6, at(y, r_ticks) + 4, tick_label(y, r_ticks), colour=ORANGE)]
        parts += [_polyline([(at_x(x), at(y, r_ticks)) for x, y in right], ORANGE, dashed=True),
                  _text(0, 0, right_label, anchor="middle", colour=ORANGE, turned=(width - 8, top + plot_h / 2, 90))]
        legend.append((right_label, ORANGE, DASHED))
    x = left
    for label, colour, dash in legend:
        parts += [f'<line x1="{x}" y1="10" x2="{x + 18}" y2="10" stroke="{colour}" stroke-width="2"{dash}/>',
                  _text(x + 22, 14, label)]
        x += 30 + 7 * len(label)
    return "".join(parts) + "</svg>" + note


def _line(x1: float, y1: float, x2: float, y2: float, colour: str = "#999") -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}"/>'


def _text(x: float, y: float, content, anchor: str = "", colour: str = "", size: int = 11,
          turned: tuple[float, float, int] | None = None) -> str:
    """An SVG text at (x, y), or rotated by turned[2] degrees about (turned[0], turned[1]) (an axis title)."""
    where = (f'transform="translate({turned[0]:.1f},{turned[1]:.1f}) rotate({turned[2]})"' if turned
             else f'x="{x:.1f}" y="{y:.1f}"')
    anchor = f' text-anchor="{anchor}"' if anchor else ""
    colour = f' fill="{colour}"' if colour else ""
    return (f'<text {where}{anchor} font-family="sans-serif" font-size="{size}"{colour}>'
            f'{html.escape(str(content))}</text>')


def _polyline(points: list[tuple[float, float]], colour: str, dashed: bool = False) -> str:
    return (f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{DASHED if dashed else ""} points="'
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
    plot_h = sum(sum(1 for s in series if s in values) * bar + gap for values in groups.values())
    bottom_y, height = top + plot_h, top + plot_h + 34

    def at_x(v):
        return label_w + v / ticks[-1] * plot_w

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(x_label)} by group">']
    for i, name in enumerate(series):
        parts += [f'<rect x="{label_w}" y="{4 + 16 * i}" width="12" height="10" fill="{colours[name]}"/>',
                  _text(label_w + 18, 13 + 16 * i, name)]
    for v in ticks:
        parts += [_line(at_x(v), top, at_x(v), bottom_y, "#eee"), _line(at_x(v), bottom_y, at_x(v), bottom_y + 4),
                  _text(at_x(v), bottom_y + 15, tick_label(v, ticks), anchor="middle")]
    y = top
    for group, values in groups.items():
        shown = [s for s in series if s in values]
        parts.append(_text(label_w - 6, y + len(shown) * bar / 2 + 4, group, anchor="end"))
        for name in shown:
            value = values[name]
            parts += [f'<rect x="{label_w}" y="{y + 1}" width="{max(0.0, at_x(value) - label_w):.1f}" '
                      f'height="{bar - 2}" fill="{colours[name]}">'
                      f'<title>{html.escape(name)}: {value:.3f}</title></rect>',
                      _text(at_x(value) + 3, y + bar - 2, f"{value:.2f}", size=9)]
            y += bar
        y += gap
    parts += [_line(label_w, top, label_w, bottom_y), _line(label_w, bottom_y, label_w + plot_w, bottom_y),
              _text(label_w + plot_w / 2, height - 4, x_label, anchor="middle")]
    return "".join(parts) + "</svg>"
