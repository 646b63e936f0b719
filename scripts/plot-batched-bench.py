#!/usr/bin/env python3
"""Plot aggregate generation throughput (S_TG, tokens/s) against the number of parallel
sequences (log2 axis) from rg-batched-bench and llama-batched-bench results, as an SVG.

    scripts/plot-batched-bench.py rgemma=rg.json llama.cpp=llama.jsonl -o tg.svg

Each input is `name=path`; the name labels its line(s) in the legend. A file may be
rg-batched-bench's `-o json` (a JSON array), its `-o jsonl`, or llama-batched-bench's
`--output-format jsonl` (one object per line; lines that are not JSON objects, such as a
captured log, are skipped). Rows need the fields `pp`, `tg`, `pl` and `speed_tg`, which
both tools write. A file with several (pp, tg) pairs gives one line per pair unless
`--pp` / `--tg` pick one.

Standard library only: the SVG is written by hand.
"""

import argparse
import json
import math
import sys
from html import escape

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
MARKERS = ["circle", "square", "diamond", "triangle"]


def load_rows(path):
    """Objects of a JSON array/object file, or of a JSON-lines file (other lines skipped)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            return [data]
        if isinstance(data, list):
            return [r for r in data if isinstance(r, dict)]
    except json.JSONDecodeError:
        pass
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def series_of(name, rows, pp, tg):
    """{label: [(pl, speed_tg), ...]} for one input."""
    groups = {}
    for r in rows:
        try:
            key = (int(r["pp"]), int(r["tg"]))
            point = (int(r["pl"]), float(r["speed_tg"]))
        except (KeyError, TypeError, ValueError):
            continue
        if (pp is not None and key[0] != pp) or (tg is not None and key[1] != tg):
            continue
        if point[0] < 1 or not math.isfinite(point[1]):
            continue
        groups.setdefault(key, []).append(point)
    out = {}
    for (p, t), pts in sorted(groups.items()):
        label = name if len(groups) == 1 else f"{name} (PP {p}, TG {t})"
        out[label] = sorted(pts)
    return out


def nice_step(span, target=6):
    """A 1/2/5 x 10^k step giving about `target` intervals over `span`."""
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt_tick(v):
    if v == int(v):
        return f"{int(v):,}".replace(",", "\u2009")
    return f"{v:g}"


def marker(kind, x, y, colour):
    r = 4
    if kind == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colour}"/>'
    if kind == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" fill="{colour}"/>'
    if kind == "diamond":
        return (f'<polygon points="{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} '
                f'{x:.1f},{y + r + 1:.1f} {x - r - 1:.1f},{y:.1f}" fill="{colour}"/>')
    return (f'<polygon points="{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y + r:.1f} '
            f'{x - r - 1:.1f},{y + r:.1f}" fill="{colour}"/>')


def render(series, title, width=760, plot_height=380):
    left, right, top, axis_band = 78, 24, 48, 64
    # The legend sits under the x axis label, so that it never hides a point.
    legend_h = 20 * len(series) + 12
    height = top + plot_height + axis_band + legend_h + 12
    pw, ph = width - left - right, plot_height
    pls = [pl for pts in series.values() for pl, _ in pts]
    speeds = [s for pts in series.values() for _, s in pts]
    x_lo, x_hi = math.floor(math.log2(min(pls))), math.ceil(math.log2(max(pls)))
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_step = nice_step(max(speeds) or 1.0)
    y_hi = y_step * math.ceil(max(speeds) * 1.05 / y_step)

    def px(pl):
        return left + (math.log2(pl) - x_lo) / (x_hi - x_lo) * pw

    def py(s):
        return top + ph - s / y_hi * ph

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
         f'font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{left + pw / 2:.1f}" y="26" text-anchor="middle" font-size="15">{escape(title)}</text>']
    # Grid and ticks.
    for k in range(x_lo, x_hi + 1):
        x = px(2 ** k)
        o.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#e4e4e4"/>')
        o.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 5}" stroke="black"/>')
        o.append(f'<text x="{x:.1f}" y="{top + ph + 19}" text-anchor="middle">{2 ** k}</text>')
    n_y = round(y_hi / y_step)
    for i in range(n_y + 1):
        v = i * y_step
        y = py(v)
        o.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        o.append(f'<line x1="{left - 5}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="black"/>')
        o.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{fmt_tick(round(v, 9))}</text>')
    o.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    # Axis labels.
    o.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 46}" text-anchor="middle" font-size="13">'
             'parallel sequences (B, -npl; log2 scale)</text>')
    o.append(f'<text transform="translate(20 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
             'font-size="13">aggregate generation speed S_TG (tokens/s)</text>')
    # Lines.
    for i, (label, pts) in enumerate(series.items()):
        colour, kind = COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]
        path = " ".join(f"{px(pl):.1f},{py(s):.1f}" for pl, s in pts)
        o.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        o.extend(marker(kind, px(pl), py(s), colour) for pl, s in pts)
    # Legend.
    lw = 40 + 7 * max(len(label) for label in series)
    lx, ly = left + (pw - lw) / 2, top + ph + axis_band
    o.append(f'<rect x="{lx}" y="{ly}" width="{lw}" height="{legend_h}" fill="white" '
             'fill-opacity="0.9" stroke="#999"/>')
    for i, label in enumerate(series):
        colour, kind = COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]
        y = ly + 16 + 20 * i
        o.append(f'<line x1="{lx + 8}" y1="{y}" x2="{lx + 28}" y2="{y}" stroke="{colour}" stroke-width="2"/>')
        o.append(marker(kind, lx + 18, y, colour))
        o.append(f'<text x="{lx + 34}" y="{y + 4}">{escape(label)}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", metavar="NAME=PATH",
                    help="a result file and the name of its line in the legend")
    ap.add_argument("-o", "--output", default="batched-bench.svg", help="SVG to write")
    ap.add_argument("--pp", type=int, help="only rows with this prompt length")
    ap.add_argument("--tg", type=int, help="only rows with this generation length")
    ap.add_argument("--title", default="Batched decoding throughput")
    args = ap.parse_args()

    series = {}
    for spec in args.inputs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            sys.exit(f"error: '{spec}': expected NAME=PATH")
        try:
            rows = load_rows(path)
        except OSError as e:
            sys.exit(f"error: {path}: {e.strerror}")
        found = series_of(name, rows, args.pp, args.tg)
        if not found:
            sys.exit(f"error: {path}: no rows with pp, tg, pl and speed_tg"
                     + (" matching --pp/--tg" if args.pp or args.tg else ""))
        for label, pts in found.items():
            if label in series:
                sys.exit(f"error: two inputs named '{label}'")
            series[label] = pts
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(render(series, args.title))
    print(f"wrote {args.output} ({len(series)} line(s))", file=sys.stderr)


if __name__ == "__main__":
    main()
