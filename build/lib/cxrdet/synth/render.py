"""The chest renderer every synthetic format draws with: one chest-like radiograph (lungs, heart, mediastinum, ribs,
clavicles, diaphragm, soft tissue, film noise), textured opacities inside the labelled boxes, and unlabelled
distractors (nodules, tubes, wires, haze, effusions). `render_image` takes what the labels say; the format modules
(`cxrdet.synth.rsna`, `cxrdet.synth.nih`) decide what to draw and how to write it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from cxrdet.errors import ConfigError

IMAGE_SIZE: Final = 1024
DISTRACTORS: Final = ("nodule", "tube", "wire", "haze", "effusion")
# The labelled box is this fraction of the opacity's visible width and height (RSNA 1st place shrank by 0.875).
BOX_TO_VISIBLE: Final = 0.875

# ---- anatomy ----
# Anatomy is built as a density map D in arbitrary units (0 = air outside the body, about 0.5 = soft tissue, more for
# bone and heart) on a coarse grid, upsampled to 1024 and mapped to 8 bits: MONOCHROME2, bright = dense.
# Geometry is stated in pixels of the 1024 x 1024 output image; the grid has `grid` pixels per side.
# `Lung`, `Anatomy`, `Canvas`, `LungField`, `Layers`, `Signs`, `smoothstep`, `smooth_noise` and `child_rng` are
# public so that other generators (`cxrdet.synth.nih`) can draw their own findings into the same
# chest through `render_image`.

_AIR: Final = 0.8  # fraction of the trunk's tissue path that full-depth lung air replaces
_SOFT: Final = 0.5  # soft-tissue density of the trunk


@dataclass(frozen=True)
class Lung:
    """One lung field; `sign` -1 is the image-left lung (patient's right), +1 the image-right lung."""

    sign: int
    med: float  # medial edge: distance from the midline, pixels of 1024
    lat: float  # lateral edge at the widest row
    apex: float  # y of the apex
    cp: float  # y of the costophrenic angle, the lowest point of the lung
    dome: float  # height of the diaphragm dome above the costophrenic angle

    @property
    def height(self) -> float:
        return self.cp - self.apex


@dataclass(frozen=True)
class Anatomy:
    """One patient's geometry, pixels of the 1024 output image."""

    mid: float  # x of the body midline
    lungs: tuple[Lung, Lung]
    heart_width: float
    heart_top: float
    body_half: float  # half-width of the chest wall
    neck_half: float
    shoulder_y: float
    clavicle_drop: float  # how far the sternal end of the clavicle sits below the apex, in lung heights


def smoothstep(x: npt.NDArray[np.floating[Any]] | float) -> Any:
    """0 below 0, 1 above 1, a smooth cubic in between."""
    t = np.clip(x, 0.0, 1.0)
    if isinstance(t, np.ndarray):
        # In place: these run on full render grids many times per image.
        out = np.multiply(t, -2.0, dtype=t.dtype)
        out += 3.0
        out *= t
        out *= t
        return out
    return t * t * (3.0 - 2.0 * t)


def _visible_xyxy(boxes_xyxy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The visible extent of the opacity behind each box: the box grown by `1 / BOX_TO_VISIBLE` around its centre
    (xyxy pixels of 1024, not clipped)."""
    from cxrdet.boxes import shrink_xyxy

    return shrink_xyxy(boxes_xyxy, 1.0 / BOX_TO_VISIBLE)


def _sample_anatomy(rng: np.random.Generator, view: str, sex: str, boxes_xyxy: npt.NDArray[np.float64]) -> Anatomy:
    """Draw the patient's geometry, then grow the lungs where needed so every box lies in a lung field.

    AP (portable, supine, bedside) films magnify the heart, project the clavicles higher, show a shallower inspiration
    (higher diaphragm) and less careful centring than PA films.
    """
    ap = view == "AP"
    mid = IMAGE_SIZE / 2 + rng.normal(0, 18 if ap else 10)
    scale = rng.normal(1.0, 0.04) * (0.96 if sex == "F" else 1.0)
    apex = rng.normal(150 if ap else 140, 18)
    cp = rng.normal(810 if ap else 865, 28)
    lat = rng.normal(385, 20) * scale
    lungs = []
    for sign in (-1, 1):
        # The right hemidiaphragm (image-left) sits higher: the liver lies under it.
        lung_cp = cp - (rng.normal(22, 8) if sign == -1 else 0.0)
        lung = Lung(sign, rng.normal(72, 8), lat * rng.normal(1.0, 0.025), apex + rng.normal(0, 8), lung_cp,
                     rng.normal(115, 18))  # fmt: skip
        vis = _visible_xyxy(boxes_xyxy)
        vis = vis[(vis[:, 0] + vis[:, 2] < 2 * mid) == (sign == -1)]
        if len(vis):
            dist = np.abs(vis[:, [0, 2]] - mid)
            inner = np.where((vis[:, 0] < mid) & (vis[:, 2] > mid), 0.0, dist.min(axis=1)).min()
            lung = Lung(sign, min(lung.med, max(20.0, inner - 10)), max(lung.lat, dist.max() / 0.96 + 10),
                         min(lung.apex, float(vis[:, 1].min()) - 10),
                         min(1000.0, max(lung.cp, float(vis[:, 3].max()) + 0.5 * lung.dome)), lung.dome)  # fmt: skip
        lungs.append(lung)
    ctr = rng.normal(0.54, 0.05) if ap else rng.normal(0.45, 0.04)
    heart_width = ctr * (lungs[0].lat + lungs[1].lat)
    heart_top = apex + (0.40 if ap else 0.44) * (cp - apex) + rng.normal(0, 15)
    body_half = max(lungs[0].lat, lungs[1].lat) + rng.normal(75 if ap else 60, 15)
    clavicle_drop = rng.normal(0.02 if ap else 0.13, 0.03)
    # The shoulders' top sits just above the clavicles' lateral ends.
    shoulder_y = apex + (clavicle_drop - 0.12) * (cp - apex) - rng.normal(50, 10)
    return Anatomy(mid, (lungs[0], lungs[1]), heart_width, heart_top, body_half, rng.normal(100, 10), shoulder_y,
                    clavicle_drop)  # fmt: skip


class Canvas:
    """Coordinate grids of the coarse render grid, in pixels of the 1024 output image."""

    def __init__(self, grid: int) -> None:
        self.grid = grid
        self.step = IMAGE_SIZE / grid
        axis = (np.arange(grid, dtype=np.float32) + 0.5) * self.step
        self.x = axis[None, :]
        self.y = axis[:, None]

    def to_grid(self, v: npt.ArrayLike) -> Any:
        """Pixels of 1024 -> grid pixel units (continuous)."""
        return np.asarray(v, dtype=np.float64) / self.step

    def window(self, x1: float, y1: float, x2: float, y2: float) -> tuple[slice, slice]:
        """Row and column slices of the grid covering the 1024-pixel rectangle (clipped to the grid)."""
        g = self.grid
        c0, c1 = (int(np.clip(np.floor(v / self.step), 0, g)) for v in (x1, x2 + self.step))
        r0, r1 = (int(np.clip(np.floor(v / self.step), 0, g)) for v in (y1, y2 + self.step))
        return slice(r0, r1), slice(c0, c1)



@dataclass(frozen=True)
class LungField:
    """A lung's binary mask on the full grid, and on the window around it: its lateral coordinate `u` (0 at the
    medial edge, 1 at the lateral edge) and the y of its lower edge (pixels of 1024) per pixel."""

    mask: npt.NDArray[np.bool_]
    rows: slice
    cols: slice
    u: Any
    bottom: Any


def _lung_field(c: Canvas, a: Anatomy, lung: Lung) -> LungField:
    """Rasterise one lung (computed on its bounding window only: the field is a third of the grid)."""
    near, far = a.mid + lung.sign * (lung.med - 40), a.mid + lung.sign * (lung.lat + 40)
    rows, cols = c.window(min(near, far), lung.apex - 40, max(near, far), lung.cp + 40)
    x, y = c.x[:, cols], c.y[rows, :]
    t = np.clip((y - lung.apex) / lung.height, 0.0, 1.0)
    # The lateral wall slopes outwards down to the lower third, where the lung is widest.
    lat_row = lung.med + (lung.lat - lung.med) * (0.86 + 0.14 * smoothstep(t / 0.75))
    u = (lung.sign * (x - a.mid) - lung.med) / (lat_row - lung.med)
    # The apex is a rounded cap peaking a third of the way out; the lateral wall meets it lower than the medial one.
    off = np.abs(u - 0.35)
    top = lung.apex + lung.height * np.where(u > 0.35, 0.45 * (off / 0.65) ** 1.4, 0.12 * (off / 0.35) ** 1.6)
    # Diaphragm dome: highest a third of the way out, down to a sharp costophrenic angle laterally.
    rise = np.where(u > 0.35, 1.0 - (off / 0.65) ** 2, 1.0 - 0.45 * (off / 0.35) ** 2)
    bottom = lung.cp - lung.dome * rise
    mask = np.zeros((c.grid, c.grid), bool)
    mask[rows, cols] = (u >= 0) & (u <= 1) & (y >= top) & (y <= bottom)
    return LungField(mask, rows, cols, u, bottom)


def _add_band(d: npt.NDArray[np.float32], c: Canvas, xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64],
              half_width: float, amp: float, cortex: float = 0.35) -> None:
    """Add a bone-like band along the curve y = ys(xs) (pixels of 1024, xs increasing) into `d`, in place.

    The profile is flat-topped with brighter margins (cortical bone seen edge-on) and fades at both ends.
    """
    cols = np.arange(int(max(0, np.floor(xs[0] / c.step))), int(min(c.grid, np.ceil(xs[-1] / c.step))))
    if len(cols) < 2:
        return
    xc = (cols + 0.5) * c.step
    yc = np.interp(xc, xs, ys)
    slope = np.gradient(yc, xc)
    hw = half_width * np.sqrt(1.0 + slope**2)
    r0 = int(max(0, np.floor((yc - hw).min() / c.step) - 1))
    r1 = int(min(c.grid, np.ceil((yc + hw).max() / c.step) + 2))
    if r1 <= r0:
        return
    rows = ((np.arange(r0, r1) + 0.5) * c.step).astype(np.float32)[:, None]
    v2 = ((rows - yc[None, :].astype(np.float32)) / hw[None, :].astype(np.float32)) ** 2
    profile = np.exp(-(v2 * v2 * v2)) * (1.0 - cortex + cortex * v2)
    along = (xc - xs[0]) / (xs[-1] - xs[0])
    fade = (amp * smoothstep(along / 0.08) * smoothstep((1.0 - along) / 0.08)).astype(np.float32)
    d[r0:r1, cols] += profile * fade[None, :]


def _splat(acc: npt.NDArray[np.float32], c: Canvas, xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64],
           weights: npt.NDArray[np.float64] | float) -> None:
    """Accumulate points (pixels of 1024) into a grid, to be blurred into lines afterwards."""
    gx = np.floor(xs / c.step).astype(np.int64)
    gy = np.floor(ys / c.step).astype(np.int64)
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), gx.shape)
    ok = (gx >= 0) & (gx < c.grid) & (gy >= 0) & (gy < c.grid)
    np.add.at(acc, (gy[ok], gx[ok]), w[ok].astype(np.float32))


def _path(rng: np.random.Generator, points: npt.ArrayLike, jitter: float, n: int = 400) -> npt.NDArray[np.float64]:
    """A smooth curve from the first to the last control point, near the jittered inner ones (pixels of 1024):
    `(n, 2)` x, y samples evenly spaced along the curve."""
    p = np.asarray(points, dtype=np.float64)
    p = p + rng.normal(0, jitter, p.shape) * np.r_[0, np.ones(len(p) - 2), 0][:, None]
    for _ in range(4):
        # Chaikin corner cutting (converges to a quadratic B-spline); the end points stay put.
        q = np.stack([0.75 * p[:-1] + 0.25 * p[1:], 0.25 * p[:-1] + 0.75 * p[1:]], axis=1).reshape(-1, 2)
        p = np.concatenate([p[:1], q, p[-1:]])
    s = np.r_[0, np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))]
    t = np.linspace(0, s[-1], n)
    return np.stack([np.interp(t, s, p[:, 0]), np.interp(t, s, p[:, 1])], axis=1)


def _line_weight(curve: npt.NDArray[np.float64], c: Canvas, sigma: float, peak: float) -> float:
    """Splat weight per curve point that gives a line of about `peak` after a gaussian blur of `sigma` grid px."""
    spacing = np.linalg.norm(np.diff(curve, axis=0), axis=1).mean() / c.step
    return peak * spacing * np.sqrt(2 * np.pi) * sigma


def _resize(field: npt.NDArray[np.float32], shape: tuple[int, int]) -> npt.NDArray[np.float32]:
    """Bicubic resize of a float image to `shape` (rows, cols)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32))
    return np.array(img.resize((shape[1], shape[0]), Image.Resampling.BICUBIC), dtype=np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> npt.NDArray[np.float32]:
    """A smooth random field of `shape`, roughly in [0, 1], with about `cells` random values across its longer side."""
    ny = max(2, round(cells * shape[0] / max(shape)))
    nx = max(2, round(cells * shape[1] / max(shape)))
    return np.clip(_resize(rng.random((ny, nx)).astype(np.float32), shape), 0.0, 1.0)


def child_rng(ss: np.random.SeedSequence, k: int) -> np.random.Generator:
    """Independent stream `k` of an image's pixel seed (anatomy, opacities, distractors, noise stay decoupled, so
    adding a box or a distractor does not change the rest of the image)."""
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, k)))


