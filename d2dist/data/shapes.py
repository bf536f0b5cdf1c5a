"""The built-in synthetic dataset "d2dist_shapes": a seeded generator of cluttered shape images.

:func:`generate_shapes` writes a real COCO-format instance-segmentation dataset, and a semantic
segmentation label PNG for each of its images, so d2dist's demo and tests need no download. The
images are small and quick to make, but hard enough to separate a small detector from a big one:
eight classes that differ by geometry only (colours and textures are random), random scale, aspect
and rotation, occlusion, truncation at the image border, and a cluttered background with
unannotated distractor blobs drawn with the same colours and textures as the objects.

Layout of ``<root>/<name>/``::

    train/000001.jpg ...                images (val/ alike)
    annotations/instances_train.json    COCO instances, from the *visible* part of each object
    annotations/instances_val.json
    sem_seg/train/000001.png ...        uint8 labels: 0 background, class index + 1 (sem_seg/val/)
    manifest.json                       generator version, spec and counts; written last

Every image is reproducible on its own: it is drawn with the RNG
``np.random.default_rng([spec.seed, split_index, image_index])``.
"""

import colorsys
import dataclasses
import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

__all__ = ["CLASSES", "GENERATOR_VERSION", "ShapesSpec", "generate_shapes", "render_image"]

logger = logging.getLogger(__name__)

CLASSES = ("circle", "triangle", "square", "pentagon", "hexagon", "star", "cross", "crescent")
"""The thing classes, in category order (COCO ``category_id`` = index + 1)."""

GENERATOR_VERSION = 1
"""Version of the generator's output; bump it whenever the same spec would give other files."""

SPLITS = ("train", "val")
MANIFEST = "manifest.json"

