"""A small line plot drawn with Pillow: one PNG, several labelled series, optional log axes.

dpms draws its few figures (FID vs NFE) without matplotlib, which is not a dependency:

    line_plot([Series("dpm3", [10, 12, 15], [4.7, 3.75, 3.24])], "fid_vs_nfe.png",
              x_label="NFE", y_label="FID", log_y=True)

Points that cannot be drawn (NaN, inf, or ≤ 0 on a log axis) are left out of their series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Colour-blind-aware qualitative palette (Okabe–Ito, then Tableau's), cycled with marker shapes so
# that 15+ series stay distinguishable.
PALETTE = [
    (0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
    (0, 0, 0), (170, 150, 0), (148, 103, 189), (140, 86, 75), (127, 127, 127), (188, 189, 34),
    (23, 190, 207), (214, 39, 40), (44, 160, 44), (31, 119, 180),
]
MARKERS = ("circle", "square", "triangle", "diamond")


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    lines: bool = True  # False: markers only (e.g. an adaptive solver's single point)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


class _Axis:
    """Maps data values to pixels on a linear or log scale."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool):
        self.log = log
        f = math.log10 if log else float
        self.lo, self.hi = f(lo), f(hi)
        if self.hi - self.lo < 1e-12:  # a single value: give it a visible span
            pad = 0.5 if log else max(abs(self.lo) * 0.1, 1.0)
            self.lo, self.hi = self.lo - pad, self.hi + pad
        self.p0, self.p1 = p0, p1

    def __call__(self, v: float) -> float:
        u = math.log10(v) if self.log else v
        return self.p0 + (u - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)

    def data_range(self) -> tuple[float, float]:
        return (10**self.lo, 10**self.hi) if self.log else (self.lo, self.hi)


def nice_ticks(lo: float, hi: float, log: bool, max_ticks: int = 8) -> list[float]:
    """Tick values inside [lo, hi]: 1-2-5 steps on a linear axis; 1, 2, 5 × 10^k on a log axis
    (only powers of ten when the span is more than three decades)."""
    if log:
        k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        mantissas = (1,) if k1 - k0 > 3 else (1, 2, 5)
        ticks = [m * 10.0**k for k in range(k0, k1 + 1) for m in mantissas]
        return [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    raw = (hi - lo) / max(1, max_ticks - 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.0e}"


def _marker(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float, color) -> None:
    if kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
    elif kind == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=color)
    elif kind == "triangle":
        draw.polygon([(x, y - r * 1.2), (x - r * 1.1, y + r * 0.9), (x + r * 1.1, y + r * 0.9)], fill=color)
    else:
        draw.polygon([(x, y - r * 1.3), (x + r * 1.1, y), (x, y + r * 1.3), (x - r * 1.1, y)], fill=color)


def _drawable(s: Series, log_x: bool, log_y: bool) -> list[tuple[float, float]]:
    def ok(v: float, log: bool) -> bool:
        return v is not None and math.isfinite(v) and (v > 0 or not log)

    return sorted((float(a), float(b)) for a, b in zip(s.x, s.y) if ok(a, log_x) and ok(b, log_y))


def line_plot(
    series: list[Series],
    path: str | Path,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    log_x: bool = False,
    log_y: bool = False,
    x_ticks: list[float] | None = None,
    size: tuple[int, int] = (1000, 640),
) -> None:
    """Draw `series` into a PNG at `path` (written whole; the folder must exist).

    x_ticks: tick positions on x (default: automatic). The legend lists every series, also those
    with nothing drawable.
    """
    width, height = size
    font, small = _font(16), _font(13)
    points = {id(s): _drawable(s, log_x, log_y) for s in series}
    xs = [p[0] for ps in points.values() for p in ps] or [1.0]
    ys = [p[1] for ps in points.values() for p in ps] or [1.0]
    legend_w = 20 + max((int(small.getlength(s.label)) for s in series), default=0) + 40
    left, right, top, bottom = 80, width - legend_w - 10, 40 if title else 20, height - 60
    # A little margin around the data so that markers sit inside the frame.
    pad_x = (0.04 * math.log10(max(xs) / min(xs)) if log_x else 0.04 * (max(xs) - min(xs)))
    pad_y = (0.06 * math.log10(max(ys) / min(ys)) if log_y else 0.06 * (max(ys) - min(ys)))
    x_lo, x_hi = (min(xs) / 10**pad_x, max(xs) * 10**pad_x) if log_x else (min(xs) - pad_x, max(xs) + pad_x)
    y_lo, y_hi = (min(ys) / 10**pad_y, max(ys) * 10**pad_y) if log_y else (min(ys) - pad_y, max(ys) + pad_y)
    ax_x = _Axis(x_lo, x_hi, left, right, log_x)
    ax_y = _Axis(y_lo, y_hi, bottom, top, log_y)

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    grey, dark = (225, 225, 225), (60, 60, 60)
    lo, hi = ax_y.data_range()
    for t in nice_ticks(lo, hi, log_y):
        py = ax_y(t)
        draw.line((left, py, right, py), fill=grey)
        label = _fmt(t)
        draw.text((left - 8 - small.getlength(label), py - 8), label, fill=dark, font=small)
    lo, hi = ax_x.data_range()
    for t in [v for v in x_ticks if lo <= v <= hi] if x_ticks else nice_ticks(lo, hi, log_x):
        px = ax_x(t)
        draw.line((px, top, px, bottom), fill=grey)
        label = _fmt(t)
        draw.text((px - small.getlength(label) / 2, bottom + 6), label, fill=dark, font=small)
    draw.rectangle((left, top, right, bottom), outline=dark)
    if title:
        draw.text(((left + right) / 2 - font.getlength(title) / 2, 10), title, fill=(0, 0, 0), font=font)
    draw.text(((left + right) / 2 - font.getlength(x_label) / 2, height - 30), x_label, fill=(0, 0, 0), font=font)
    y_text = Image.new("RGB", (int(font.getlength(y_label)) + 4, 22), "white")
    ImageDraw.Draw(y_text).text((2, 0), y_label, fill=(0, 0, 0), font=font)
    rotated = y_text.rotate(90, expand=True)
    image.paste(rotated, (8, int((top + bottom) / 2 - rotated.height / 2)))

    for k, s in enumerate(series):
        color, marker = PALETTE[k % len(PALETTE)], MARKERS[(k // len(PALETTE) + k) % len(MARKERS)]
        pixels = [(ax_x(a), ax_y(b)) for a, b in points[id(s)]]
        if s.lines and len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for px, py in pixels:
            _marker(draw, marker, px, py, 4, color)
        ly = top + 6 + k * 20
        _marker(draw, marker, right + 22, ly + 8, 4, color)
        if s.lines:
            draw.line((right + 12, ly + 8, right + 32, ly + 8), fill=color, width=2)
        draw.text((right + 40, ly), s.label, fill=(0, 0, 0), font=small)
    image.save(path)