def _body(c: Canvas, a: Anatomy, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Soft-tissue density of neck, shoulders, chest wall and abdomen (thickness falls off towards the skin)."""
    h = a.lungs[0].height
    from scipy.ndimage import gaussian_filter1d

    # Neck, sloping shoulders, then the chest wall and abdomen.
    knots_y = [0.0, a.shoulder_y - 40, a.shoulder_y + 80, a.lungs[0].apex + 0.3 * h, a.lungs[0].cp,
               float(IMAGE_SIZE)]  # fmt: skip
    knots_w = [a.neck_half, a.neck_half * 1.3, a.body_half + 55, a.body_half + 20, a.body_half,
               a.body_half + rng.normal(15, 10)]  # fmt: skip
    half = gaussian_filter1d(np.interp(c.y[:, 0], knots_y, knots_w), 40.0 / c.step, mode="nearest")[:, None]
    profile = np.clip(1.0 - ((c.x - a.mid) / half) ** 2, 0.0, 1.0) ** 0.5
    # The abdomen is thicker than the chest: denser below the diaphragm.
    belly = 0.08 * smoothstep((c.y - (a.lungs[1].cp - 120)) / 220)
    return ((_SOFT + belly) * profile).astype(np.float32)


def _ribs_and_bones(d: npt.NDArray[np.float32], c: Canvas, a: Anatomy, view: str, rng: np.random.Generator) -> None:
    """Add posterior and anterior ribs, clavicles, spine, scapulae and humeral heads to `d`, in place."""
    for lung in a.lungs:
        h, sgn = lung.height, lung.sign
        s = np.linspace(0.0, 1.0, 60)
        for i in range(12):
            y0 = lung.apex + 0.01 * h + i * 0.083 * h + rng.normal(0, 4)
            if y0 > lung.cp - 0.02 * h:
                break
            # Upper ribs are short tight arcs (the thorax is narrow at the apex), lower ones long and flatter.
            reach = lung.lat * (0.55 + 0.45 * smoothstep(i / 4.0)) + 35
            curv = 0.36 - 0.012 * i
            ys = y0 + h * (-0.12 * s + curv * s**2.5)
            xs = a.mid + sgn * (18 + s * (reach - 18))
            order = np.argsort(xs)
            _add_band(d, c, xs[order], ys[order], 9.5 + 0.5 * i, 0.065)
        for i in range(6):
            ya = lung.apex + 0.03 * h + i * 0.105 * h + rng.normal(0, 4)
            sa = np.linspace(0.25, 1.0, 40)
            ys = ya + 0.26 * h * ((1.0 - sa) / 0.75) ** 1.1
            xs = a.mid + sgn * sa * (lung.lat + 10)
            order = np.argsort(xs)
            _add_band(d, c, xs[order], ys[order], 12.0, 0.035, cortex=0.2)
        # Clavicle: from the sternal end near the midline out and up to the shoulder, a gentle S.
        top = a.lungs[0].apex
        sc = np.linspace(0.0, 1.0, 50)
        y_med = top + a.clavicle_drop * h
        ys = y_med - 0.12 * h * sc**1.2 + 0.012 * h * np.sin(2 * np.pi * sc)
        xs = a.mid + sgn * (30 + sc * (lung.lat * 0.98))
        order = np.argsort(xs)
        _add_band(d, c, xs[order], ys[order], 15.0, 0.13)
        # Humeral head in the upper corner.
        hx, hy, hr = a.mid + sgn * (a.body_half + 40), a.shoulder_y + 100, rng.normal(62, 6)
        r2 = ((c.x - hx) ** 2 + (c.y - hy) ** 2) / hr**2
        d += (0.12 * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))).astype(np.float32)
        # Scapula: on AP films it is not rotated out of the way and overlies the upper lateral lung.
        if view == "AP" or rng.random() < 0.2:
            # A triangle: medial border down to the inferior angle, lateral border back up to the shoulder.
            tip = top + rng.uniform(0.5, 0.62) * h
            medial = np.interp(c.y[:, 0], [top, tip], [lung.lat * 0.7, lung.lat * 0.92])[:, None]
            lateral = np.interp(c.y[:, 0], [top, tip], [lung.lat * 1.25, lung.lat * 0.92])[:, None]
            dist = sgn * (c.x - a.mid)
            inside = smoothstep((dist - medial) / 10.0) * smoothstep((lateral - dist) / 25.0) * (c.y <= tip)
            d += (0.055 * inside * smoothstep((c.y - (top - 60)) / 40.0)).astype(np.float32)
    # Spine: vertebral bodies with darker disc spaces, seen faintly through the mediastinum.
    period = a.lungs[0].height * 0.085
    phase = ((c.y - a.lungs[0].apex) / period) % 1.0
    discs = 1.0 - 0.3 * np.exp(-(((phase - 0.5) / 0.09) ** 2))
    col = np.sqrt(np.clip(1.0 - ((c.x - a.mid) / 42.0) ** 2, 0.0, 1.0))
    d += (0.06 * col * discs).astype(np.float32)


def _heart_and_mediastinum(c: Canvas, a: Anatomy) -> tuple[Any, Any]:
    """Density of heart, great vessels and mediastinum, and the fraction of lung air they hide (0..1).

    The cardiac silhouette is bounded row by row: the right heart border (image-left) bulges gently, the left
    border (image-right) runs down and out to the apex on the left hemidiaphragm; its top merges into the
    mediastinum, so no upper edge shows.
    """
    w = a.heart_width
    med_half = (a.lungs[0].med + a.lungs[1].med) / 2
    base = a.lungs[1].cp - 0.75 * a.lungs[1].dome
    tau = np.clip((c.y - a.heart_top) / (base - a.heart_top), 0.0, 1.0)
    right = med_half + (0.64 * w - med_half) * np.sin(0.5 * np.pi * np.clip(tau / 0.9, 0.0, 1.0)) ** 0.8
    left = med_half + (0.36 * w - med_half) * np.sin(np.pi * (0.08 + 0.84 * tau)) ** 0.7
    dx = c.x - a.mid
    inside = smoothstep((right - dx) / 10.0) * smoothstep((left + dx) / 10.0) * smoothstep((c.y - a.heart_top) / 40)
    core = np.clip(np.minimum(right - dx, left + dx) / (0.25 * w), 0.0, 1.0) * inside
    band = smoothstep((med_half + 4 - np.abs(dx)) / 10.0)
    h = a.lungs[1].height
    knob_x, knob_y = a.mid + med_half - 4, a.lungs[1].apex + 0.24 * h
    knob = smoothstep((1.0 - ((c.x - knob_x) / 34) ** 2 - ((c.y - knob_y) / 30) ** 2) / 0.6)
    density = 0.03 * np.sqrt(core) + 0.07 * band + 0.02 * knob
    hides = np.clip(0.82 * inside + 0.75 * knob, 0.0, 1.0)
    return density, hides


def _airways(c: Canvas, a: Anatomy, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Negative density of the trachea and main bronchi (air columns)."""
    h = a.lungs[0].height
    carina = (a.mid + rng.normal(4, 4), a.lungs[0].apex + 0.3 * h)
    trachea = _path(rng, [(a.mid + rng.normal(0, 4), 0.0), (a.mid, carina[1] * 0.5), carina], 3.0, n=60)
    centre = np.interp(c.y[:, 0], trachea[:, 1], trachea[:, 0])[:, None]
    column = np.exp(-(((c.x - centre) / 17.0) ** 2)) * smoothstep((carina[1] - c.y) / 25.0)
    air = (-0.12 * column).astype(np.float32)
    for sgn in (-1, 1):
        xs = np.linspace(carina[0], carina[0] + sgn * 0.07 * h, 20)
        ys = carina[1] + (xs - carina[0]) * sgn * rng.uniform(1.1, 1.6)
        order = np.argsort(xs)
        _add_band(air, c, xs[order], ys[order], 9.0, -0.06, cortex=0.0)
    return air


def _vessels(c: Canvas, a: Anatomy, lung_mask: npt.NDArray[np.bool_], rng: np.random.Generator) -> Any:
    """Density of pulmonary vessels: tapering branches fanning out from each hilum, plus the hilar shadows."""
    from scipy.ndimage import gaussian_filter

    # Points of all vessels are collected first and splatted in one call per width class (fewer small numpy calls).
    thick: list[npt.NDArray[np.float64]] = []  # rows of x, y, weight
    thin: list[npt.NDArray[np.float64]] = []
    hila = np.zeros((c.grid, c.grid), np.float32)
    for lung in a.lungs:
        hx, hy = a.mid + lung.sign * (lung.med + 30), lung.apex + 0.45 * lung.height
        rows, cols = c.window(hx - 135, hy - 270, hx + 135, hy + 270)
        hila[rows, cols] += np.exp(-(((c.x[:, cols] - hx) / 45) ** 2 + ((c.y[rows, :] - hy) / 90) ** 2))
        for _ in range(12):
            theta = rng.uniform(-1.25, 1.25)
            length = rng.uniform(0.45, 0.95) * (lung.lat - lung.med)
            sx, sy = hx + lung.sign * rng.uniform(0, 30), hy + rng.normal(0, 45)
            end = (sx + lung.sign * length * np.cos(theta), sy + 1.4 * length * np.sin(theta))
            midp = (sx + (end[0] - sx) * 0.45, sy + (end[1] - sy) * 0.45)
            vessel = _path(rng, [(sx, sy), midp, end], 18.0, n=160)
            taper = np.linspace(1.0, 0.15, len(vessel))
            thick.append(np.c_[vessel[:80], _line_weight(vessel, c, 1.6, 1.0) * taper[:80]])
            thin.append(np.c_[vessel[80:], _line_weight(vessel, c, 0.9, 1.0) * taper[80:]])
            for _ in range(rng.integers(1, 3)):
                k = int(rng.integers(40, 130))
                start = vessel[k]
                ang = np.arctan2(*(vessel[k] - vessel[k - 5])[::-1]) + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9)
                blen = rng.uniform(0.15, 0.35) * (lung.lat - lung.med)
                bend = start + blen * np.array([np.cos(ang), np.sin(ang)])
                branch = _path(rng, [start, (start + bend) / 2, bend], 8.0, n=60)
                thin.append(np.c_[branch, np.full(len(branch), _line_weight(branch, c, 0.9, 0.6) * taper[k])])
    field = np.zeros((c.grid, c.grid), np.float32)
    for points, sigma in ((thick, 1.6), (thin, 0.9)):
        acc = np.zeros((c.grid, c.grid), np.float32)
        p = np.concatenate(points)
        _splat(acc, c, p[:, 0], p[:, 1], p[:, 2])
        field += 0.035 * gaussian_filter(acc, sigma)
    return field * lung_mask + 0.05 * hila


