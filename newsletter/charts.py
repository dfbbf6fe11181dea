"""Small charts as inline SVG for the report page: no script, no fonts or files fetched.

Each chart is a function from numbers to an ``<svg>`` string; every label and number is a
``<text>`` (so it can be read, copied and checked), and every bar or point carries its value
in ``data-value``. Colours come from the page's CSS custom properties, so the charts follow
light and dark mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

ROW = 30  # px per bar in the bar charts
LABEL_WIDTH = 210


def _svg(width: int, height: int, title: str, body: str, name: str) -> str:
    label = escape(title)
    return (f'<svg class="chart chart-{name}" role="img" aria-label="{label}" viewBox="0 0 {width} {height}" '
            f'width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">'
            f"<title>{label}</title>{body}</svg>")


def _number(n: int) -> str:
    return f"{n:,}"


def _short(text: str, limit: int = 28) -> str:
    text = text.removeprefix("https://").removeprefix("http://").removeprefix("www.")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bars(rows: Sequence[tuple[str, int]], title: str, name: str, *, width: int = 640) -> str:
    """Horizontal bars, one per (label, value), scaled to the largest value."""
    if not rows:
        return ""
    top = max((v for _l, v in rows), default=0) or 1
    span = width - LABEL_WIDTH - 70
    parts = []
    for i, (label, value) in enumerate(rows):
        y = i * ROW
        length = max(2.0, span * value / top) if value else 0.0
        shown = escape(_short(label))
        hover = f"<title>{escape(label)}: {_number(value)}</title>"
        parts.append(
            f'<g class="bar" data-label="{escape(label)}" data-value="{value}">{hover}'
            f'<text class="label" x="{LABEL_WIDTH - 10}" y="{y + 19}" text-anchor="end">{shown}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y + 5}" width="{length:.1f}" height="{ROW - 10}" rx="3"/>'
            f'<text class="value" x="{LABEL_WIDTH + length + 8:.1f}" y="{y + 19}">{_number(value)}</text></g>'
        )
    return _svg(width, ROW * len(rows) + 4, title, "".join(parts), name)


def funnel(steps: Sequence[tuple[str, int]], title: str) -> str:
    """The delivery funnel: each stage a bar scaled to the first, with its share of it."""
    if not steps:
        return ""
    first = steps[0][1] or 1
    width, span = 640, 640 - LABEL_WIDTH - 110
    parts = []
    for i, (label, value) in enumerate(steps):
        y = i * (ROW + 6)
        length = max(2.0, span * value / first) if value else 0.0
        share = f' <tspan class="share">({100 * value / first:.0f}%)</tspan>' if i else ""
        parts.append(
            f'<g class="stage" data-label="{escape(label)}" data-value="{value}">'
            f'<text class="label" x="{LABEL_WIDTH - 10}" y="{y + 21}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y + 5}" width="{length:.1f}" height="{ROW - 6}" rx="3"/>'
            f'<text class="value" x="{LABEL_WIDTH + length + 8:.1f}" y="{y + 21}">{_number(value)}{share}</text></g>'
        )
    return _svg(width, (ROW + 6) * len(steps), title, "".join(parts), "funnel")


def weeks(labels: Sequence[str], size: Sequence[int], joined: Sequence[int], left: Sequence[int],
          title: str) -> str:
    """List size as a line over the weeks, with joins (up) and leaves (down) as bars."""
    if not labels:
        return ""
    width, height = 640, 260
    left_pad, right_pad, top, bottom = 56, 16, 16, 44
    plot_w, plot_h = width - left_pad - right_pad, height - top - bottom
    line_h = plot_h * 0.62  # the upper part: list size
    flow_mid = top + line_h + (plot_h - line_h) / 2  # the lower part: joins above, leaves below
    flow_half = (plot_h - line_h) / 2 - 4
    n = len(labels)
    step = plot_w / n
    lo, hi = min(size), max(size)
    if hi == lo:
        lo, hi = max(0, lo - 1), hi + 1

    def y_of(value: int) -> float:
        return top + line_h - (value - lo) / (hi - lo) * (line_h - 8) - 4

    flow_top = max(max(joined, default=0), max(left, default=0)) or 1
    parts = [f'<line class="axis" x1="{left_pad}" y1="{flow_mid:.1f}" x2="{width - right_pad}" y2="{flow_mid:.1f}"/>',
             f'<text class="tick" x="{left_pad - 6}" y="{y_of(hi) + 4:.1f}" text-anchor="end">{_number(hi)}</text>',
             f'<text class="tick" x="{left_pad - 6}" y="{y_of(lo) + 4:.1f}" text-anchor="end">{_number(lo)}</text>']
    points = []
    for i, label in enumerate(labels):
        x = left_pad + step * i + step / 2
        up = flow_half * joined[i] / flow_top
        down = flow_half * left[i] / flow_top
        bar = max(4.0, step * 0.42)
        parts.append(
            f'<g class="week" data-week="{escape(label)}" data-size="{size[i]}" data-joined="{joined[i]}" '
            f'data-left="{left[i]}"><title>{escape(label)}: {_number(size[i])} readers, '
            f'{_number(joined[i])} joined, {_number(left[i])} left</title>'
            f'<rect class="joined" x="{x - bar / 2:.1f}" y="{flow_mid - up:.1f}" width="{bar:.1f}" height="{up:.1f}" rx="2"/>'
            f'<rect class="left" x="{x - bar / 2:.1f}" y="{flow_mid:.1f}" width="{bar:.1f}" height="{down:.1f}" rx="2"/>'
            f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 20}" text-anchor="middle">{escape(label)}</text></g>'
        )
        points.append(f"{x:.1f},{y_of(size[i]):.1f}")
    parts.append(f'<polyline class="size" points="{" ".join(points)}" fill="none"/>')
    for point, value in zip(points, size, strict=True):
        x, y = point.split(",")
        parts.append(f'<circle class="size" cx="{x}" cy="{y}" r="3.5" data-value="{value}"/>')
    last_x, last_y = points[-1].split(",")
    parts.append(f'<text class="value" x="{float(last_x) - 6:.1f}" y="{float(last_y) - 9:.1f}" '
                 f'text-anchor="end">{_number(size[-1])} readers</text>')
    parts.append(f'<text class="legend joined" x="{left_pad}" y="{height - 6}">▲ joined</text>'
                 f'<text class="legend left" x="{left_pad + 80}" y="{height - 6}">▼ left</text>')
    return _svg(width, height, title, "".join(parts), "weeks")
