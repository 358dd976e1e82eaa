"""Procedurally drawn fruit photos: the project's own synthetic image sample.

A development script, not part of the installed package: ``scripts/make_sample.py``
imports it to write ``data_sample/`` and the offline weights' calibration images
(``p8utils/data/calibration/``). The runtime package never draws anything.

The images follow the Fruits-360 conventions (100x100 RGB JPEG, one fruit
centred on a pure white background, one folder per class, file names like
``r_36_100.jpg``) but are drawn from scratch with Pillow and NumPy, so the
sample carries the project's licence and needs no download.

Each class has its own silhouette, colour and surface texture; each image
varies the rotation about the vertical axis (the texture turns with it), the
in-plane tilt, the position, the scale, the light direction and slightly the
colour. That gives PCA on CNN features both between-class and within-class
structure to find.

Public API
----------
CLASSES
    The class names (Fruits-360 style, with spaces).
draw_fruit
    One in-memory image of one class.
generate_sample
    Writes ``<out_dir>/<class>/r_<angle>_100.jpg`` deterministically.
sample_file_names
    The file names `generate_sample` uses in each class folder.
calibration_images
    In-memory images across all classes, from which ``make_sample.py
    --calibration`` writes the PNGs that recalibrate the BatchNorm statistics
    of the offline model weights.

Notes
-----
Everything is drawn at ``_SS`` times the requested size and box-reduced, which
anti-aliases the silhouettes. Randomness comes only from the
``numpy.random.Generator`` passed in, so the same seed gives the same pixels,
and the same JPEG bytes with the same Pillow/libjpeg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

from p8utils.errors import ParameterError

__all__ = ["CLASSES", "draw_fruit", "generate_sample", "sample_file_names", "calibration_images"]

CLASSES: tuple[str, ...] = (
    "Apple Red 1",
    "Banana",
    "Grape Blue",
    "Kiwi",
    "Lemon",
    "Orange",
    "Pear Green",
    "Strawberry",
)

_SS = 3  # supersampling factor: draw at _SS * size, then box-reduce
_FloatArray = NDArray[np.float64]
_Profile = Callable[[_FloatArray], _FloatArray]
_PathLike = Union[str, Path]


# ---------------------------------------------------------------------------
# Scene: canvas, placement, light
# ---------------------------------------------------------------------------


@dataclass
class _Scene:
    """A white high-resolution canvas with the fruit's placement and light.

    Attributes
    ----------
    n : int
        Canvas side in pixels (``_SS * size``).
    rgb : ndarray of float64, shape (n, n, 3)
        Colours in [0, 1]; starts pure white.
    cx, cy : float
        Centre of the fruit's local frame, in canvas pixels.
    scale : float
        Canvas pixels per local unit (the fruit spans about 2 units).
    tilt : float
        In-plane rotation of the local frame, radians.
    phase : float
        Rotation about the vertical axis, radians (turns the texture).
    light : ndarray of float64, shape (3,)
        Unit vector towards the light, image frame (x right, y down, z to viewer).
    tint : ndarray of float64, shape (3,)
        Per-image multiplicative colour variation, around 1.
    """

    n: int
    rgb: _FloatArray
    cx: float
    cy: float
    scale: float
    tilt: float
    phase: float
    light: _FloatArray
    tint: _FloatArray

    @property
    def k(self) -> float:
        """Canvas pixels per pixel of a 100x100 image (texture size unit)."""
        return self.n / 300.0

    def local(self, rot: float = 0.0) -> tuple[_FloatArray, _FloatArray]:
        """Local coordinates of every canvas pixel centre.

        Parameters
        ----------
        rot : float
            Extra in-plane rotation of the frame (radians), added to ``tilt``.

        Returns
        -------
        x, y : ndarray of float64, shape (n, n)
            Local coordinates (y down), indexed ``[row, column]``.
        """
        c, s = math.cos(self.tilt + rot), math.sin(self.tilt + rot)
        grid = np.arange(self.n, dtype=np.float64) + 0.5
        dx = grid[None, :] - self.cx
        dy = grid[:, None] - self.cy
        x = (c * dx + s * dy) / self.scale
        y = (-s * dx + c * dy) / self.scale
        return x, y

    def to_canvas(self, pts: _FloatArray, rot: float = 0.0) -> list[tuple[float, float]]:
        """Map local points to canvas pixel coordinates (for ImageDraw).

        Parameters
        ----------
        pts : ndarray of float64, shape (m, 2)
            Local (x, y) points.
        rot : float
            Extra in-plane rotation, radians.

        Returns
        -------
        list of (float, float)
            Canvas (x, y) points, length m.
        """
        c, s = math.cos(self.tilt + rot), math.sin(self.tilt + rot)
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        x = self.cx + self.scale * (c * p[:, 0] - s * p[:, 1])
        y = self.cy + self.scale * (s * p[:, 0] + c * p[:, 1])
        return list(zip(x.tolist(), y.tolist()))

    def shade(
        self,
        albedo: _FloatArray,
        normal: tuple[_FloatArray, _FloatArray, _FloatArray],
        rot: float = 0.0,
        *,
        ambient: float = 0.45,
        diffuse: float = 0.62,
        specular: float = 0.22,
        shininess: float = 16.0,
    ) -> _FloatArray:
        """Lambert + Blinn-Phong shading of surface points.

        Parameters
        ----------
        albedo : ndarray of float64, shape (m, 3)
            Surface colours in [0, 1].
        normal : tuple of 3 ndarray of float64, shape (m,)
            Unit normals in the local frame (x, y, z).
        rot : float
            Extra in-plane rotation of that frame, radians.
        ambient, diffuse, specular, shininess : float
            Lighting weights; ``specular`` may also be an array of shape (m,).

        Returns
        -------
        ndarray of float64, shape (m, 3)
            Shaded colours clipped to [0, 1].
        """
        nx, ny, nz = normal
        c, s = math.cos(self.tilt + rot), math.sin(self.tilt + rot)
        ix = c * nx - s * ny
        iy = s * nx + c * ny
        lx, ly, lz = self.light
        half = np.array([lx, ly, lz + 1.0])
        half /= np.linalg.norm(half)
        ndl = np.clip(ix * lx + iy * ly + nz * lz, 0.0, None)
        ndh = np.clip(ix * half[0] + iy * half[1] + nz * half[2], 0.0, None)
        out = albedo * (ambient + diffuse * ndl)[:, None] + (specular * ndh**shininess)[:, None]
        return np.clip(out, 0.0, 1.0)


def _phase(rng: np.random.Generator, angle: float | None) -> float:
    """Rotation about the vertical axis in radians: ``angle`` degrees, or drawn from ``rng`` when None."""
    return math.radians(rng.uniform(0.0, 360.0) if angle is None else float(angle))


def _new_scene(
    rng: np.random.Generator,
    size: int,
    phase: float,
    hull: _FloatArray,
    tilt_deg: float,
) -> _Scene:
    """Draw the per-image placement (tilt, scale, jitter), light and tint.

    The fruit is scaled and centred from ``hull`` so that, whatever the tilt, it
    fills 86-97 % of the frame along its longer side and never touches the border.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    size : int
        Output image side, pixels.
    phase : float
        Rotation about the vertical axis, radians (see `_phase`).
    hull : ndarray of float64, shape (m, 2)
        Local points enclosing everything the fruit will draw (outline, stem,
        leaves), local units.
    tilt_deg : float
        Half range of the uniform in-plane tilt, degrees.

    Returns
    -------
    _Scene
    """
    n = size * _SS
    tilt = math.radians(rng.uniform(-tilt_deg, tilt_deg))
    fill = rng.uniform(0.86, 0.97)
    jitter = rng.uniform(-1.0, 1.0, 2)
    az = rng.uniform(0.0, 2.0 * math.pi)
    el = rng.uniform(0.35, 0.95)
    tint = 1.0 + rng.normal(0.0, 0.035, 3)
    c, s = math.cos(tilt), math.sin(tilt)
    pts = np.asarray(hull, dtype=np.float64).reshape(-1, 2)
    rx = c * pts[:, 0] - s * pts[:, 1]
    ry = s * pts[:, 0] + c * pts[:, 1]
    lo = np.array([rx.min(), ry.min()])
    hi = np.array([rx.max(), ry.max()])
    room = n - 2.0 * 4 * _SS  # keep 4 output pixels of white on each side
    scale = fill * room / float((hi - lo).max())
    slack = room - scale * (hi - lo)
    shift = jitter * np.minimum(0.5 * slack, 0.04 * n)
    mid = 0.5 * (lo + hi)
    cx = n / 2.0 + shift[0] - scale * mid[0]
    cy = n / 2.0 + shift[1] - scale * mid[1]
    light = np.array([math.sin(el) * math.cos(az), math.sin(el) * math.sin(az), math.cos(el)])
    rgb = np.ones((n, n, 3), dtype=np.float64)
    return _Scene(n, rgb, cx, cy, scale, tilt, phase, light, tint)


def _profile_hull(profile: _Profile, y0: float, y1: float, rot: float = 0.0) -> _FloatArray:
    """Outline points of a body of revolution, shape (128, 2), in the scene's local frame.

    Parameters
    ----------
    profile : callable
        Half-width ``w(y)``.
    y0, y1 : float
        Extent along the axis.
    rot : float
        In-plane rotation of the body's axis (as given to `_revolve`), radians.
    """
    y = np.linspace(y0, y1, 64)
    w = profile(y)
    pts = np.concatenate([np.column_stack([w, y]), np.column_stack([-w, y])])
    c, s = math.cos(rot), math.sin(rot)
    return np.column_stack([c * pts[:, 0] - s * pts[:, 1], s * pts[:, 0] + c * pts[:, 1]])


def _stroke_hull(pts: _FloatArray, width: float) -> _FloatArray:
    """Points enclosing a stroke of ``width`` along ``pts`` (m, 2); shape (4m, 2)."""
    h = width / 2.0
    return np.concatenate([pts + np.array(o) for o in ((h, h), (h, -h), (-h, h), (-h, -h))])


# ---------------------------------------------------------------------------
# Texture helpers (texture space: u around the axis in [0, 1), v along it)
# ---------------------------------------------------------------------------


def _tex_shape(sc: _Scene) -> tuple[int, int]:
    """Texture (height, width) in texels for this canvas (about 1 texel per canvas pixel)."""
    return max(16, round(0.9 * sc.n)), max(32, round(2.6 * sc.n))


def _smooth_noise(rng: np.random.Generator, grid: tuple[int, int], shape: tuple[int, int]) -> _FloatArray:
    """Smooth Gaussian-ish noise, periodic along u.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    grid : tuple of int
        (rows, columns) of random control values; fewer means smoother.
    shape : tuple of int
        Output (height, width).

    Returns
    -------
    ndarray of float64, shape ``shape``
        Zero-mean noise with standard deviation near 1.
    """
    h, w = shape
    g = rng.standard_normal(grid).astype(np.float32)
    tiled = np.concatenate([g, g, g], axis=1)
    img = Image.fromarray(tiled).resize((3 * w, h), Image.Resampling.BICUBIC)
    out = np.asarray(img, dtype=np.float64)[:, w : 2 * w]
    return (out - out.mean()) / (out.std() + 1e-9)


def _dots(
    shape: tuple[int, int],
    centres: _FloatArray,
    radii: _FloatArray,
    blur: float = 0.0,
) -> _FloatArray:
    """Coverage of filled ellipses drawn in texture space, wrapping along u.

    Parameters
    ----------
    shape : tuple of int
        Texture (height, width).
    centres : ndarray of float64, shape (m, 2)
        Ellipse centres (column, row) in texels.
    radii : ndarray of float64, shape (m, 2)
        Ellipse radii (along u, along v) in texels.
    blur : float
        Gaussian blur radius applied afterwards, texels.

    Returns
    -------
    ndarray of float64, shape ``shape``
        Coverage in [0, 1].
    """
    h, w = shape
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for (x, y), (rx, ry) in zip(centres.tolist(), radii.tolist()):
        for shift in (-w, 0, w):
            if -rx <= x + shift <= w + rx:
                draw.ellipse((x + shift - rx, y - ry, x + shift + rx, y + ry), fill=255)
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(img, dtype=np.float64) / 255.0


def _sample(tex: _FloatArray, u: _FloatArray, v: _FloatArray) -> _FloatArray:
    """Bilinear texture lookup, wrapping along u and clamping along v.

    Parameters
    ----------
    tex : ndarray of float64, shape (h, w, c)
        Texture.
    u, v : ndarray of float64, shape (m,)
        Coordinates in [0, 1) (u wraps) and [0, 1] (v clamps).

    Returns
    -------
    ndarray of float64, shape (m, c)
    """
    h, w = tex.shape[:2]
    x = np.mod(u, 1.0) * w - 0.5
    y = np.clip(v, 0.0, 1.0) * (h - 1)
    x0 = np.floor(x)
    fx = (x - x0)[:, None]
    x0 = x0.astype(np.int64) % w
    x1 = (x0 + 1) % w
    y0 = np.clip(np.floor(y).astype(np.int64), 0, h - 2)
    fy = np.clip(y - y0, 0.0, 1.0)[:, None]
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y0 + 1, x0] * (1 - fx) + tex[y0 + 1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _mix(a: _FloatArray, b: Sequence[float] | _FloatArray, t: _FloatArray) -> _FloatArray:
    """Blend colour field ``a`` (h, w, 3) towards colour ``b`` by weights ``t`` (h, w)."""
    return a + (np.asarray(b, dtype=np.float64) - a) * t[..., None]


def _rgb(r: int, g: int, b: int) -> _FloatArray:
    """Return an 8-bit colour as a float64 array of shape (3,) in [0, 1]."""
    return np.array([r, g, b], dtype=np.float64) / 255.0


def _base_texture(sc: _Scene, colour: _FloatArray, rng: np.random.Generator, amp: float) -> _FloatArray:
    """Texture filled with ``colour`` x tint x (1 + amp x smooth noise); shape (h, w, 3)."""
    shape = _tex_shape(sc)
    noise = _smooth_noise(rng, (5, 14), shape)
    base = np.clip(colour * sc.tint, 0.0, 1.0)
    return base[None, None, :] * (1.0 + amp * noise)[..., None]


# ---------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------


def _revolve(
    sc: _Scene,
    profile: _Profile,
    y0: float,
    y1: float,
    tex: _FloatArray,
    rot: float = 0.0,
    **shading: float,
) -> NDArray[np.bool_]:
    """Paint a body of revolution about the local y axis, textured and shaded.

    Parameters
    ----------
    sc : _Scene
        Canvas to paint on.
    profile : callable
        Half-width ``w(y)`` (local units, >= 0) for an array of y in [y0, y1].
    y0, y1 : float
        Extent of the body along its axis (y0 is the top).
    tex : ndarray of float64, shape (h, w, 3)
        Albedo texture: u = angle around the axis (turned by ``sc.phase``),
        v = (y - y0) / (y1 - y0).
    rot : float
        Extra in-plane rotation of the axis, radians (pi/2 lays it horizontal).
    **shading : float
        Passed to `_Scene.shade`.

    Returns
    -------
    ndarray of bool, shape (n, n)
        Canvas pixels covered by the body.
    """
    x, y = sc.local(rot)
    inside = (y > y0) & (y < y1)
    w_all = np.zeros_like(x)
    w_all[inside] = profile(y[inside])
    inside &= np.abs(x) < w_all
    idx = np.nonzero(inside)
    px, py, w = x[idx], y[idx], w_all[idx]
    eps = 1e-3 * (y1 - y0)
    dw = (profile(np.clip(py + eps, y0, y1)) - profile(np.clip(py - eps, y0, y1))) / (2 * eps)
    pz = np.sqrt(np.clip(w**2 - px**2, 0.0, None))
    ny = -w * np.clip(dw, -25.0, 25.0)
    norm = np.sqrt(px**2 + ny**2 + pz**2) + 1e-12
    u = (sc.phase + np.arcsin(np.clip(px / w, -1.0, 1.0))) / (2 * math.pi)
    v = (py - y0) / (y1 - y0)
    albedo = _sample(tex, u, v)
    sc.rgb[idx] = sc.shade(albedo, (px / norm, ny / norm, pz / norm), rot, **shading)
    return inside


def _paint_polygon(sc: _Scene, pts: _FloatArray, colour: _FloatArray, rot: float = 0.0) -> None:
    """Fill a local-frame polygon with a flat colour.

    Parameters
    ----------
    sc : _Scene
        Canvas.
    pts : ndarray of float64, shape (m, 2)
        Local polygon vertices.
    colour : ndarray of float64, shape (3,)
        Fill colour in [0, 1].
    rot : float
        Extra in-plane rotation, radians.
    """
    img = Image.new("L", (sc.n, sc.n), 0)
    ImageDraw.Draw(img).polygon(sc.to_canvas(pts, rot), fill=255)
    sc.rgb[np.asarray(img) > 127] = np.clip(colour, 0.0, 1.0)


def _paint_stroke(
    sc: _Scene,
    pts: _FloatArray,
    width: float,
    colour: _FloatArray,
    light_side: float = 0.25,
) -> None:
    """Draw a thick local-frame polyline (a stem) with a light/dark edge.

    Parameters
    ----------
    sc : _Scene
        Canvas.
    pts : ndarray of float64, shape (m, 2)
        Local polyline points.
    width : float
        Stroke width, local units.
    colour : ndarray of float64, shape (3,)
        Mid colour in [0, 1].
    light_side : float
        Relative brightening of the lit half of the stroke.
    """
    px = max(1, round(width * sc.scale))
    canvas_pts = sc.to_canvas(pts)
    full = Image.new("L", (sc.n, sc.n), 0)
    ImageDraw.Draw(full).line(canvas_pts, fill=255, width=px, joint="curve")
    thin = Image.new("L", (sc.n, sc.n), 0)
    lx, ly = sc.light[0], sc.light[1]
    off = 0.25 * px
    shifted = [(x + off * lx, y + off * ly) for x, y in canvas_pts]
    ImageDraw.Draw(thin).line(shifted, fill=255, width=max(1, px // 2), joint="curve")
    mask = np.asarray(full) > 127
    lit = (np.asarray(thin) > 127) & mask
    sc.rgb[mask] = np.clip(colour, 0.0, 1.0)
    sc.rgb[lit] = np.clip(colour * (1.0 + light_side), 0.0, 1.0)


def _curve(p0: Sequence[float], p1: Sequence[float], bend: float, m: int = 12) -> _FloatArray:
    """Points on a gently bent segment from p0 to p1; shape (m, 2)."""
    a = np.asarray(p0, dtype=np.float64)
    b = np.asarray(p1, dtype=np.float64)
    t = np.linspace(0.0, 1.0, m)[:, None]
    d = b - a
    perp = np.array([-d[1], d[0]])
    return a + t * d + (bend * 4 * t * (1 - t)) * perp


# ---------------------------------------------------------------------------
# The fruits
# ---------------------------------------------------------------------------


def _apple(rng: np.random.Generator, size: int, angle: float | None) -> _Scene:
    """Red apple: round, wider at the top, streaky red-yellow skin, stem in a cavity."""
    phase = _phase(rng, angle)
    y0, y1 = -0.9, 0.9
    top_round = rng.uniform(2.2, 2.8)

    def profile(y: _FloatArray) -> _FloatArray:
        t = np.clip(y / 0.9, -1.0, 1.0)
        p = np.where(t < 0, top_round, 2.0)
        base = np.clip(1.0 - np.abs(t) ** p, 0.0, None) ** (1.0 / p)
        return 0.98 * base * (1.0 - 0.07 * t)

    stem = _curve((0.0, -0.8), (rng.uniform(-0.12, 0.12), -1.1), rng.uniform(-0.15, 0.15))
    hull = np.concatenate([_profile_hull(profile, y0, y1), _stroke_hull(stem, 0.05)])
    sc = _new_scene(rng, size, phase, hull, tilt_deg=12)
    shape = _tex_shape(sc)
    streak = _smooth_noise(rng, (4, 46), shape)
    blotch = _smooth_noise(rng, (4, 8), shape)
    yellow_amount = rng.uniform(0.2, 0.5)
    tex = _base_texture(sc, _rgb(170, 22, 32), rng, 0.05)
    tex = _mix(tex, _rgb(215, 90, 50), np.clip(0.5 + 0.5 * streak, 0, 1) * 0.75)
    tex = _mix(tex, _rgb(220, 170, 75), np.clip(0.5 * (blotch - 1.0) + yellow_amount, 0, 1) * 0.75)
    h, w = shape
    m = int(260 * sc.k)
    centres = np.column_stack([rng.uniform(0, w, m), rng.uniform(0.08 * h, 0.92 * h, m)])
    radii = np.full((m, 2), 1.1 * sc.k)
    tex = _mix(tex, _rgb(230, 200, 150), 0.55 * _dots(shape, centres, radii))
    body = _revolve(sc, profile, y0, y1, tex, specular=0.28, shininess=20)
    # stem cavity (soft dark dip), then the stem
    x, y = sc.local()
    cav = np.exp(-((x / 0.2) ** 2 + ((y + 0.8) / 0.09) ** 2)) * body
    sc.rgb *= (1.0 - 0.35 * cav)[..., None]
    _paint_stroke(sc, stem, 0.05, _rgb(95, 65, 35))
    return sc


def _banana(rng: np.random.Generator, size: int, angle: float | None) -> _Scene:
    """Banana: curved, elongated, faceted yellow tube with a green stalk and black tip.

    Turning about the vertical axis foreshortens it and, past 90 degrees, mirrors it.
    """
    phase = _phase(rng, angle)
    curv = rng.uniform(0.28, 0.42)
    thick = rng.uniform(0.26, 0.31)
    fx = 0.8 + 0.2 * abs(math.cos(phase))
    flip = 1.0 if math.cos(phase) >= 0 else -1.0
    lift = 0.3 * curv  # centres the crescent vertically

    def centre(mx: _FloatArray) -> _FloatArray:
        return curv * (mx**2 - 0.6) - lift

    def thickness(mx: _FloatArray) -> _FloatArray:
        body = thick * np.clip(1.0 - np.abs(mx) ** 2.2, 0.0, None) ** 0.55
        stalk = np.where((mx > 0.85) & (mx < 1.14), 0.08, 0.0)
        tip = np.where((mx < -0.9) & (mx > -1.05), 0.055, 0.0)
        return np.maximum(body, np.maximum(stalk, tip))

    xs = np.linspace(-1.05, 1.14, 80)
    half = thickness(xs) * np.sqrt(1 + (2 * curv * xs) ** 2)
    hull = np.concatenate(
        [np.column_stack([xs * fx * flip, centre(xs) + half]), np.column_stack([xs * fx * flip, centre(xs) - half])]
    )
    sc = _new_scene(rng, size, phase, hull, tilt_deg=35)
    x, y = sc.local()
    mx = x * flip / fx
    fp = 2 * curv * mx
    slope = np.sqrt(1 + fp**2)
    d = (y - centre(mx)) / slope
    t = thickness(mx)
    idx = np.nonzero(np.abs(d) < t)
    a = np.clip(d[idx] / t[idx], -1.0, 1.0)
    theta = np.arcsin(a)
    step = math.pi / 4  # faceted cross-section
    q = np.round(theta / step) * step
    theta_f = 0.4 * theta + 0.6 * q
    perp_x = -fp[idx] / slope[idx]
    perp_y = 1.0 / slope[idx]
    nx = np.sin(theta_f) * perp_x * flip / fx
    ny = np.sin(theta_f) * perp_y
    nz = np.cos(theta_f)
    norm = np.sqrt(nx**2 + ny**2 + nz**2)
    # albedo: yellow with brown specks, darker ridges, green ends, stalk, black tip
    shape = _tex_shape(sc)
    tex = _base_texture(sc, _rgb(240, 200, 55), rng, 0.04)
    hh, ww = shape
    m = int(120 * sc.k)
    centres = np.column_stack([rng.uniform(0, ww, m), rng.uniform(0, hh, m)])
    radii = rng.uniform(0.8, 2.0, (m, 1)) * sc.k * np.array([[2.0, 1.0]])
    tex = _mix(tex, _rgb(120, 80, 30), 0.7 * _dots(shape, centres, radii))
    mxi = mx[idx]
    albedo = _sample(tex, (mxi + 1.2) / 4.8, (a + 1) / 2)
    albedo[np.abs(theta - q) > 0.42 * step] *= 0.86
    ends = np.clip((np.abs(mxi) - 0.55) / 0.35, 0.0, 1.0)[:, None]
    albedo = albedo + (_rgb(165, 175, 60) * sc.tint - albedo) * ends * 0.7
    albedo[(mxi > 0.9) & (np.abs(d[idx]) < 0.08)] = _rgb(105, 105, 50) * sc.tint
    albedo[mxi < -0.93] = _rgb(55, 45, 30)
    sc.rgb[idx] = sc.shade(albedo, (nx / norm, ny / norm, nz / norm), specular=0.18, shininess=14)
    return sc


def _grape(rng: np.random.Generator, size: int, angle: float | None) -> _Scene:
    """Blue grapes: a cone-shaped cluster of small dark purple berries with bloom."""
    phase = _phase(rng, angle)
    # 3-D cluster, wide at the top and narrow at the bottom, turned by the phase
    pts: list[tuple[float, float, float, float]] = []
    for _ in range(600):
        if len(pts) >= 30:
            break
        yy = rng.uniform(-0.6, 0.78)
        rr = rng.uniform(0.21, 0.26)
        cone = 0.7 * (1.0 - (yy + 0.6) / 1.7) + 0.06
        ang = rng.uniform(0, 2 * math.pi)
        rad = cone * math.sqrt(rng.uniform(0, 1))
        xx, zz = rad * math.cos(ang), rad * math.sin(ang)
        if all((xx - p[0]) ** 2 + (yy - p[1]) ** 2 + (zz - p[2]) ** 2 > (1.6 * rr) ** 2 for p in pts):
            pts.append((xx, yy, zz, rr))
    cph, sph = math.cos(phase), math.sin(phase)
    berries = sorted(((x * cph + z * sph, y, -x * sph + z * cph, r) for x, y, z, r in pts), key=lambda b: b[2])
    stalk = _curve((0.02, -1.08), (0.0, -0.45), 0.1)
    centres = np.array([[b[0], b[1]] for b in berries])
    radii = np.array([[b[3], 1.05 * b[3]] for b in berries])
    hull = np.concatenate(
        [centres + radii * np.array(o) for o in ((1, 0), (-1, 0), (0, 1), (0, -1))] + [_stroke_hull(stalk, 0.06)]
    )
    sc = _new_scene(rng, size, phase, hull, tilt_deg=12)
    _paint_stroke(sc, stalk, 0.06, _rgb(105, 95, 55))  # behind the berries
    x, y = sc.local()
    base = np.clip(_rgb(62, 38, 88) * sc.tint, 0, 1)
    bloom_col = _rgb(140, 135, 175)
    zs = [b[2] for b in berries]
    zmin, zspan = min(zs), max(max(zs) - min(zs), 1e-6)
    for bx, by, bz, br in berries:  # back to front
        dx, dy = (x - bx) / br, (y - by) / (br * 1.05)
        rr2 = dx**2 + dy**2
        idx = np.nonzero(rr2 < 1.0)
        nz = np.sqrt(1.0 - rr2[idx])
        bloom = 0.25 + 0.2 * rng.uniform()
        albedo = np.tile(base + (bloom_col - base) * bloom, (len(nz), 1))
        ao = 0.7 + 0.3 * (bz - zmin) / zspan  # berries at the back get less light
        sc.rgb[idx] = sc.shade(albedo * ao, (dx[idx], dy[idx], nz), specular=0.35, shininess=30)
    return sc


def _kiwi(rng: np.random.Generator, size: int, angle: float | None) -> _Scene:
    """Kiwi: brown fuzzy oval lying on its side, with a darker stem end and hairs."""
    phase = _phase(rng, angle)
    half_len = rng.uniform(0.95, 1.02)
    girth = rng.uniform(0.68, 0.78)
    squarish = rng.uniform(2.1, 2.6)
    rot = math.pi / 2

    def profile(y: _FloatArray) -> _FloatArray:
        t = np.clip(np.abs(y) / half_len, 0.0, 1.0)
        return girth * np.clip(1.0 - t**squarish, 0.0, None) ** (1.0 / squarish)

    hull = 1.04 * _profile_hull(profile, -half_len, half_len, rot)  # + hairs
    sc = _new_scene(rng, size, phase, hull, tilt_deg=15)
    shape = _tex_shape(sc)
    tex = _base_texture(sc, _rgb(132, 94, 54), rng, 0.08)
    fine = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    fuzz = np.asarray(fine.filter(ImageFilter.GaussianBlur(0.8 * sc.k)), dtype=np.float64)
    fuzz = (fuzz - fuzz.mean()) / (fuzz.std() + 1e-9)
    tex = tex * (1.0 + 0.16 * fuzz)[..., None]
    end = np.zeros(shape)
    end[: max(1, int(0.04 * shape[0]))] = 1.0
    tex = _mix(tex, _rgb(70, 50, 30), end * 0.8)
    inside = _revolve(sc, profile, -half_len, half_len, tex, rot, ambient=0.5, diffuse=0.55, specular=0.04)
    # short hairs sticking out of the silhouette
    edge = np.asarray(Image.fromarray((inside * 255).astype(np.uint8)).filter(ImageFilter.FIND_EDGES))
    ys, xs = np.nonzero(edge > 0)
    if len(xs):
        pick = rng.choice(len(xs), size=min(len(xs), int(260 * sc.k)), replace=False)
        img = Image.fromarray(np.round(sc.rgb * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        hair = tuple(int(c) for c in np.clip(_rgb(125, 92, 58) * sc.tint * 255, 0, 255))
        for i in pick.tolist():
            px, py = float(xs[i]), float(ys[i])
            ox, oy = px - sc.cx, py - sc.cy
            nrm = math.hypot(ox, oy) + 1e-9
            ln = rng.uniform(1.0, 2.6) * sc.k
            jit = rng.uniform(-0.5, 0.5)
            dx, dy = ox / nrm + jit * oy / nrm, oy / nrm - jit * ox / nrm
            draw.line((px, py, px + dx * ln, py + dy * ln), fill=hair, width=max(1, int(sc.k)))
        sc.rgb = np.asarray(img, dtype=np.float64) / 255.0
    return sc


def _lemon(rng: np.random.Generator, size: int, angle: float | None) -> _Scene:
    """Lemon: bright yellow ellipse lying on its side, pointed nubs at both ends."""
    phase = _phase(rng, angle)
    girth = rng.uniform(0.62, 0.7)
    point = rng.uniform(0.7, 0.85)
    nub = rng.uniform(0.09, 0.12)
    rot = math.pi / 2

    def profile(y: _FloatArray) -> _FloatArray:
        t = np.clip(y / 0.9, -1.0, 1.0)
        body = girth * np.clip(1.0 - t**2, 0.0, None) ** point
        ay = np.abs(y)
        tipc = np.clip(1.0 - ((ay - 0.86) / 0.15) ** 2, 0.0, None)
        return np.maximum(body, np.where(ay > 0.75, nub * np.sqrt(tipc), 0.0))

    sc = _new_scene(rng, size, phase, _profile_hull(profile, -1.02, 1.02, rot), tilt_deg=15)
    shape = _tex_shape(sc)
    tex = _base_texture(sc, _rgb(250, 222, 45), rng, 0.04)
    h, w = shape
    m = int(1800 * sc.k)
    centres = np.column_stack([rng.uniform(0, w, m), rng.uniform(0, h, m)])
    radii = np.full((m, 2), 0.9 * sc.k)
    tex = tex * (1.0 - 0.1 * _dots(shape, centres, radii))[..., None]
    vv = np.linspace(0.0, 1.0, h)
    green = np.clip((np.abs(vv - 0.5) - 0.38) / 0.12, 0.0, 1.0)[:, None] * np.ones((1, w))
    tex = _mix(tex, _rgb(190, 200, 60), green * 0.8)
    _revolve(sc, profile, -1.02, 1.02, tex, rot, specular=0.3, shininess=22)
    return sc


def _orange(rng: np.random.Generator, size: int, angle: float | None) -> _Scene:
    """Orange: dimpled orange sphere with a small stem scar."""
    phase = _phase(rng, angle)
    flat = rng.uniform(0.9, 0.96)
    rad = rng.uniform(0.94, 0.97)
    y1 = rad * flat

    def profile(y: _FloatArray) -> _FloatArray:
        return rad * np.sqrt(np.clip(1.0 - (y / y1) ** 2, 0.0, None))

    sc = _new_scene(rng, size, phase, _profile_hull(profile, -y1, y1), tilt_deg=12)
    shape = _tex_shape(sc)
    tex = _base_texture(sc, _rgb(248, 138, 18), rng, 0.05)
    h, w = shape
    m = int(2600 * sc.k)
    centres = np.column_stack([rng.uniform(0, w, m), rng.uniform(0, h, m)])
    radii = rng.uniform(0.8, 1.5, (m, 1)) * sc.k * np.ones((1, 2))
    pits = _dots(shape, centres, radii, blur=0.6 * sc.k)
    tex = tex * (1.0 - 0.16 * pits)[..., None]
    _revolve(sc, profile, -y1, y1, tex, specular=0.2, shininess=12)
    x, y = sc.local()
    scar = ((x / 0.07) ** 2 + ((y + y1 - 0.04) / 0.03) ** 2) < 1.0
    sc.rgb[scar] = _rgb(105, 110, 45)
    return sc


def _pear(rng: np.random.Generator, size: int, angle: float | None) -> _Scene:
    """Green pear: bulb at the bottom, narrow neck, russet speckles, brown stem."""
    phase = _phase(rng, angle)
    neck_w = rng.uniform(0.28, 0.36)
    bulb_r = rng.uniform(0.66, 0.72)
    waist = rng.uniform(1.2, 1.6)
    top, bottom = -0.98, 0.98
    bulb_c = bottom - bulb_r

    def profile(y: _FloatArray) -> _FloatArray:
        low = np.sqrt(np.clip(bulb_r**2 - (y - bulb_c) ** 2, 0.0, None))
        s = np.clip((y - top) / (bulb_c - top), 0.0, 1.0)
        ss = s**waist
        up = neck_w + (bulb_r - neck_w) * (3 * ss**2 - 2 * ss**3)
        cap = np.sqrt(np.clip(1.0 - ((0.14 - s) / 0.14) ** 2, 0.0, 1.0))
        return np.where(y >= bulb_c, low, up * np.where(s < 0.14, cap, 1.0))

    stem = _curve((0.0, -0.95), (rng.uniform(-0.15, 0.15), -1.2), rng.uniform(-0.2, 0.2))
    hull = np.concatenate([_profile_hull(profile, top, bottom), _stroke_hull(stem, 0.055)])
    sc = _new_scene(rng, size, phase, hull, tilt_deg=10)
    shape = _tex_shape(sc)
    tex = _base_texture(sc, _rgb(158, 190, 68), rng, 0.06)
    blush = _smooth_noise(rng, (3, 6), shape)
    tex = _mix(tex, _rgb(200, 200, 80), np.clip(blush - 0.5, 0, 1) * 0.6)
    h, w = shape
    m = int(900 * sc.k)
    centres = np.column_stack([rng.uniform(0, w, m), rng.uniform(0, h, m)])
    radii = rng.uniform(0.7, 1.4, (m, 1)) * sc.k * np.ones((1, 2))
    tex = _mix(tex, _rgb(120, 110, 50), 0.7 * _dots(shape, centres, radii))
    _revolve(sc, profile, top, bottom, tex, specular=0.15, shininess=12)
    _paint_stroke(sc, stem, 0.055, _rgb(100, 75, 40))
    return sc


def _strawberry(rng: np.random.Generator, size: int, angle: float | None) -> _Scene:
    """Strawberry: red heart-ish cone with yellow seeds and a green leafy calyx."""
    phase = _phase(rng, angle)
    y0, y1 = -0.7, 1.0
    wid = rng.uniform(0.78, 0.86)
    sharp = rng.uniform(1.4, 1.9)

    def profile(y: _FloatArray) -> _FloatArray:
        t = np.clip((y - y0) / (y1 - y0), 0.0, 1.0)
        top = np.sqrt(np.clip(1.0 - ((0.25 - t) / 0.25) ** 2, 0.0, None)) ** 0.8
        s = np.clip((t - 0.25) / 0.75, 0.0, 1.0)
        low = np.clip(1.0 - s**sharp, 0.0, None) ** 0.9
        return wid * np.where(t < 0.25, top, low)

    # calyx: leaves radiating from the top and drooping; they turn with the phase
    n_leaves = int(rng.integers(6, 9))
    leaves: list[tuple[float, _FloatArray, _FloatArray]] = []
    base = np.array([0.0, y0 + 0.03, 0.0])
    for i in range(n_leaves):
        a = phase + 2 * math.pi * (i + rng.uniform(-0.2, 0.2)) / n_leaves
        droop = rng.uniform(0.35, 0.85)
        length = rng.uniform(0.5, 0.68)
        half_w = rng.uniform(0.1, 0.15)
        d = np.array([math.sin(a) * math.cos(droop), math.sin(droop), math.cos(a) * math.cos(droop)])
        side = np.array([math.cos(a), 0.0, -math.sin(a)])
        # seen from the side a flat leaf is edge-on: keep a minimum apparent width
        d2 = d[:2] / (np.linalg.norm(d[:2]) + 1e-9)
        perp = np.array([-d2[1], d2[0]]) * half_w * max(0.55, abs(math.cos(a)))
        mid = base[:2] + 0.4 * length * d[:2]
        outline = np.array([base[:2], mid + perp, base[:2] + length * d[:2], mid - perp])
        nrm = np.cross(d, side)
        nrm = nrm / np.linalg.norm(nrm)
        leaves.append((float(d[2]), outline, -nrm if nrm[1] > 0 else nrm))
    leaves.sort(key=lambda item: item[0])
    stem = _curve((0.0, y0 + 0.05), (rng.uniform(-0.08, 0.08), -0.98), 0.1)
    hull = np.concatenate([_profile_hull(profile, y0, y1), _stroke_hull(stem, 0.06)] + [lf[1] for lf in leaves])
    sc = _new_scene(rng, size, phase, hull, tilt_deg=12)
    shape = _tex_shape(sc)
    h, w = shape
    tex = _base_texture(sc, _rgb(226, 30, 40), rng, 0.06)
    dark = _smooth_noise(rng, (4, 10), shape)
    tex = _mix(tex, _rgb(160, 15, 25), np.clip(dark - 0.3, 0, 1) * 0.6)
    # seeds: staggered rows, fewer where the berry is narrow, each in a small pit
    centres_l: list[tuple[float, float]] = []
    radii_l: list[tuple[float, float]] = []
    rows = 12
    for r in range(rows):
        vv = (r + 0.7) / (rows + 0.4)
        wy = float(profile(np.array([y0 + vv * (y1 - y0)]))[0]) / wid
        count = max(2, int(round(24 * wy)))
        off = rng.uniform(0, 1)
        for j in range(count):
            uu = (j + off + 0.5 * (r % 2)) / count
            centres_l.append((uu * w + rng.normal(0, 2 * sc.k), vv * h + rng.normal(0, 1.5 * sc.k)))
            radii_l.append((1.6 * sc.k / max(wy, 0.25), 2.2 * sc.k))
    centres = np.array(centres_l)
    radii = np.array(radii_l)
    pits = _dots(shape, centres, radii * 1.9, blur=0.8 * sc.k)
    seeds = _dots(shape, centres, radii)
    tex = tex * (1.0 - 0.3 * pits)[..., None]
    tex = _mix(tex, _rgb(240, 205, 90), seeds)
    leaf_col = np.clip(_rgb(72, 150, 48) * (1.0 + rng.normal(0, 0.05, 3)), 0, 1)
    c, s = math.cos(sc.tilt), math.sin(sc.tilt)

    def leaf(outline: _FloatArray, nrm: _FloatArray) -> None:
        ix, iy = c * nrm[0] - s * nrm[1], s * nrm[0] + c * nrm[1]
        ndl = max(0.0, ix * sc.light[0] + iy * sc.light[1] + abs(nrm[2]) * sc.light[2])
        _paint_polygon(sc, outline, leaf_col * (0.55 + 0.6 * ndl))

    for depth, outline, nrm in leaves:  # leaves well behind the berry first
        if depth < -0.4:
            leaf(outline, nrm)
    _revolve(sc, profile, y0, y1, tex, ambient=0.52, specular=0.35, shininess=24)
    for depth, outline, nrm in leaves:
        if depth >= -0.4:
            leaf(outline, nrm)
    _paint_stroke(sc, stem, 0.06, _rgb(85, 130, 50))
    return sc


_DRAWERS: dict[str, Callable[[np.random.Generator, int, float | None], _Scene]] = {
    "Apple Red 1": _apple,
    "Banana": _banana,
    "Grape Blue": _grape,
    "Kiwi": _kiwi,
    "Lemon": _lemon,
    "Orange": _orange,
    "Pear Green": _pear,
    "Strawberry": _strawberry,
}


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def draw_fruit(cls: str, rng: np.random.Generator, size: int = 100, *, angle: float | None = None) -> Image.Image:
    """Draw one fruit of class ``cls`` centred on a white background.

    Parameters
    ----------
    cls : str
        One of `CLASSES`.
    rng : numpy.random.Generator
        The only source of randomness (placement, light, colour, texture).
    size : int, default 100
        Side of the square image, pixels (>= 16).
    angle : float, optional
        Rotation about the vertical axis, degrees; drawn from ``rng`` when None.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, ``size`` x ``size`` (as an array: shape (size, size, 3),
        dtype uint8); the border pixels are pure white.

    Raises
    ------
    ParameterError
        Unknown class or size below 16.
    """
    if cls not in _DRAWERS:
        raise ParameterError(f"cls={cls!r} is not a sample class. Fix: use one of {list(CLASSES)}.")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 16:
        raise ParameterError(f"size={size!r} must be an integer >= 16. Fix: pass e.g. size=100.")
    sc = _DRAWERS[cls](rng, int(size), angle)
    arr = np.clip(np.round(sc.rgb * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).reduce(_SS).convert("RGB")


def _angle_step(n_per_class: int) -> int:
    """Degrees between consecutive views: 360 // n, at least 1 (keeps names unique)."""
    return max(1, 360 // n_per_class)


def sample_file_names(n_per_class: int) -> list[str]:
    """File names used by `generate_sample` in one class folder.

    Parameters
    ----------
    n_per_class : int
        Images per class.

    Returns
    -------
    list of str
        ``r_<angle>_100.jpg`` with angle = k * `_angle_step` (unique), length n_per_class.
    """
    step = _angle_step(n_per_class)
    return [f"r_{k * step}_100.jpg" for k in range(n_per_class)]


def generate_sample(
    out_dir: _PathLike,
    n_per_class: int = 10,
    seed: int = 0,
    quality: int = 90,
) -> list[Path]:
    """Write ``n_per_class`` JPEGs for every class into ``out_dir/<class>/``.

    Image ``k`` of class ``c`` is drawn with ``numpy.random.default_rng([seed, c, k])``
    at rotation ``k * step`` degrees (``step = 360 // n_per_class``), named
    ``r_<k*step>_100.jpg``. JPEGs are baseline, 4:2:0, fixed quality, no
    optimisation pass and no metadata, so the same seed gives byte-identical files
    with the same Pillow/libjpeg. Existing files of the same names are replaced;
    other files are left alone (see ``scripts/make_sample.py`` to wipe stale ones).

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Output folder (created if missing).
    n_per_class : int, default 10
        Images per class (>= 1).
    seed : int, default 0
        Seed of the whole sample.
    quality : int, default 90
        JPEG quality, 1-95.

    Returns
    -------
    list of pathlib.Path
        The written files, class by class in `CLASSES` order, length
        ``len(CLASSES) * n_per_class``.

    Raises
    ------
    ParameterError
        Bad ``n_per_class``, ``seed`` or ``quality``.
    """
    for name, value, low, high in (("n_per_class", n_per_class, 1, None), ("quality", quality, 1, 95)):
        if (
            not isinstance(value, (int, np.integer))
            or isinstance(value, bool)
            or value < low
            or (high is not None and value > high)
        ):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ParameterError(f"{name}={value!r} must be an integer {bounds}. Fix: pass e.g. {name}=10.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ParameterError(f"seed={seed!r} must be a non-negative integer. Fix: pass e.g. seed=0.")
    out = Path(out_dir)
    step = _angle_step(int(n_per_class))
    written: list[Path] = []
    for ci, cls in enumerate(CLASSES):
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        for k, fname in enumerate(sample_file_names(int(n_per_class))):
            rng = np.random.default_rng([int(seed), ci, k])
            img = draw_fruit(cls, rng, 100, angle=float((k * step) % 360))
            path = folder / fname
            img.save(path, format="JPEG", quality=int(quality), subsampling=2, optimize=False, progressive=False)
            written.append(path)
    return written


def calibration_images(n: int = 32, seed: int = 12345) -> list[Image.Image]:
    """In-memory fruit images cycling through all classes (no file needed).

    ``calibration_images(16, seed=12345)`` is what ``scripts/make_sample.py
    --calibration`` saves as ``p8utils/data/calibration/*.png``, the images on
    which the offline model weights recalibrate their BatchNorm statistics.
    Image ``i`` is class ``CLASSES[i % len(CLASSES)]`` drawn with
    ``numpy.random.default_rng([seed, i])``, so the list is deterministic.

    Parameters
    ----------
    n : int, default 32
        Number of images (>= 0).
    seed : int, default 12345
        Seed (non-negative).

    Returns
    -------
    list of PIL.Image.Image
        ``n`` RGB images of 100x100 pixels (each an array of shape (100, 100, 3), uint8).

    Raises
    ------
    ParameterError
        Negative or non-integer ``n`` or ``seed``.
    """
    for name, value in (("n", n), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ParameterError(f"{name}={value!r} must be a non-negative integer. Fix: pass e.g. {name}=32.")
    return [draw_fruit(CLASSES[i % len(CLASSES)], np.random.default_rng([int(seed), i]), 100) for i in range(int(n))]