# Rendering constants that are not (yet) worth a spec field.
_MIN_OBJECT_PIXELS = 40  # an object must cover at least this many pixels inside the image
_PLACEMENT_TRIES = 20  # placements tried per object before it is skipped
_CIRCLE_VERTICES = 48
_STAR_INNER_RADIUS = 0.45  # inner / outer radius of the 5-point star (0.38 for a regular star)
_CROSS_HALF_WIDTH = 0.17  # half the width of a cross arm, as a fraction of the cross's extent
_CROSS3 = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class ShapesSpec:
    """What :func:`generate_shapes` makes; two equal specs give byte-identical datasets.

    Args:
        image_size: side of the square images, in pixels.
        num_train, num_val: number of images in the train and val splits.
        min_objects, max_objects: number of objects tried per image (uniform in the range). An
            object is skipped when no valid placement is found, so an image can hold fewer.
        min_size, max_size: object extent in pixels before the aspect change (log-uniform).
        max_aspect: objects are stretched by a factor in [1 / max_aspect, max_aspect]
            (log-uniform) along one axis, at constant area, before rotation.
        distractors: at most this many unannotated clutter items (irregular blobs and scribbles
            that are none of the classes) in the background of an image.
        min_visible: each annotated object keeps at least this fraction of its full area visible,
            after truncation by the image border and occlusion by later objects.
        textured: paint objects with random textures (solid, stripes, checker, noise, gradient);
            False paints each object in one solid colour (an easier dataset).
        lines: at most this many lines and curves drawn across the background.
        jpeg_quality: JPEG quality of the images (1-100).
        seed: base seed; splits and images get their own streams derived from it.
    """

    image_size: int = 128
    num_train: int = 1000
    num_val: int = 200
    min_objects: int = 2
    max_objects: int = 8
    min_size: int = 10
    max_size: int = 48
    max_aspect: float = 1.6
    distractors: int = 6
    min_visible: float = 0.5
    textured: bool = True
    lines: int = 5
    jpeg_quality: int = 90
    seed: int = 0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in (float, "float"):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"ShapesSpec.{field.name} must be a number, got {value!r}")
                object.__setattr__(self, field.name, float(value))
            elif field.type in (bool, "bool"):
                if not isinstance(value, (bool, np.bool_)):
                    raise ValueError(
                        f"ShapesSpec.{field.name} must be True or False, got {value!r}"
                    )
                object.__setattr__(self, field.name, bool(value))
            elif isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"ShapesSpec.{field.name} must be an integer, got {value!r}")
            else:
                object.__setattr__(self, field.name, int(value))

        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(
                    f"ShapesSpec.{name}={getattr(self, name)!r} is out of range: must be {allowed}"
                )

        check("image_size", 16 <= self.image_size <= 4096, "in [16, 4096]")
        check("num_train", self.num_train >= 1, ">= 1")
        check("num_val", self.num_val >= 1, ">= 1")
        check("min_objects", self.min_objects >= 1, ">= 1")
        check(
            "max_objects",
            self.max_objects >= self.min_objects,
            f">= min_objects={self.min_objects}",
        )
        check("min_size", self.min_size >= 4, ">= 4")
        check(
            "max_size",
            self.min_size <= self.max_size < self.image_size,
            f"in [min_size={self.min_size}, image_size={self.image_size})",
        )
        check("max_aspect", 1.0 <= self.max_aspect <= 10.0, "in [1, 10]")
        check("distractors", self.distractors >= 0, ">= 0")
        check("lines", self.lines >= 0, ">= 0")
        check("min_visible", 0.0 < self.min_visible <= 1.0, "in (0, 1]")
        check("jpeg_quality", 1 <= self.jpeg_quality <= 100, "in [1, 100]")
        check("seed", self.seed >= 0, ">= 0")

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a JSON-serialisable dict (as stored in the manifest)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _normalise(points: np.ndarray) -> np.ndarray:
    """Centre a polygon on its bounding box and scale it to a largest extent of 1."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - (lo + hi) / 2) / (hi - lo).max()


def _regular_polygon(n: int) -> np.ndarray:
    angles = 2 * np.pi * np.arange(n) / n - np.pi / 2
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = _STAR_INNER_RADIUS) -> np.ndarray:
    angles = np.pi * np.arange(2 * points) / points - np.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(a: float = _CROSS_HALF_WIDTH) -> np.ndarray:
    h = 0.5
    return np.array(
        [(-a, -h), (a, -h), (a, -a), (h, -a), (h, a), (a, a), (a, h), (-a, h), (-a, a), (-h, a)]
        + [(-h, -a), (-a, -a)]
    )


def _crescent(offset: float = 0.55, radius: float = 0.9, n: int = 48) -> np.ndarray:
    """Unit disc minus the disc of ``radius`` centred at (``offset``, 0), as one polygon."""
    x0 = (1 - radius**2 + offset**2) / (2 * offset)  # where the two circles cross
    y0 = math.sqrt(1 - x0**2)
    a0 = math.atan2(y0, x0)
    outer = np.linspace(a0, 2 * np.pi - a0, n)  # long way round the unit circle, through pi
    b0 = math.atan2(y0, x0 - offset)
    b1 = math.atan2(-y0, x0 - offset) % (2 * np.pi)
    inner = np.linspace(b1, b0, n)[1:-1]  # back along the inner circle, through pi
    return np.concatenate(
        [
            np.stack([np.cos(outer), np.sin(outer)], axis=1),
            np.stack([offset + radius * np.cos(inner), radius * np.sin(inner)], axis=1),
        ]
    )


_UNIT_SHAPES = tuple(
    _normalise(p)
    for p in (
        _regular_polygon(_CIRCLE_VERTICES),
        _regular_polygon(3),
        _regular_polygon(4),
        _regular_polygon(5),
        _regular_polygon(6),
        _star(),
        _cross(),
        _crescent(),
    )
)
assert len(_UNIT_SHAPES) == len(CLASSES)


def _polygon_area(points: np.ndarray) -> float:
    return abs(float(cv2.contourArea(points.astype(np.float32))))


def _rasterise(points: np.ndarray, height: int, width: int):
    """Fill a polygon (pixel centres at integer coordinates) clipped to the image.

    Returns ``(y0, y1, x0, x1, mask)`` with ``mask`` the boolean crop ``[y0:y1, x0:x1]``, or None
    when the polygon misses the image.
    """
    lo = np.floor(points.min(axis=0)).astype(int)
    hi = np.ceil(points.max(axis=0)).astype(int) + 1
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], width), min(hi[1], height)
    if x0 >= x1 or y0 >= y1:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fixed = np.round((points - (x0, y0)) * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=4)
    return y0, y1, x0, x1, mask.view(bool)


def _has_hole(mask: np.ndarray) -> bool:
    """Whether a binary mask has a hole (COCO polygons cannot represent holes)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    _, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


