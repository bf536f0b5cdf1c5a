"""Tiny datasets in the real on-disk formats of COCO and Cityscapes, for checks without them.

:func:`write_tiny_coco` and :func:`write_tiny_cityscapes` write, under a ``$DETECTRON2_DATASETS``
root, a few 128 x 256 images with their annotations exactly as ``datasets/README.md`` lays the
real datasets out (COCO JSON with polygons; Cityscapes ``leftImg8bit`` / ``gtFine`` with polygon
JSON, label-id and instance-id PNGs, and the train-id PNGs of cityscapesscripts' own preparation
script), in the splits Detectron2's built-in names read (``coco_2017_{train,val}``,
``cityscapes_fine_{instance_seg,sem_seg}_{train,val}``). The shipped recipes then run unchanged
on them: the tests' official-evaluator checks, the recipe smoke test and
``tools/loss_scale.py --tiny-datasets``.
"""

import contextlib
import json
import os
import sys
from typing import Sequence

import numpy as np

from ..errors import ConfigError

__all__ = [
    "TINY_HEIGHT",
    "TINY_WIDTH",
    "tiny_image",
    "write_tiny_cityscapes",
    "write_tiny_coco",
    "write_tiny_datasets",
]

TINY_HEIGHT, TINY_WIDTH = 128, 256

# (COCO category id, polygon) per image: person and car; dog
_COCO_OBJECTS = [
    [(1, [20, 20, 80, 20, 80, 100, 20, 100]), (3, [120, 40, 230, 40, 230, 110, 120, 110])],
    [(18, [40, 30, 140, 30, 90, 120])],
]
# Cityscapes polygons per image, in drawing order (later ones on top)
_CITYSCAPES_OBJECTS = [
    [("road", [[0, 64], [255, 64], [255, 127], [0, 127]]),
     ("car", [[20, 70], [110, 70], [110, 120], [20, 120]]),
     ("person", [[150, 20], [180, 20], [180, 110], [150, 110]])],
    [("road", [[0, 80], [255, 80], [255, 127], [0, 127]]),
     ("car", [[100, 60], [200, 60], [200, 115], [100, 115]]),
     ("car", [[10, 85], [70, 85], [70, 125], [10, 125]])],
]  # fmt: skip


def write_tiny_datasets(root: str) -> None:
    """Both tiny datasets under ``root``, which must be the folder Detectron2 registered its
    built-in datasets under (``$DETECTRON2_DATASETS`` when Detectron2 was first imported): the
    recipes' own dataset names then read them. Otherwise a :class:`ConfigError`, rather than a run
    that reads other files than the ones written."""
    from detectron2.data import MetadataCatalog

    registered = os.path.abspath(MetadataCatalog.get("coco_2017_train").json_file)
    if not registered.startswith(os.path.abspath(root) + os.sep):
        raise ConfigError(
            f"the tiny datasets go to {root!r}, but Detectron2's built-in datasets were "
            f"registered elsewhere (coco_2017_train reads {registered!r}): Detectron2 was "
            "imported before $DETECTRON2_DATASETS was set. Set it first (tools/loss_scale.py "
            "--tiny-datasets does, run as a script), or write the datasets with "
            "write_tiny_coco / write_tiny_cityscapes under that folder."
        )
    write_tiny_coco(root)
    write_tiny_cityscapes(root)


def tiny_image(seed: int) -> np.ndarray:
    """A random ``TINY_HEIGHT x TINY_WIDTH`` BGR image."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (TINY_HEIGHT, TINY_WIDTH, 3), dtype=np.uint8)


def write_tiny_coco(root: str, splits: Sequence[str] = ("train2017", "val2017")) -> None:
    """``coco/<split>/*.jpg`` and ``coco/annotations/instances_<split>.json`` under ``root``: two
    images with a person and a car, and a dog (boxes, polygons, areas), COCO's 80 categories."""
    import cv2
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    base = os.path.join(root, "coco")
    os.makedirs(os.path.join(base, "annotations"), exist_ok=True)
    categories = [
        {"id": c["id"], "name": c["name"], "supercategory": "thing"}
        for c in COCO_CATEGORIES
        if c["isthing"]
    ]
    for split in splits:
        os.makedirs(os.path.join(base, split), exist_ok=True)
        images, annotations = [], []
        for i, objects in enumerate(_COCO_OBJECTS):
            name = f"{i:012d}.jpg"
            cv2.imwrite(os.path.join(base, split, name), tiny_image(i))
            images.append({"id": i + 1, "file_name": name, "height": TINY_HEIGHT,
                           "width": TINY_WIDTH})  # fmt: skip
            for cat, poly in objects:
                xs, ys = poly[0::2], poly[1::2]
                mask = np.zeros((TINY_HEIGHT, TINY_WIDTH), np.uint8)
                cv2.fillPoly(mask, [np.array(poly, np.int32).reshape(-1, 2)], 1)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": cat,
                        "segmentation": [[float(v) for v in poly]],
                        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                        "area": float(mask.sum()),
                        "iscrowd": 0,
                    }
                )
        path = os.path.join(base, "annotations", f"instances_{split}.json")
        with open(path, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def write_tiny_cityscapes(root: str, splits: Sequence[str] = ("train", "val")) -> None:
    """``cityscapes/leftImg8bit/<split>/tinycity/*`` and ``cityscapes/gtFine/<split>/tinycity/*``
    under ``root``: two street scenes (road, cars, a person) with every ground-truth file
    Detectron2's Cityscapes loaders and evaluators read, the train-id PNGs made by
    cityscapesscripts' ``createTrainIdLabelImgs`` as datasets/README.md prescribes."""
    import cv2
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation import createTrainIdLabelImgs
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    base = os.path.join(root, "cityscapes")
    city = "tinycity"
    for split in splits:
        for i, objects in enumerate(_CITYSCAPES_OBJECTS):
            stem = f"{city}_000000_{i:06d}"
            img_dir = os.path.join(base, "leftImg8bit", split, city)
            gt_dir = os.path.join(base, "gtFine", split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)
            cv2.imwrite(os.path.join(img_dir, f"{stem}_leftImg8bit.png"), tiny_image(10 + i))
            polygons = os.path.join(gt_dir, f"{stem}_gtFine_polygons.json")
            with open(polygons, "w") as f:
                json.dump(
                    {
                        "imgHeight": TINY_HEIGHT,
                        "imgWidth": TINY_WIDTH,
                        "objects": [{"label": label, "polygon": p} for label, p in objects],
                    },
                    f,
                )
            json2labelImg(polygons, os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png"), "ids")
            # Cityscapes' instance ids are 16-bit PNGs; cityscapesscripts draws a 32-bit image
            annotation = Annotation()
            annotation.fromJsonFile(polygons)
            ids = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.int64)
            path = os.path.join(gt_dir, f"{stem}_gtFine_instanceIds.png")
            cv2.imwrite(path, ids.astype(np.uint16))
    # the preparation step of datasets/README.md: *_gtFine_labelTrainIds.png
    old = os.environ.get("CITYSCAPES_DATASET")
    os.environ["CITYSCAPES_DATASET"] = base
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines: not the caller's output
            createTrainIdLabelImgs.main()
    finally:
        if old is None:
            del os.environ["CITYSCAPES_DATASET"]
        else:
            os.environ["CITYSCAPES_DATASET"] = old