def _opacities(c: Canvas, boxes_xyxy: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Fraction of lung air replaced by pneumonia (0..1) for each box: a textured cluster of soft blobs.

    The cluster fades to nothing at `1 / BOX_TO_VISIBLE` times the box size around the box centre, so the box
    is tighter than what is visible, as the RSNA boxes were (intersections of several readers' boxes).
    """
    field = np.zeros((c.grid, c.grid), np.float32)
    for x1, y1, x2, y2 in boxes_xyxy:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        hw, hh = (x2 - x1) / 2 / BOX_TO_VISIBLE, (y2 - y1) / 2 / BOX_TO_VISIBLE
        rows, cols = c.window(cx - hw, cy - hh, cx + hw, cy + hh)
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        if min(shape) < 2:
            continue
        dx = (c.x[:, cols] - cx) / hw
        dy = (c.y[rows, :] - cy) / hh
        p = rng.uniform(2.2, 4.0)
        r = (np.abs(dx) ** p + np.abs(dy) ** p) ** (1 / p)
        # Substantial out to the box edge (r = 0.875), fading to nothing at the visible extent (r = 1).
        envelope = smoothstep((1.0 - r) / 0.18)
        blobs = np.zeros(shape, np.float32)
        for _ in range(int(rng.integers(3, 9))):
            bx, by = rng.uniform(-0.7, 0.7, 2)
            sx, sy = rng.uniform(0.3, 0.5, 2)
            blobs += np.exp(-0.5 * (((dx - bx) / sx) ** 2 + ((dy - by) / sy) ** 2)).astype(np.float32)
        cluster = 1.0 - np.exp(-2.0 * blobs)
        texture = 0.6 + 0.25 * smooth_noise(rng, shape, 6) + 0.15 * smooth_noise(rng, shape, 18)
        amount = rng.uniform(0.5, 0.95)
        field[rows, cols] = np.maximum(field[rows, cols], amount * envelope * cluster * texture)
    return field


def _random_lung_point(rng: np.random.Generator, c: Canvas, lung_mask: npt.NDArray[np.bool_],
                       avoid_xyxy: npt.NDArray[np.float64]) -> tuple[float, float] | None:
    """A random point (pixels of 1024) inside the lungs and outside every rectangle in `avoid_xyxy`."""
    rows, cols = np.nonzero(lung_mask)
    if len(rows) == 0:
        return None
    for _ in range(30):
        k = int(rng.integers(len(rows)))
        x, y = (cols[k] + 0.5) * c.step, (rows[k] + 0.5) * c.step
        inside = (avoid_xyxy[:, 0] <= x) & (x <= avoid_xyxy[:, 2]) & (avoid_xyxy[:, 1] <= y) & (y <= avoid_xyxy[:, 3])
        if not inside.any():
            return x, y
    return None


def _distractors(c: Canvas, a: Anatomy, names: Sequence[str], fields: Sequence[LungField],
                 boxes_xyxy: npt.NDArray[np.float64], ss: np.random.SeedSequence) -> tuple[Any, Any]:
    """Unlabelled look-alikes: returns (added density, fraction of lung air replaced).

    Nodules are small, round and sharp; tubes and wires are thin lines; haze is wide, faint and untextured;
    effusion fills the lung base under a meniscus. Each kind draws from its own random stream.
    """
    from scipy.ndimage import gaussian_filter

    density = np.zeros((c.grid, c.grid), np.float32)
    fill = np.zeros((c.grid, c.grid), np.float32)
    lung_mask = fields[0].mask | fields[1].mask
    h = a.lungs[0].height
    apex = min(lung.apex for lung in a.lungs)
    visible = _visible_xyxy(boxes_xyxy)
    if "nodule" in names:
        rng = child_rng(ss, 10)
        for _ in range(int(rng.integers(1, 4))):
            point = _random_lung_point(rng, c, lung_mask, visible)
            if point is None:
                continue
            radius = rng.uniform(8, 24)
            r = np.sqrt((c.x - point[0]) ** 2 + (c.y - point[1]) ** 2) / radius
            density += (rng.uniform(0.1, 0.22) * smoothstep((1.0 - r) / 0.35)).astype(np.float32)
    if "tube" in names:
        rng = child_rng(ss, 11)
        lines = np.zeros_like(density)
        lumen = np.zeros_like(density)
        carina_y = apex + 0.3 * h
        kinds = [k for k in ("ett", "ng", "cvc") if rng.random() < 0.55] or ["ett"]
        for kind in kinds:
            if kind == "ett":
                path = _path(rng, [(a.mid + rng.normal(0, 6), 0.0), (a.mid, carina_y * 0.5),
                                   (a.mid + rng.normal(0, 4), carina_y - rng.uniform(30, 90))], 4.0)  # fmt: skip
                _splat(lumen, c, path[:, 0], path[:, 1], _line_weight(path, c, 3.0, 1.0))
            elif kind == "ng":
                base = (a.lungs[1].cp - a.lungs[1].dome) + 40
                path = _path(rng, [(a.mid + 12, 0.0), (a.mid + 18, apex + 0.5 * h), (a.mid + 40, base - 40),
                                   (a.mid + 0.45 * a.lungs[1].lat, base + 50),
                                   (a.mid + 0.3 * a.lungs[1].lat, base + 130)], 10.0)  # fmt: skip
            else:
                sgn = rng.choice([-1, 1])
                path = _path(rng, [(a.mid + sgn * a.lungs[0].lat * 0.95, apex + 0.02 * h),
                                   (a.mid + sgn * a.lungs[0].lat * 0.45, apex + 0.1 * h),
                                   (a.mid - 28, apex + rng.uniform(0.25, 0.38) * h)], 12.0)  # fmt: skip
            _splat(lines, c, path[:, 0], path[:, 1], _line_weight(path, c, 0.8, 1.0))
        density += 0.3 * gaussian_filter(lines, 0.8) + 0.07 * gaussian_filter(lumen, 3.0)
    if "wire" in names:
        rng = child_rng(ss, 12)
        wires = np.zeros_like(density)
        for _ in range(int(rng.integers(2, 5))):
            sgn = rng.choice([-1, 1])
            ex = a.mid + sgn * rng.uniform(0.25, 1.05) * a.lungs[0].lat
            ey = apex + rng.uniform(-0.1, 0.75) * h
            exit_point = rng.choice([(ex + rng.normal(0, 150), -20.0), (a.mid + sgn * 560, ey + rng.normal(0, 200))])
            path = _path(rng, [(ex, ey), ((ex + exit_point[0]) / 2, (ey + exit_point[1]) / 2), exit_point], 60.0)
            _splat(wires, c, path[:, 0], path[:, 1], _line_weight(path, c, 0.7, 1.0))
            r = np.sqrt((c.x - ex) ** 2 + (c.y - ey) ** 2)
            ring_r = rng.uniform(11, 16)
            density += (0.3 * np.exp(-(((r - ring_r) / 2.5) ** 2)) + 0.35 * np.exp(-((r / 4.0) ** 2))).astype(
                np.float32)
        density += 0.22 * gaussian_filter(wires, 0.7)
    if "haze" in names:
        rng = child_rng(ss, 13)
        for _ in range(int(rng.integers(1, 3))):
            point = _random_lung_point(rng, c, lung_mask, np.zeros((0, 4)))
            if point is None:
                continue
            sx, sy = rng.uniform(0.3, 0.5) * a.lungs[0].lat, rng.uniform(0.2, 0.4) * h
            blob = np.exp(-0.5 * (((c.x - point[0]) / sx) ** 2 + ((c.y - point[1]) / sy) ** 2))
            fill += (rng.uniform(0.25, 0.45) * blob).astype(np.float32)
    if "effusion" in names:
        rng = child_rng(ss, 14)
        sides = [k for k in (0, 1) if rng.random() < 0.6] or [int(rng.integers(2))]
        for k in sides:
            f = fields[k]
            level = rng.uniform(0.1, 0.25) * h
            # Meniscus: the fluid climbs higher along the lateral chest wall.
            top = f.bottom - level * (0.2 + 0.8 * np.clip(f.u, 0.0, 1.0) ** 1.5)
            y = c.y[f.rows, :]
            fluid = smoothstep((y - top) / 25.0) * f.mask[f.rows, f.cols]
            fill[f.rows, f.cols] += (0.95 * fluid).astype(np.float32)
            density[f.rows, f.cols] += (0.04 * fluid).astype(np.float32)
    return density, fill


@dataclass(frozen=True)
class Layers:
    """Changes that a caller's findings make to the density model of one chest, as arrays on the render grid
    (`(grid, grid)` float32; None leaves that part unchanged). See `Signs`.

    Attributes:
        density: Added density (bright), e.g. a nodule or a pleural line.
        fill: Added fraction of lung air replaced by fluid or tissue (0..1), e.g. an effusion or consolidation.
        air_gain: Multiplies the lung air (above 1: hyperlucent lung, below 1: collapsed lung).
        air_floor: Lower bound of the air fraction (pneumothorax: free pleural air at full depth).
        vessel_keep: Multiplies the pulmonary vessels (0 where no lung markings reach).
    """

    density: npt.NDArray[np.float32] | None = None
    fill: npt.NDArray[np.float32] | None = None
    air_gain: npt.NDArray[np.float32] | None = None
    air_floor: npt.NDArray[np.float32] | None = None
    vessel_keep: npt.NDArray[np.float32] | None = None


class Signs(Protocol):
    """Findings drawn into a chest by `render_image`: first the anatomy they change, then the layers they add."""

    def anatomy(self, a: Anatomy) -> Anatomy:
        """The patient's geometry with the findings' changes (a wider heart, larger lungs, a raised diaphragm)."""
        ...

    def layers(self, c: Canvas, a: Anatomy, fields: Sequence[LungField]) -> Layers:
        """The findings' layers on the render grid of `c`, for the final anatomy and its two lung fields."""
        ...


def render_image(boxes: npt.ArrayLike, view: str, sex: str, age: int = 50, distractors: Sequence[str] = (),
                 seed: int | np.random.SeedSequence = 0, *, grid: int = 512, opacity_strength: float = 1.0,
                 signs: Signs | None = None, anatomy_seed: np.random.SeedSequence | None = None,
                 size: int = IMAGE_SIZE) -> npt.NDArray[np.uint8]:
    """Render one synthetic chest radiograph.

    Args:
        boxes: Opacity boxes, xywh, pixels of the 1024 x 1024 image, shape `(N, 4)` (N may be 0).
        view: `AP` or `PA`.
        sex: `M` or `F` (adult women get breast shadows).
        age: Age in years.
        distractors: Unlabelled look-alikes to draw, from `DISTRACTORS`.
        seed: Integer or `SeedSequence`; the same seed and arguments give the same pixels.
        grid: Internal render resolution (upsampled to 1024); lower is faster and blurrier.
        opacity_strength: Scales the opacities (0 draws the same image without them, for checks and figures).
        signs: Findings to draw besides the boxes and distractors (see `Signs`); None draws none.
        anatomy_seed: Seed of the patient's anatomy (body, lungs, heart, bones, vessels) in place of the one derived
            from `seed`, so that follow-up images of one patient show the same person.
        size: Side of the returned image; geometry stays in pixels of 1024 x 1024 (1024 is the RSNA size).

    Returns:
        `(size, size)` uint8 pixels, MONOCHROME2 (bright = dense).
    """
    from PIL import Image
    from scipy.ndimage import distance_transform_edt, uniform_filter

    from cxrdet.boxes import xywh_to_xyxy

    if view not in ("AP", "PA"):
        raise ConfigError(f"view must be 'AP' or 'PA', got {view!r}")
    if sex not in ("M", "F"):
        raise ConfigError(f"sex must be 'M' or 'F', got {sex!r}")
    unknown = sorted(set(distractors) - set(DISTRACTORS))
    if unknown:
        raise ConfigError(f"unknown distractors {unknown}; expected some of {list(DISTRACTORS)}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng_anatomy, rng_opacity, rng_noise = (child_rng(ss, k) for k in range(3))
    if anatomy_seed is not None:
        rng_anatomy = np.random.default_rng(anatomy_seed)
    xyxy = xywh_to_xyxy(boxes)
    a = _sample_anatomy(rng_anatomy, view, sex, xyxy)
    if signs is not None:
        a = signs.anatomy(a)
    c = Canvas(grid)

    d = _body(c, a, rng_anatomy)
    fields = [_lung_field(c, a, lung) for lung in a.lungs]
    lung_mask = fields[0].mask | fields[1].mask
    extra = signs.layers(c, a, fields) if signs is not None else Layers()
    # Air thickness grows from the lung edge inwards and is smaller at the apices (more tissue in front).
    # Distance to the lung edge on a half-size grid: four times cheaper, and it only feeds a smooth depth map.
    edge = _resize((distance_transform_edt(lung_mask[::2, ::2]) * 2 * c.step).astype(np.float32), lung_mask.shape)
    upper = smoothstep((c.y - min(lu.apex for lu in a.lungs)) / (0.35 * a.lungs[0].height))
    depth = (1.0 - np.exp(-edge / 45.0)) * (0.7 + 0.3 * upper)
    heart, hides = _heart_and_mediastinum(c, a)
    air = _AIR * depth * (1.0 - hides) * (0.9 + 0.2 * smooth_noise(rng_anatomy, (grid, grid), 8))
    if extra.air_gain is not None:
        air = np.clip(air * extra.air_gain, 0.0, 0.97)
    if extra.air_floor is not None:
        air = np.maximum(air, extra.air_floor)
    body = d
    bones = np.zeros_like(body)
    _ribs_and_bones(bones, c, a, view, rng_anatomy)
    d = heart.astype(np.float32) + bones * smoothstep(body / 0.1)
    d += _airways(c, a, rng_anatomy)
    vessels = _vessels(c, a, lung_mask, rng_anatomy)
    d += vessels if extra.vessel_keep is None else vessels * extra.vessel_keep
    if sex == "F" and age >= 15:
        for lung in a.lungs:
            # Breast shadow over the lower lung: faint above, ending in a sharp inferior fold.
            bx, by = a.mid + lung.sign * lung.lat * 0.6, lung.cp - 0.22 * lung.height
            rx, ry = 0.42 * lung.lat, 0.18 * lung.height
            ry_eff = np.where(c.y < by, 2.5 * ry, ry)
            r2 = ((c.x - bx) / rx) ** 2 + ((c.y - by) / ry_eff) ** 2
            d += (rng_anatomy.uniform(0.02, 0.05) * smoothstep((1.0 - r2) / 0.5)).astype(np.float32)
    d += (0.05 * (smooth_noise(rng_anatomy, (grid, grid), 90) - 0.5) * lung_mask).astype(np.float32)

    opacity = opacity_strength * _opacities(c, xyxy, rng_opacity)
    extra_density, extra_fill = _distractors(c, a, distractors, fields, xyxy, ss)
    if extra.fill is not None:
        extra_fill = extra_fill + extra.fill
    if extra.density is not None:
        extra_density = extra_density + extra.density
    filled = np.clip(opacity + extra_fill, 0.0, 1.0)
    # Consolidation also adds a little density of its own, so it shows faintly behind the heart too.
    d = d + body * (1.0 - air * (1.0 - filled)) + extra_density + 0.05 * opacity * lung_mask
    # Computed radiography is edge-enhanced before it is stored; an unsharp mask gives the same crisp look (two box
    # filters approximate a gaussian blur at a fraction of the cost).
    d = d + 0.6 * (d - uniform_filter(uniform_filter(d, 11), 11))

    # Film-like characteristic curve: compresses dense regions, so lungs sit mid-dark and bone and heart near white.
    k = rng_noise.uniform(1.7, 2.4)
    gain = rng_noise.uniform(215, 240)
    heel = np.linspace(rng_noise.uniform(0.95, 1.0), rng_noise.uniform(1.0, 1.05), grid, dtype=np.float32)[:, None]
    display = 4.0 + gain * (1.0 - np.exp(-k * np.clip(d * heel, 0.0, None))) / (1.0 - np.exp(-k * 0.8))
    small = Image.fromarray(np.clip(np.rint(display), 0, 255).astype(np.uint8))
    pixels = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    # Film grain at full resolution: uniform on -3..3 (sd 2), far cheaper to draw than gaussian noise.
    grain = rng_noise.integers(-3, 4, pixels.shape, dtype=np.int8)
    return np.clip(pixels + grain, 0, 255).astype(np.uint8)