# --------------------------------------------------------------------------------------------
# Appearance
# --------------------------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.2, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random float32 ``(height, width, 3)`` texture: solid, stripes, checker, noise, gradient."""
    c1, c2 = _random_colour(rng), _random_colour(rng)
    kind = rng.integers(5)
    if kind == 0:  # solid
        return np.broadcast_to(c1, (height, width, 3))
    if kind == 3:  # noise around one colour, sometimes smoothed into blotches
        noise = rng.standard_normal((height, width, 1), dtype=np.float32)
        if rng.random() < 0.5:
            noise = cv2.GaussianBlur(noise, (0, 0), 1.5)[..., None]
            noise *= 2.0 / max(float(noise.std()), 1e-3)
        return c1 + noise * rng.uniform(15, 45)
    angle = rng.uniform(0, np.pi)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    u = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == 4:  # two-colour gradient
        t = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
        return c1 + (c2 - c1) * t[..., None]
    period = rng.uniform(3, 10)
    if kind == 1:  # stripes
        t = ((u / period + rng.random()) % 1.0) < rng.uniform(0.3, 0.7)
    else:  # checker
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        t = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    return np.where(t[..., None], c1, c2)


def _paint(image: np.ndarray, rng: np.random.Generator, y0, y1, x0, x1, mask, solid=False):
    """Paint a random texture (or, if ``solid``, colour) into ``image[y0:y1, x0:x1]`` where
    ``mask``."""
    if solid:
        tex = np.broadcast_to(_random_colour(rng), (y1 - y0, x1 - x0, 3))
    else:
        tex = _texture(rng, y1 - y0, x1 - x0)
    crop = image[y0:y1, x0:x1]
    crop[mask] = np.clip(tex[mask], 0, 255)


