"""Plain SVG drawn on the server: the rate sparkline, the who-talks-to-whom graph, and the time axis of the
timeline and of agents joining and leaving. No chart library, no script: markup with every text escaped.

Pure functions of numbers and names; the pages choose what to draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape


def sparkline(values: Sequence[int], width: int = 240, height: int = 36) -> Markup:
    """Records per second as a line with its area, the peak as a label."""
    peak = max(values, default=0) or 1
    n = max(len(values) - 1, 1)
    points = [(i * width / n, height - 2 - v * (height - 6) / peak) for i, v in enumerate(values)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    area = f"0,{height} {line} {width},{height}"
    now = values[-1] if values else 0
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="records per second, last {len(values)} s">'
        f'<polygon points="{area}" class="spark-area"/><polyline points="{line}" class="spark-line"/>'
        f'<title>{len(values)} s: peak {max(values, default=0)}/s, now {now}/s</title></svg>'
        f'<span class="rate-now">{now}/s · peak {max(values, default=0)}/s</span>')


@dataclass
class Edge:
    sender: str
    recipient: str | None  # None: to everyone
    count: int
    href: str


def graph(edges: list[Edge], colour: Callable[[str | None], str], size: int = 560) -> Markup:
    """Agents on a circle, an arrow per direction with its count; each arrow links to its messages."""
    names = sorted({e.sender for e in edges} | {e.recipient or "(everyone)" for e in edges})
    if not names:
        return Markup('<p class="empty">No messages with a sender yet.</p>')
    c, r = size / 2, size / 2 - 80
    place = {}
    for i, name in enumerate(names):
        angle = -math.pi / 2 + 2 * math.pi * i / len(names)
        place[name] = (c + r * math.cos(angle), c + r * math.sin(angle)) if len(names) > 1 else (c, c)
    peak = max(e.count for e in edges)
    parts = [f'<svg class="graph" viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img" '
             'aria-label="who talks to whom">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrow-head"/></marker></defs>']
    for e in sorted(edges, key=lambda e: e.count):
        a, b = place[e.sender], place[e.recipient or "(everyone)"]
        stroke = 1.5 + 5 * math.log1p(e.count) / math.log1p(peak)
        label = f"{e.sender} → {e.recipient or 'everyone'}: {e.count}"
        if a == b:  # to itself: a loop above the node
            x, y = a
            d = f"M{x - 8:.1f},{y - 22:.1f} C{x - 40:.1f},{y - 80:.1f} {x + 40:.1f},{y - 80:.1f} {x + 8:.1f},{y - 22:.1f}"
            mx, my = x, y - 70
        else:  # curved, so that A → B and B → A are two arrows
            dx, dy = b[0] - a[0], b[1] - a[1]
            dist = math.hypot(dx, dy)
            ux, uy = dx / dist, dy / dist
            sx, sy, ex, ey = a[0] + ux * 24, a[1] + uy * 24, b[0] - ux * 26, b[1] - uy * 26
            mx, my = (sx + ex) / 2 - uy * 28, (sy + ey) / 2 + ux * 28
            d = f"M{sx:.1f},{sy:.1f} Q{mx:.1f},{my:.1f} {ex:.1f},{ey:.1f}"
            mx, my = (sx + 2 * mx + ex) / 4, (sy + 2 * my + ey) / 4
        parts.append(
            f'<a href="{escape(e.href)}" class="edge" data-sender="{escape(e.sender)}" '
            f'data-recipient="{escape(e.recipient or "")}" data-count="{e.count}"><title>{escape(label)}</title>'
            f'<path d="{d}" stroke="{colour(e.sender)}" stroke-width="{stroke:.1f}" marker-end="url(#arrow)"/>'
            f'<text x="{mx:.1f}" y="{my:.1f}" class="edge-count">{e.count}</text></a>')
    for name, (x, y) in place.items():
        fill = colour(None if name == "(everyone)" else name)
        parts.append(f'<g class="node"><circle cx="{x:.1f}" cy="{y:.1f}" r="20" fill="{fill}"/>'
                     f'<text x="{x:.1f}" y="{y + 38:.1f}" class="node-name">{escape(name)}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass
class Mark:
    lane: str
    at: float  # epoch seconds
    label: str
    href: str | None = None
    css: str = ""


def time_axis(marks: list[Mark], lanes: Sequence[str], fmt: Callable[[float, float], str], width: int = 1100) -> Markup:
    """Each mark on its lane along one time axis (oldest left), with ticks labelled by ``fmt(time, span)``."""
    if not marks:
        return Markup('<p class="empty">Nothing to show on a time axis yet.</p>')
    left, right, lane_h, top = 150, 20, 34, 10
    start, end = min(m.at for m in marks), max(m.at for m in marks)
    span = max(end - start, 1.0)
    height = top + lane_h * len(lanes) + 40

    def x(at: float) -> float:
        return left + (at - start) / span * (width - left - right)

    parts = [f'<svg class="axis" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             'aria-label="timeline">']
    for i, lane in enumerate(lanes):
        y = top + i * lane_h + lane_h / 2
        parts.append(f'<text x="{left - 10}" y="{y + 4:.1f}" class="lane-name">{escape(lane)}</text>'
                     f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="lane"/>')
    axis_y = top + lane_h * len(lanes) + 6
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{axis_y}" y2="{axis_y}" class="tick-line"/>')
    for k in range(5):
        at = start + span * k / 4
        anchor = "start" if k == 0 else "end" if k == 4 else "middle"
        parts.append(f'<text x="{x(at):.1f}" y="{axis_y + 18}" text-anchor="{anchor}" class="tick">'
                     f'{escape(fmt(at, span))}</text>')
    row = {lane: i for i, lane in enumerate(lanes)}
    for m in marks:
        y = top + row[m.lane] * lane_h + lane_h / 2
        dot = (f'<circle cx="{x(m.at):.1f}" cy="{y:.1f}" r="6" class="mark {escape(m.css)}">'
               f'<title>{escape(m.label)}</title></circle>')
        parts.append(f'<a href="{escape(m.href)}">{dot}</a>' if m.href else dot)
    parts.append("</svg>")
    return Markup("".join(parts))
