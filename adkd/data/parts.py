"""A third embedded pixel-level set, of aligned objects with structural defects: procedurally
rendered industrial parts (``washer``, ``mesh``, ``gear``) whose defects are made of the part's
own material and background (``missing``, ``extra``, ``deformed``), in the MVTec AD layout.

Why a third set. ``textures`` and ``cells`` share one defect family: marks drawn on top of an
image (scratches, cracks, stains, pits from ``defect-synthesis``), on stationary, texture-like
images. The methods that train on synthetic anomalies (DRAEM, DeSTSeg, ADPS: Perlin-shaped blobs
of a foreign texture blended into the image, :mod:`adkd.data.synthesis`) lead on both, and did
not on real parts with other defects. This set differs from theirs on every one of those counts:

- **objects, not textures**: each image is one aligned part (MVTec AD's object categories rather
  than its textures), so where a pixel lies on the part matters, not only what it looks like;
- **structure, not marks**: a defect is a change of the part's shape (a chip, a missing tooth, a
  hole too many, a dent, a bent tooth), rendered with the same material, grain, lighting and noise
  as the rest of the image: its pixels are in the intensity range of normal images, and only their
  place is wrong;
- **no method trains on anything like it**: a missing gear tooth or a hole that moved by 2 px is
  no Perlin blob of foreign texture.

The defect kinds, for every part: ``missing`` (a feature that should be there is not: a chip or
notch out of the washer's edge, a broken-off or missing gear tooth, a gear's lightening hole or a
mesh hole filled with material), ``extra`` (something that should not be there: a burr or flash
on an edge, material packed into a tooth gap, a blob or bridge in a mesh hole, an extra small
hole between the mesh's holes) and ``deformed`` (a feature there but misshapen or misplaced: a
dent or bulge of an edge, an off-centre washer hole, a bent tooth, a displaced, enlarged or oval
hole). Named by what is wrong with the part's features rather than by material: a mesh hole that
is missing is material added, and is ``missing``.

How an image is made. Each part is drawn as a boolean inside/outside function at 4x the image
size and averaged down (anti-aliased edges), then shaded: the part's material (level plus a
category's grain: concentric turning marks on the washer, a brushed grain along the mesh plate,
a sintered mottle on the gear), a darker background with its own mottle, a relief of the edges
lit from one side (an emboss of the coverage: the edges' chamfers catch the light), a lighting
gradient from the same side, a contrast and brightness change, then Gaussian sensor noise. The
pose varies too: a translation of a few pixels, a full rotation for the gear (its keyway turns
with it), the washer's grain and the mesh's grid phase (a shift of the whole grid by a fraction
of its pitch, and a rotation under 2 degrees). So "normal" is a distribution, not an image.

How a defect and its mask are made. A defective image is rendered twice from one draw of pose,
look and noise: the intact part and the defective one. The mask is where the two noise-free
renders differ by more than ``CHANGE_LEVELS`` grey levels, dilated by one pixel (a margin for the
anti-aliased rim, as annotators draw), and the image is the defective render inside the mask and
the intact one outside it (the dilated margin differs by at most ``CHANGE_LEVELS``, under the
noise). So the mask is exactly where the image differs from its intact twin (the tests check
this), and the defect's area is at least ``MIN_MASK_PX`` changed pixels (at 128 px; a defect that
changes fewer is drawn again). Another departure from the textures, on purpose: each image is
drawn from its own generator, seeded by (category, split, index), so changing one count (say
``n_train``) leaves every other image as it was.

Generated once, deterministically per category (a fixed seed each, not the run's), into
``root``/<category> with the textures' layout and counts (160 train, 16 ``val/good`` never trained
on, 40 good and 60 defective test images, the kinds in turn) and their ``params.json`` stamp,
written last (:func:`adkd.data.textures.write_layout`). Images are 8-bit greyscale PNGs. A
category takes a few seconds to make (two to three of CPU time at 128 px); nothing is downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from adkd.data.textures import TexturesDataModule, is_generated, write_layout

log = logging.getLogger(__name__)

PARTS = ("washer", "mesh", "gear")
DEFECTS = ("missing", "extra", "deformed")
FORMAT_VERSION = 1
SEEDS = {"washer": 7001, "mesh": 7002, "gear": 7003}  # fixed per category, independent of the run's seed
SPLITS = {"train": 0, "val": 1, "good": 2, "defect": 3}  # the generator of image i of a split: (seed, split, i)
SUPERSAMPLING = 4  # drawn at 4x and averaged down: anti-aliased edges
CHANGE_LEVELS = 3.0  # a pixel is in the mask if the defect changed its noise-free value by more (0-255 scale)
MIN_MASK_PX = 16  # changed pixels at 128 px (scaled by area at other sizes); fewer: the defect is drawn again
UNIT = 128.0  # the parts' geometry is in pixels of a 128 px image


# -- shapes over the supersampled grid, coordinates in UNIT pixels --------------------------------
# The grid is given by its axes, x (1, W) and y (H, 1), broadcast where needed. A shape returns
# its window of the grid (rows, columns) and a boolean array over that window only, so a small
# shape costs its own size, not the image's; _paint writes it into a full mask.


def _window(x: np.ndarray, y: np.ndarray, cx: float, cy: float, reach: float) -> tuple[slice, slice]:
    columns = np.searchsorted(x[0], (cx - reach, cx + reach))
    rows = np.searchsorted(y[:, 0], (cy - reach, cy + reach))
    return slice(*rows), slice(*columns)


def _local(x: np.ndarray, y: np.ndarray, window: tuple[slice, slice], cx: float, cy: float):  # noqa: ANN202
    return x[:, window[1]] - cx, y[window[0], :] - cy


def _disc(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> tuple:
    cx, cy, r = float(cx), float(cy), float(r)  # python floats: the grid's float32 stays float32
    w = _window(x, y, cx, cy, r)
    dx, dy = _local(x, y, w, cx, cy)
    return w, dx * dx + dy * dy <= r * r


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float) -> tuple:
    cx, cy, c, s = float(cx), float(cy), float(np.cos(angle)), float(np.sin(angle))
    w = _window(x, y, cx, cy, max(a, b))
    dx, dy = _local(x, y, w, cx, cy)
    return w, ((dx * c + dy * s) / a) ** 2 + ((dy * c - dx * s) / b) ** 2 <= 1


def _box(x: np.ndarray, y: np.ndarray, cx: float, cy: float, length: float, width: float, angle: float) -> tuple:
    cx, cy, c, s = float(cx), float(cy), float(np.cos(angle)), float(np.sin(angle))
    w = _window(x, y, cx, cy, float(np.hypot(length, width)) / 2)
    dx, dy = _local(x, y, w, cx, cy)
    return w, (np.abs(dx * c + dy * s) <= length / 2) & (np.abs(dy * c - dx * s) <= width / 2)


def _paint(mask: np.ndarray, piece: tuple, value: bool) -> None:
    window, inside = piece
    mask[window][inside] = value


def _wrap(angle: np.ndarray | float) -> np.ndarray | float:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _at(cx: float, cy: float, radius: float, angle: float) -> tuple[float, float]:
    return float(cx + radius * np.cos(angle)), float(cy + radius * np.sin(angle))


@dataclass
class Defect:
    """A defect of one part: material cut away (``cut``) and added (``add``), each a list of
    (shape, arguments), and changes of the part's own geometry (``change``), which the part's
    ``inside`` reads. A defect without changes is painted onto the intact part's mask."""

    kind: str
    cut: list = field(default_factory=list)
    add: list = field(default_factory=list)
    change: dict = field(default_factory=dict)

    def apply(self, inside: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = inside.copy()
        for shape, args in self.cut:
            _paint(inside, shape(x, y, *args), False)
        for shape, args in self.add:
            _paint(inside, shape(x, y, *args), True)
        return inside


class Washer:
    """A flat ring on a darker background, turned: concentric grain."""

    r_out, r_in = 44.0, 19.0
    material = 165.0

    def pose(self, rng: np.random.Generator) -> dict:
        return dict(cx=64 + float(rng.uniform(-3, 3)), cy=64 + float(rng.uniform(-3, 3)))

    def inside(self, x: np.ndarray, y: np.ndarray, pose: dict, defect: Defect | None) -> np.ndarray:
        change = defect.change if defect else {}
        dx, dy = x - pose["cx"], y - pose["cy"]
        rho2 = dx * dx + dy * dy
        r_out, r_in = np.float32(self.r_out), np.float32(self.r_in)
        if "dent" in change:  # a local dent (depth > 0: into the material) or bulge of one edge
            edge, angle, depth, width = change["dent"]
            bump = depth * np.exp(-0.5 * (_wrap(np.arctan2(dy, dx) - angle) / width) ** 2)
            r_out, r_in = (r_out - bump, r_in) if edge == "outer" else (r_out, r_in + bump)
        rho2_in = rho2
        if "hole_shift" in change:  # the hole off centre
            sx, sy = change["hole_shift"]
            rho2_in = (dx - sx) ** 2 + (dy - sy) ** 2
        ring = (rho2 <= r_out * r_out) & (rho2_in >= r_in * r_in)
        return defect.apply(ring, x, y) if defect else ring

    def grain(self, rng: np.random.Generator, pose: dict, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
        rho, phi = np.hypot(x - pose["cx"], y - pose["cy"]), np.arctan2(y - pose["cy"], x - pose["cx"])
        turned = sum(
            rng.uniform(1.0, 2.5) * np.sin(2 * np.pi * rho / rng.uniform(1.6, 3.2) + rng.uniform(0, 2 * np.pi))
            for _ in range(3)
        )
        sheen = rng.uniform(3, 7) * np.cos(2 * (phi - rng.uniform(0, np.pi)))  # turned surfaces reflect by angle
        return turned + sheen + rng.uniform(1.5, 3) * _smooth_noise(rng, x.shape, 0.6 * s)

    def defect(self, kind: str, pose: dict, rng: np.random.Generator) -> Defect:
        cx, cy = pose["cx"], pose["cy"]
        angle = float(rng.uniform(-np.pi, np.pi))
        outer = rng.random() < 0.7
        variant = rng.random()
        if kind == "missing":
            if variant < 0.6:  # a chip: a disc out of the edge
                r, depth = rng.uniform(3, 6), rng.uniform(1.5, 4)
                radius = self.r_out + r - depth if outer else self.r_in - r + depth
                return Defect(kind, cut=[(_disc, (*_at(cx, cy, radius, angle), r))])
            width, length = rng.uniform(3, 5), rng.uniform(3, 8)  # a radial notch from the outer edge
            centre = _at(cx, cy, self.r_out - length / 2 + 1, angle)
            return Defect(kind, cut=[(_box, (*centre, length + 2, width, angle))])
        if kind == "extra":
            if variant < 0.6:  # a burr: a blob on the edge, outwards (or into the hole)
                r = rng.uniform(2, 4.5)
                lift = r * rng.uniform(0.2, 0.7)
                radius = self.r_out + lift if outer else self.r_in - lift
                return Defect(kind, add=[(_disc, (*_at(cx, cy, radius, angle), r))])
            a, b = rng.uniform(5, 11), rng.uniform(1.2, 2.5)  # flash: a thin lip along the outer edge
            return Defect(kind, add=[(_ellipse, (*_at(cx, cy, self.r_out + b * 0.6, angle), a, b, angle + np.pi / 2))])
        if variant < 0.7:  # a dent or bulge of an edge
            depth, width = float(rng.uniform(1.5, 3.5) * rng.choice((-1, 1))), rng.uniform(0.08, 0.25)
            return Defect(kind, change=dict(dent=("outer" if outer else "inner", angle, depth, width)))
        shift = rng.uniform(1.2, 2.5)
        return Defect(kind, change=dict(hole_shift=(float(shift * np.cos(angle)), float(shift * np.sin(angle)))))


class Mesh:
    """A perforated plate filling the image: a staggered grid of round through-holes."""

    pitch, r_hole = 18.0, 5.2
    row = float(18.0 * np.sqrt(3) / 2)
    material = 150.0

    def pose(self, rng: np.random.Generator) -> dict:
        angle, px, py = np.deg2rad(rng.uniform(-1.5, 1.5)), rng.uniform(0, self.pitch), rng.uniform(0, 2 * self.row)
        return dict(angle=float(angle), px=float(px), py=float(py))

    def to_image(self, u: float, v: float, pose: dict) -> tuple[float, float]:
        """Grid coordinates (hole (i, j) at (i + j % 2 / 2) x pitch, j x row) to image coordinates:
        the grid shifted by the pose's phase and turned by its angle about the image's centre."""
        c, s = np.cos(pose["angle"]), np.sin(pose["angle"])
        u, v = u + pose["px"] - 64, v + pose["py"] - 64
        return float(u * c - v * s + 64), float(u * s + v * c + 64)

    def centre(self, i: int, j: int) -> tuple[float, float]:
        return (i + (j % 2) / 2) * self.pitch, j * self.row

    def holes(self, pose: dict) -> dict[tuple[int, int], tuple[float, float]]:
        """The holes (i, j) that reach into the image, by their centres in image coordinates."""
        holes = {}
        for j in range(-2, int(UNIT / self.row) + 3):
            for i in range(-2, int(UNIT / self.pitch) + 3):
                cx, cy = self.to_image(*self.centre(i, j), pose)
                if -self.r_hole < cx < UNIT + self.r_hole and -self.r_hole < cy < UNIT + self.r_hole:
                    holes[(i, j)] = (cx, cy)
        return holes

    def inside(self, x: np.ndarray, y: np.ndarray, pose: dict, defect: Defect | None) -> np.ndarray:
        holes = {key: (_disc, (*centre, self.r_hole)) for key, centre in self.holes(pose).items()}
        if defect and "hole" in defect.change:  # one hole not punched (None) or of another shape
            key, new = defect.change["hole"]
            holes[key] = new
        plate = np.ones((y.shape[0], x.shape[1]), bool)
        for hole in holes.values():
            if hole is not None:
                _paint(plate, hole[0](x, y, *hole[1]), False)
        return defect.apply(plate, x, y) if defect else plate

    def grain(self, rng: np.random.Generator, pose: dict, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
        brushed = _smooth_noise(rng, x.shape, (0.4 * s, 10 * s))  # rolled sheet: grain along the rows
        return rng.uniform(3, 5) * brushed + rng.uniform(1.5, 3) * _smooth_noise(rng, x.shape, 0.6 * s)

    def defect(self, kind: str, pose: dict, rng: np.random.Generator) -> Defect:
        holes = self.holes(pose)
        middle = sorted(k for k, (cx, cy) in holes.items() if 22 <= cx <= 106 and 22 <= cy <= 106)
        key = middle[rng.integers(len(middle))]  # a hole near the middle: the defect whole in view
        hu, hv = self.centre(*key)
        variant, angle = rng.random(), float(rng.uniform(-np.pi, np.pi))
        if kind == "missing":  # the hole is not punched
            return Defect(kind, change=dict(hole=(key, None)))
        if kind == "extra":
            if variant < 0.4:  # an extra small hole between three holes
                nu, nv = hu + self.pitch / 2 + rng.uniform(-0.5, 0.5), hv + rng.choice((-1, 1)) * self.row / 3
                return Defect(kind, cut=[(_disc, (*self.to_image(nu, nv, pose), rng.uniform(2.4, 3.4)))])
            if variant < 0.75:  # a blob of material stuck on the hole's rim
                r = rng.uniform(2, 3.5)
                centre = self.to_image(*_at(hu, hv, self.r_hole - r * rng.uniform(0.2, 0.7), angle), pose)
                return Defect(kind, add=[(_disc, (*centre, r))])
            width, offset = rng.uniform(1.5, 2.8), rng.uniform(-2, 2)  # a bridge of material across the hole
            centre = self.to_image(*_at(hu, hv, offset, angle + np.pi / 2), pose)
            return Defect(kind, add=[(_box, (*centre, 2 * self.r_hole + 2, width, angle + pose["angle"]))])
        centre = holes[key]
        if variant < 0.4:  # displaced
            shifted = self.to_image(*_at(hu, hv, rng.uniform(1.5, 3), angle), pose)
            return Defect(kind, change=dict(hole=(key, (_disc, (*shifted, self.r_hole)))))
        if variant < 0.7:  # enlarged
            return Defect(kind, change=dict(hole=(key, (_disc, (*centre, self.r_hole * rng.uniform(1.25, 1.5))))))
        a, b = self.r_hole * rng.uniform(1.2, 1.4), self.r_hole * rng.uniform(0.65, 0.85)  # oval
        return Defect(kind, change=dict(hole=(key, (_ellipse, (*centre, a, b, angle + pose["angle"])))))


class Gear:
    """A toothed wheel (16 teeth) with a keyed hub hole and four lightening holes, turned at random."""

    teeth, r_root, height = 16, 37.0, 8.0
    w_root, w_tip = 0.56, 0.30  # tooth widths at root and tip, in pitches
    r_hub, key_depth, key_width = 11.0, 3.0, 4.0
    r_web, r_light = 24.0, 5.5
    material = 150.0

    def pose(self, rng: np.random.Generator) -> dict:
        return dict(
            cx=64 + float(rng.uniform(-3, 3)),
            cy=64 + float(rng.uniform(-3, 3)),
            theta=float(rng.uniform(-np.pi, np.pi)),
        )

    def tooth_angle(self, pose: dict, k: float) -> float:
        return pose["theta"] + (k + 0.5) * 2 * np.pi / self.teeth

    def light_hole(self, pose: dict, k: int) -> tuple[float, float]:
        return _at(pose["cx"], pose["cy"], self.r_web, pose["theta"] + np.pi / 4 + k * np.pi / 2)

    def inside(self, x: np.ndarray, y: np.ndarray, pose: dict, defect: Defect | None) -> np.ndarray:
        change = defect.change if defect else {}
        cx, cy, theta = pose["cx"], pose["cy"], pose["theta"]
        rho2 = (x - cx) ** 2 + (y - cy) ** 2
        gear = rho2 <= self.r_root**2
        rows, columns = np.nonzero((rho2 > self.r_root**2) & (rho2 <= (self.r_root + self.height) ** 2))
        dx, dy = x[0, columns] - cx, y[rows, 0] - cy  # the teeth's ring only
        rho = np.sqrt(dx * dx + dy * dy)
        t = ((np.arctan2(dy, dx) - theta) % (2 * np.pi)) * self.teeth / (2 * np.pi)
        k, u = np.floor(t), t - np.floor(t)  # tooth k's sector, u across it (its centre at 0.5)
        if "bend" in change:  # tooth k0 bent sideways, more towards its tip
            k0, bend = change["bend"]
            u = np.where(k == k0, u - bend * np.clip((rho - self.r_root) / self.height, 0, 1), u)
        profile = np.clip((self.w_root / 2 - np.abs(u - 0.5)) / ((self.w_root - self.w_tip) / 2), 0, 1)
        radius = self.r_root + self.height * profile
        if "broken" in change:  # tooth k0 broken off at a (slanted) height
            k0, level, slant = change["broken"]
            cap = self.r_root + self.height * np.clip(level + slant * (u - 0.5), 0, 1)
            radius = np.where(k == k0, np.minimum(radius, cap), radius)
        if "packed" in change:  # the gap after tooth k0 filled up to a height
            k0, level = change["packed"]
            gap = ((k == k0) & (u > 0.5)) | ((k == (k0 + 1) % self.teeth) & (u < 0.5))
            radius = np.where(gap, np.maximum(radius, self.r_root + self.height * level), radius)
        gear[rows, columns] = rho <= radius
        _paint(gear, _disc(x, y, cx, cy, self.r_hub), False)
        _paint(gear, _box(x, y, *_at(cx, cy, self.r_hub, theta), 2 * self.key_depth, self.key_width, theta), False)
        holes = {k: (*self.light_hole(pose, k), self.r_light) for k in range(4)}
        holes.update(change.get("light", {}))  # a lightening hole moved, resized or (None) not punched
        for hole in holes.values():
            if hole is not None:
                _paint(gear, _disc(x, y, *hole), False)
        return defect.apply(gear, x, y) if defect else gear

    def grain(self, rng: np.random.Generator, pose: dict, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
        return rng.uniform(3, 5) * _smooth_noise(rng, x.shape, 0.7 * s) + rng.uniform(2, 4) * _smooth_noise(
            rng, x.shape, 6 * s
        )  # sintered: fine pores and a mottle

    def defect(self, kind: str, pose: dict, rng: np.random.Generator) -> Defect:
        k0, variant = int(rng.integers(self.teeth)), rng.random()
        if kind == "missing":
            if variant < 0.75:  # a tooth broken off, from its root to half its height
                return Defect(kind, change=dict(broken=(k0, rng.uniform(0, 0.5), rng.uniform(-0.6, 0.6))))
            return Defect(kind, change=dict(light={int(rng.integers(4)): None}))  # a lightening hole not punched
        if kind == "extra":
            if variant < 0.5:  # material packed into a tooth gap
                return Defect(kind, change=dict(packed=(k0, rng.uniform(0.3, 0.8))))
            r = rng.uniform(1.8, 3.2)  # a burr on a tooth's tip corner
            corner = self.tooth_angle(pose, k0) + rng.choice((-1, 1)) * self.w_tip / 2 * 2 * np.pi / self.teeth
            radius = self.r_root + self.height + r * rng.uniform(-0.2, 0.4)
            return Defect(kind, add=[(_disc, (*_at(pose["cx"], pose["cy"], radius, corner), r))])
        if variant < 0.6:  # a bent tooth
            return Defect(kind, change=dict(bend=(k0, rng.uniform(0.12, 0.22) * rng.choice((-1, 1)))))
        k = int(rng.integers(4))  # a lightening hole displaced or enlarged
        hx, hy = self.light_hole(pose, k)
        if rng.random() < 0.5:
            return Defect(
                kind,
                change=dict(light={k: (*_at(hx, hy, rng.uniform(1.5, 2.5), rng.uniform(-np.pi, np.pi)), self.r_light)}),
            )
        return Defect(kind, change=dict(light={k: (hx, hy, self.r_light * rng.uniform(1.2, 1.35))}))


SHAPES = {"washer": Washer(), "mesh": Mesh(), "gear": Gear()}


# -- rendering -------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple, sigma: float | tuple) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``sigma`` pixels (by rows, columns; in Fourier space:
    periodic, and as fast for wide as for narrow ones), scaled to unit standard deviation."""
    spectrum = ndimage.fourier_gaussian(np.fft.rfft2(rng.standard_normal(shape)), sigma, n=shape[1])
    noise = np.fft.irfft2(spectrum, s=shape)
    return noise / noise.std()


@lru_cache(maxsize=4)
def _grids(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The supersampled grid's axes, x (1, W) and y (H, 1), and the pixel centres' (x, y) grids,
    in UNIT pixels."""
    fine = ((np.arange(size * SUPERSAMPLING) + 0.5) / SUPERSAMPLING * UNIT / size).astype(np.float32)
    coarse = ((np.arange(size) + 0.5) * UNIT / size).astype(np.float32)
    return fine[None, :], fine[:, None], *np.meshgrid(coarse, coarse)


def _coverage(inside: np.ndarray, size: int) -> np.ndarray:
    """The share of each pixel's SUPERSAMPLING x SUPERSAMPLING samples inside the part."""
    starts = np.arange(0, size * SUPERSAMPLING, SUPERSAMPLING)
    counts = np.add.reduceat(np.add.reduceat(inside.view(np.uint8), starts, axis=1, dtype=np.uint16), starts, axis=0)
    return counts / SUPERSAMPLING**2


@dataclass
class Look:
    """One draw of everything but the geometry: the fields the coverage is shaded with."""

    material: np.ndarray
    background: np.ndarray
    light: tuple[float, float]  # direction the light comes from
    relief: float
    illumination: np.ndarray  # the lighting gradient, times the contrast
    offset: float
    noise: np.ndarray


def _look(part: Washer | Mesh | Gear, pose: dict, rng: np.random.Generator, size: int) -> Look:
    _, _, x, y = _grids(size)
    s = size / UNIT
    material = part.material + rng.uniform(-6, 6) + part.grain(rng, pose, x, y, s)
    background = (
        rng.uniform(36, 50)
        + rng.uniform(2, 5) * _smooth_noise(rng, x.shape, 12 * s)
        + rng.uniform(1.5, 3) * _smooth_noise(rng, x.shape, 0.8 * s)
    )
    direction = rng.uniform(-np.pi, np.pi)
    light = (float(np.cos(direction)), float(np.sin(direction)))
    ramp = rng.uniform(0.03, 0.12) * ((x - 64) * light[0] + (y - 64) * light[1]) / 64
    illumination = (1 + ramp) * rng.uniform(0.9, 1.1)
    offset = rng.uniform(-8, 8)
    noise = rng.normal(0, rng.uniform(1.5, 3.0), x.shape)
    return Look(material, background, light, rng.uniform(20, 32), illumination, offset, noise)


def _shade(inside: np.ndarray, look: Look, size: int) -> np.ndarray:
    """The noise-free image (float, 0-255 scale) of a part's supersampled inside/outside mask."""
    s = size / UNIT
    cover = _coverage(inside, size)
    gy, gx = np.gradient(ndimage.gaussian_filter(cover, 0.8 * s))  # edges lit from one side: a chamfer's relief
    relief = -look.relief * s * (gx * look.light[0] + gy * look.light[1])
    flat = cover * look.material + (1 - cover) * look.background + relief
    return flat * look.illumination + look.offset


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@dataclass
class Rendered:
    image: np.ndarray  # uint8, what is saved
    intact: np.ndarray  # uint8: the intact twin (the image itself for a good part)
    mask: np.ndarray | None  # uint8 0/255, None for a good part


def render(category: str, split: str, index: int, kind: str | None = None, size: int = 128) -> Rendered:
    """Image ``index`` of ``split`` (``train``, ``val``, ``good``: test/good, ``defect``) of a
    category, with a defect of ``kind`` (``defect`` only) and its mask."""
    part = SHAPES[category]
    rng = np.random.default_rng([SEEDS[category], SPLITS[split], index])
    x, y, _, _ = _grids(size)
    pose = part.pose(rng)
    look = _look(part, pose, rng, size)
    whole = part.inside(x, y, pose, None)
    intact = _shade(whole, look, size)
    intact_image = _to_uint8(intact + look.noise)
    if kind is None:
        return Rendered(intact_image, intact_image, None)
    least = MIN_MASK_PX * (size / UNIT) ** 2
    for _ in range(50):  # a draw that changes (almost) nothing is drawn again, on the same part
        defect = part.defect(kind, pose, rng)  # material cut or added only: onto the intact part
        defective = _shade(part.inside(x, y, pose, defect) if defect.change else defect.apply(whole, x, y), look, size)
        changed = np.abs(defective - intact) > CHANGE_LEVELS
        if changed.sum() >= least:
            break
    else:
        raise RuntimeError(f"no {kind} defect on {category} {split} {index} changed {least:.0f} pixels in 50 draws")
    mask = ndimage.binary_dilation(changed, structure=np.ones((3, 3), bool))
    image = np.where(mask, _to_uint8(defective + look.noise), intact_image)
    return Rendered(image, intact_image, (mask * 255).astype(np.uint8))


def generate(
    folder: Path, category: str, size: int, n_train: int, n_test_good: int, n_test_defect: int, n_val: int
) -> None:
    """Write one part category in the MVTec AD layout (with ``val/good``) into ``folder``."""
    params = dict(
        version=FORMAT_VERSION,
        source="parts",
        category=category,
        size=size,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_defect=n_test_defect,
        n_val=n_val,
    )
    if is_generated(folder, params):
        return
    log.info("Generating the %s parts set into %s (once)", category, folder)
    images = {
        split: [render(category, split, i, size=size).image for i in range(n)]
        for split, n in (("train", n_train), ("val", n_val), ("good", n_test_good))
    }
    defects = []
    for i in range(n_test_defect):
        kind = DEFECTS[i % len(DEFECTS)]
        done = render(category, "defect", i, kind, size)
        defects.append((kind, done.image, done.mask))
    write_layout(folder, params, images["train"], images["good"], defects, images["val"])


class PartsDataModule(TexturesDataModule):
    """Rendered parts (washer, mesh, gear) with structural defects and exact masks, generated on
    first use (a few seconds a category)."""

    name = "parts"
    categories = PARTS
    default_category = "washer"

    def __init__(self, root: str | None = None, size: int = 128, **kwargs) -> None:
        super().__init__(root=root or "~/.cache/adkd/parts", crop_size=size, **kwargs)
        self.generation = {("size" if k == "crop_size" else k): v for k, v in self.generation.items()}

    def prepare_data(self) -> None:
        generate(self.path, self.category, **self.generation)