def _background(rng: np.random.Generator, spec: ShapesSpec) -> np.ndarray:
    """A cluttered uint8 BGR background: smooth colour field, lines and curves, distractors."""
    size = spec.image_size
    k = int(rng.integers(2, 5))
    grid = rng.uniform(0, 255, (k, k, 3)).astype(np.float32)
    image = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    image = np.clip(image, 0, 255).astype(np.uint8)

    for _ in range(int(rng.integers(min(2, spec.lines), spec.lines + 1))):  # lines and curves
        colour = _random_colour(rng).tolist()
        thickness = int(rng.integers(1, 3))
        p = rng.uniform(-0.1 * size, 1.1 * size, (3, 2))
        if rng.random() < 0.5:
            pts = p[[0, 2]]
        else:
            t = np.linspace(0, 1, 16)[:, None]
            pts = (1 - t) ** 2 * p[0] + 2 * t * (1 - t) * p[1] + t**2 * p[2]
        fixed = np.round(pts * 16).astype(np.int32)
        cv2.polylines(image, [fixed], False, colour, thickness, cv2.LINE_AA, shift=4)

    for _ in range(int(rng.integers(0, spec.distractors + 1))):
        extent = math.exp(rng.uniform(math.log(spec.min_size), math.log(spec.max_size)))
        centre = rng.uniform(0, size, 2)
        if rng.random() < 0.7:  # irregular blob: random radii at random angles
            n = int(rng.integers(6, 12))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(0.25, 1.0, n)
            pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
            pts = centre + pts * extent / 2 * rng.uniform(0.6, 1.0, 2)
            placed = _rasterise(pts, size, size)
            if placed is not None:
                _paint(image, rng, *placed)
        else:  # thick scribble
            pts = centre + rng.uniform(-0.5, 0.5, (int(rng.integers(3, 7)), 2)) * extent
            fixed = np.round(pts * 16).astype(np.int32)
            thickness = int(rng.integers(2, max(3, int(extent) // 6) + 1))
            colour = _random_colour(rng).tolist()
            cv2.polylines(image, [fixed], False, colour, thickness, cv2.LINE_AA, shift=4)
    return image


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


def render_image(
    spec: ShapesSpec, split_index: int, image_index: int
) -> Tuple[np.ndarray, np.ndarray, List[Dict[str, Any]]]:
    """Render one image of the dataset.

    Args:
        spec: the dataset's spec.
        split_index: index of the split in ``("train", "val")``.
        image_index: index of the image in its split (0-based).

    Returns:
        ``(image, label, objects)``: the uint8 BGR image ``(H, W, 3)`` before JPEG encoding, the
        uint8 semantic label ``(H, W)`` (0 background, class index + 1 for the topmost object)
        and, per annotated object, a dict with ``category`` (class index), ``segmentation`` (COCO
        polygons of its visible region), ``bbox`` (XYWH of the visible region) and ``area``
        (visible pixel count).
    """
    rng = np.random.default_rng([spec.seed, split_index, image_index])
    size = spec.image_size
    image = _background(rng, spec)
    owner = np.full((size, size), -1, np.int16)  # index of the topmost object per pixel
    classes: List[int] = []
    boxes: List[Tuple[int, int, int, int]] = []  # crop of each object's full (clipped) mask
    visible: List[int] = []  # visible pixel count of each object
    needed: List[float] = []  # visible pixels each object must keep
    log_size = (math.log(spec.min_size), math.log(spec.max_size))
    log_aspect = math.log(spec.max_aspect)

    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        cls = int(rng.integers(len(CLASSES)))
        for _ in range(_PLACEMENT_TRIES):
            extent = math.exp(rng.uniform(*log_size))
            stretch = math.exp(rng.uniform(-log_aspect, log_aspect) / 2)
            angle = rng.uniform(0, 2 * np.pi)
            centre = rng.uniform(0, size, 2)
            rot = np.array(
                [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
            )
            pts = (_UNIT_SHAPES[cls] * (extent * stretch, extent / stretch)) @ rot.T + centre
            placed = _rasterise(pts, size, size)
            if placed is None:
                continue
            y0, y1, x0, x1, mask = placed
            own = int(mask.sum())
            full = _polygon_area(pts)
            if own < _MIN_OBJECT_PIXELS or own < spec.min_visible * full:
                continue
            below = owner[y0:y1, x0:x1][mask]
            lost = np.bincount(below[below >= 0], minlength=len(classes))
            hit = np.flatnonzero(lost)
            if any(visible[j] - lost[j] < needed[j] for j in hit):
                continue
            if any(_would_leave_hole(owner, boxes[j], j, placed) for j in hit):
                continue
            index = len(classes)
            owner[y0:y1, x0:x1][mask] = index
            for j in hit:
                visible[j] -= int(lost[j])
            classes.append(cls)
            boxes.append((y0, y1, x0, x1))
            visible.append(own)
            needed.append(spec.min_visible * full)
            _paint(image, rng, *placed, solid=not spec.textured)
            break

    amplitude = int(rng.integers(3, 13))  # low-amplitude (uniform) sensor noise over everything
    noise = rng.integers(-amplitude, amplitude + 1, image.shape, dtype=np.int16)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)

    objects = []
    lut = np.zeros(len(classes) + 1, np.uint8)
    for j, cls in enumerate(classes):
        ann = _annotate(owner, boxes[j], j)
        if ann is None:  # fully hidden (placement rules prevent it): in neither ground truth
            continue
        lut[j + 1] = cls + 1
        objects.append({"category": cls, **ann})
    label = lut[owner + 1]
    return image, label, objects


def _would_leave_hole(owner, box, j, placed) -> bool:
    """Whether covering ``placed`` would leave a hole in object ``j``'s visible region."""
    y0, y1, x0, x1 = box
    vis = owner[y0:y1, x0:x1] == j
    ny0, ny1, nx0, nx1, mask = placed
    iy0, iy1, ix0, ix1 = max(y0, ny0), min(y1, ny1), max(x0, nx0), min(x1, nx1)
    if iy0 >= iy1 or ix0 >= ix1:
        return False
    vis[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] &= ~mask[
        iy0 - ny0 : iy1 - ny0, ix0 - nx0 : ix1 - nx0
    ]
    return _has_hole(vis)


def _annotate(owner: np.ndarray, box, j: int) -> Optional[Dict[str, Any]]:
    """COCO polygons, bbox and area of the visible region of object ``j``.

    The polygons trace the pixel edges (pixel ``x`` spans ``[x, x + 1)``, as in pycocotools and
    Detectron2), so they rasterise back to the visible mask exactly: the mask is drawn on a
    lattice of twice the resolution whose even cells are pixel corners and edges, each pixel
    covering its closed 3x3 block, and the outer contours of that are traced.
    """
    y0, y1, x0, x1 = box
    vis = owner[y0:y1, x0:x1] == j
    ys, xs = np.nonzero(vis)
    if len(xs) == 0:
        return None
    h, w = vis.shape
    lattice = np.zeros((2 * h + 3, 2 * w + 3), np.uint8)  # one cell of padding all round
    lattice[2:-1:2, 2:-1:2] = vis
    lattice = cv2.dilate(lattice, _CROSS3)
    contours, _ = cv2.findContours(lattice, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        if len(c) >= 3:
            pts = c.reshape(-1) - 1
            if (pts % 2).any():  # not expected: edge midpoints are never vertices
                pts = pts / 2.0
            else:
                pts //= 2  # pixel corners: integers, which keeps the JSON small
            pts[0::2] += x0
            pts[1::2] += y0
            polygons.append(pts.tolist())
    if not polygons:
        return None
    bx, by = x0 + int(xs.min()), y0 + int(ys.min())
    bw, bh = int(xs.max()) - int(xs.min()) + 1, int(ys.max()) - int(ys.min()) + 1
    return {
        "segmentation": polygons,
        "bbox": [float(bx), float(by), float(bw), float(bh)],
        "area": float(len(xs)),
    }


# --------------------------------------------------------------------------------------------
# The dataset on disk
# --------------------------------------------------------------------------------------------


def _write_image(path: str, image: np.ndarray, params: Tuple[int, ...] = ()) -> None:
    """Encode ``image`` in the format of ``path``'s extension and write it (tests patch this)."""
    ok, buf = cv2.imencode(os.path.splitext(path)[1], image, list(params))
    if not ok:
        raise IOError(f"could not encode {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def _read_manifest(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _manifest_mismatch(manifest: Optional[Dict[str, Any]], spec: ShapesSpec) -> Optional[str]:
    """None if ``manifest`` describes ``spec`` at this generator version, else why not."""
    if manifest is None:
        return "it has no readable manifest.json (an old or foreign directory?)"
    version = manifest.get("generator_version")
    if version != GENERATOR_VERSION:
        return f"it was made by generator version {version}, this is version {GENERATOR_VERSION}"
    old, new = manifest.get("spec") or {}, spec.to_dict()
    diffs = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    diffs += [f"{k}: {old[k]!r} -> (absent)" for k in old if k not in new]
    if diffs:
        return "its spec differs (" + ", ".join(diffs) + ")"
    return None


def _make_sibling(root: str, name: str, kind: str) -> str:
    """Create an empty, uniquely named hidden directory ``<root>/.<name>.<kind>-<pid>-<random>``."""
    while True:
        path = os.path.join(root, f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _write_dataset(out: str, spec: ShapesSpec, name: str) -> Dict[str, Any]:
    """Generate every file of the dataset into the directory ``out``; return the manifest."""
    categories = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)]
    counts = {"train": spec.num_train, "val": spec.num_val}
    manifest: Dict[str, Any] = {
        "name": name,
        "generator_version": GENERATOR_VERSION,
        "spec": spec.to_dict(),
        "classes": list(CLASSES),
        "splits": {},
    }
    os.mkdir(os.path.join(out, "annotations"))
    os.mkdir(os.path.join(out, "sem_seg"))
    jpeg = (cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality)
    with tqdm(total=sum(counts.values()), desc=f"generating {name}", unit="img") as bar:
        for split_index, split in enumerate(SPLITS):
            image_dir = os.path.join(out, split)
            label_dir = os.path.join(out, "sem_seg", split)
            os.mkdir(image_dir)
            os.mkdir(label_dir)
            images, annotations = [], []
            for i in range(counts[split]):
                image, label, objects = render_image(spec, split_index, i)
                stem = f"{i + 1:06d}"
                _write_image(os.path.join(image_dir, stem + ".jpg"), image, jpeg)
                _write_image(os.path.join(label_dir, stem + ".png"), label)
                height, width = image.shape[:2]
                images.append(
                    {"id": i + 1, "file_name": stem + ".jpg", "height": height, "width": width}
                )
                for obj in objects:
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": i + 1,
                            "category_id": obj["category"] + 1,
                            "segmentation": obj["segmentation"],
                            "area": obj["area"],
                            "bbox": obj["bbox"],
                            "iscrowd": 0,
                        }
                    )
                bar.update()
            coco = {
                "info": {
                    "description": f"{name} ({split}): d2dist's synthetic shapes",
                    "version": str(GENERATOR_VERSION),
                    "generator_version": GENERATOR_VERSION,
                    "spec": spec.to_dict(),
                },
                "images": images,
                "annotations": annotations,
                "categories": categories,
            }
            with open(os.path.join(out, "annotations", f"instances_{split}.json"), "w") as f:
                f.write(json.dumps(coco))  # json.dumps uses the C encoder, json.dump does not
            manifest["splits"][split] = {"images": len(images), "instances": len(annotations)}
    with open(os.path.join(out, MANIFEST), "w") as f:  # last: marks the directory complete
        json.dump(manifest, f, indent=2)
    return manifest


def generate_shapes(root: str, spec: ShapesSpec = ShapesSpec(), name: str = "d2dist_shapes") -> str:
    """Generate the shapes dataset ``name`` under ``root``, unless it is there already.

    Idempotent and safe against interruption and concurrent callers: an existing
    ``<root>/<name>`` whose manifest matches ``spec`` and :data:`GENERATOR_VERSION` is used as is
    (only the manifest is read). Otherwise the dataset is written into a hidden sibling directory
    which is renamed into place once complete, replacing a stale ``<root>/<name>``; an interrupted
    run leaves neither a partial ``<root>/<name>`` nor its temporary directory behind.

    Args:
        root: the datasets directory (Detectron2's ``$DETECTRON2_DATASETS``).
        spec: what to generate.
        name: directory name of the dataset under ``root``.

    Returns:
        The dataset directory ``<root>/<name>``.
    """
    if not isinstance(spec, ShapesSpec):
        raise TypeError(f"spec must be a ShapesSpec, got {type(spec).__name__}")
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"invalid dataset name {name!r}: must be a plain, non-hidden file name")
    path = os.path.join(root, name)
    if os.path.exists(path):
        stale = _manifest_mismatch(_read_manifest(path), spec)
        if stale is None:
            return path
        logger.warning(f"Regenerating the dataset directory {path}: {stale}")

    start = time.perf_counter()
    try:
        os.makedirs(root, exist_ok=True)
        tmp = _make_sibling(root, name, "tmp")
    except OSError as e:
        raise OSError(
            f"cannot write the {name} dataset into the directory {os.path.abspath(root)!r} "
            f"({e.strerror or e}). Set DETECTRON2_DATASETS to a writable directory, or pass "
            "another root."
        ) from e
    logger.info(
        f"Generating {name} ({spec.num_train} + {spec.num_val} images of {spec.image_size} px) "
        f"at {path}"
    )
    try:
        manifest = _write_dataset(tmp, spec, name)
        placed = _move_into_place(tmp, path, spec, name)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    counts = ", ".join(
        f"{s}: {c['images']} images, {c['instances']} instances"
        for s, c in manifest["splits"].items()
    )
    if placed:
        logger.info(f"Generated {name} in {time.perf_counter() - start:.1f}s ({counts})")
    return path


def _move_into_place(tmp: str, path: str, spec: ShapesSpec, name: str) -> bool:
    """Rename the complete directory ``tmp`` to ``path``, replacing a stale one if need be.

    Returns False if another process put an up-to-date ``path`` there first (``tmp`` is then
    left for the caller to delete), True if ``tmp`` was moved into place.
    """
    for _ in range(3):
        try:
            os.rename(tmp, path)
            return True
        except OSError:
            if not os.path.exists(path):
                raise
        # Someone is there: another process that finished first, or a stale directory.
        reason = _manifest_mismatch(_read_manifest(path), spec)
        if reason is None:
            logger.info(f"{path} was generated concurrently by another process; using that one")
            return False
        logger.info(f"Replacing the stale dataset directory {path}")
        old = _make_sibling(os.path.dirname(path) or ".", name, "old")
        try:
            os.rename(path, os.path.join(old, name))
        except FileNotFoundError:
            pass  # someone else moved it aside already
        try:
            os.rename(tmp, path)
            return True
        except OSError:
            if not os.path.exists(path):
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    raise OSError(f"could not move the generated dataset into {path}: it keeps being replaced")
