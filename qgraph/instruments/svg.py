"""Inline SVG for the HTML report: stacked bar charts, horizontal bars, small layered graphs.

Everything is a string of SVG markup with no scripts, fonts or external references, so the page
works offline from ``file://``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)


def _fmt(n: float) -> str:
    return f"{n:g}"


def stacked_bars(
    title: str,
    x_labels: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    value_format: Callable[[float], str] = _fmt,
    height: int = 220,
    bar: int = 22,
) -> str:
    """Vertical bars, one per x label, stacked by series; a legend on the right."""
    names = list(series)
    totals = [sum(series[s][i] for s in names) for i in range(len(x_labels))]
    top = max(totals, default=0) or 1
    left, bottom, gap = 56, 90, 6
    width = left + len(x_labels) * (bar + gap) + 10
    legend_x = width + 10
    full_w = legend_x + 190
    full_h = max(height + bottom + 30, 30 + 16 * len(names))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{full_w}" '
        f'height="{full_h}" role="img" aria-label="{escape(title)}">',
        f'<text x="4" y="16" class="ct">{escape(title)}</text>',
        f'<line x1="{left}" y1="{30 + height}" x2="{width}" y2="{30 + height}" class="ax"/>',
        f'<text x="{left - 4}" y="36" class="tick" text-anchor="end">{value_format(top)}</text>',
        f'<text x="{left - 4}" y="{30 + height}" class="tick" text-anchor="end">0</text>',
    ]
    for i, label in enumerate(x_labels):
        x = left + i * (bar + gap) + gap
        y = 30 + height
        for k, s in enumerate(names):
            v = series[s][i]
            if v <= 0:
                continue
            h = height * v / top
            y -= h
            out.append(
                f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{h:.1f}" '
                f'fill="{PALETTE[k % len(PALETTE)]}"><title>{escape(label)}: {escape(s)} '
                f"{value_format(v)}</title></rect>"
            )
        lx, ly = x + bar / 2, 30 + height + 6
        out.append(
            f'<text x="{lx:.1f}" y="{ly}" class="tick" text-anchor="end" '
            f'transform="rotate(-60 {lx:.1f} {ly})">{escape(label[:22])}</text>'
        )
    for k, s in enumerate(names):
        y = 30 + 16 * k
        out.append(
            f'<rect x="{legend_x}" y="{y - 9}" width="10" height="10" '
            f'fill="{PALETTE[k % len(PALETTE)]}"/>'
            f'<text x="{legend_x + 14}" y="{y}" class="tick">{escape(s[:28])}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def hbars(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    value_format: Callable[[float], str] = _fmt,
    width: int = 420,
) -> str:
    """Horizontal bars with their labels on the left and values on the right."""
    top = max(values, default=0) or 1
    left, row = 230, 16
    full_h = 28 + row * len(labels)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{left + width + 90}" '
        f'height="{full_h}" role="img" aria-label="{escape(title)}">',
        f'<text x="4" y="16" class="ct">{escape(title)}</text>',
    ]
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = 24 + row * i
        w = width * v / top
        out.append(
            f'<text x="{left - 6}" y="{y + 11}" class="tick" text-anchor="end">'
            f"{escape(label[:34])}</text>"
            f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 4}" fill="{PALETTE[0]}">'
            f"<title>{escape(label)}: {value_format(v)}</title></rect>"
            f'<text x="{left + w + 4:.1f}" y="{y + 11}" class="tick">{value_format(v)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


ARROW_DEFS = (
    '<svg width="0" height="0" style="position:absolute"><defs><marker id="arrow" '
    'viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto">'
    '<path d="M0,0L10,5L0,10z" fill="#777"/></marker></defs></svg>'
)
"""Put once in the page: the arrowhead every ``layered_graph`` edge refers to."""


def layered_graph(picture: dict, *, changed_class: str) -> str:
    """A small DAG (``{"nodes": [[op, name, changed], ...], "edges": [[src, dst], ...]}``)
    drawn top to bottom in layers by longest path from a source; changed nodes get
    ``changed_class``."""
    nodes, edges = picture["nodes"], picture["edges"]
    if not nodes:
        return '<div class="empty">(nothing)</div>'
    preds: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for a, b in edges:
        preds[b].append(a)
    depth: dict[int, int] = {}

    def layer(i: int, seen: frozenset = frozenset()) -> int:
        if i not in depth:
            ps = [p for p in preds[i] if p not in seen]
            depth[i] = 1 + max((layer(p, seen | {i}) for p in ps), default=-1)
        return depth[i]

    for i in range(len(nodes)):
        layer(i)
    rows: dict[int, list[int]] = {}
    for i in range(len(nodes)):
        rows.setdefault(depth[i], []).append(i)
    bw, bh, gx, gy = 176, 34, 12, 24
    widest = max(len(r) for r in rows.values())
    width = widest * (bw + gx) + gx
    height = len(rows) * (bh + gy) + gy
    pos = {}
    for d, members in rows.items():
        offset = (width - len(members) * (bw + gx) + gx) / 2
        for k, i in enumerate(members):
            pos[i] = (offset + k * (bw + gx), gy + d * (bh + gy))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width:.0f}" '
        f'height="{height}" viewBox="0 0 {width:.0f} {height}">',
    ]
    for a, b in edges:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        out.append(
            f'<line x1="{x1 + bw / 2:.1f}" y1="{y1 + bh}" x2="{x2 + bw / 2:.1f}" y2="{y2}" '
            f'class="edge" marker-end="url(#arrow)"/>'
        )
    for i, (op, name, changed) in enumerate(nodes):
        x, y = pos[i]
        cls = changed_class if changed else "ctx"
        short = name if len(name) <= 30 else "…" + name[-29:]
        out.append(
            f'<g class="{cls}"><title>{escape(op)} {escape(name)}</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{bw}" height="{bh}" rx="5"/>'
            f'<text x="{x + bw / 2:.1f}" y="{y + 14}" class="op">{escape(op[:30])}</text>'
            f'<text x="{x + bw / 2:.1f}" y="{y + 27}" class="nm">{escape(short)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)
