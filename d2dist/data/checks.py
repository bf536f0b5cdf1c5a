"""Datasets checked when they are loaded, before training or evaluation (issue 22).

Every dataset a d2dist trainer trains or evaluates on goes through :func:`checked_dataset_dicts`
(Detectron2's ``get_detection_dataset_dicts``, one dataset at a time, then
:func:`check_dataset_dicts`), whatever registered it: COCO-format files, Cityscapes folders, a
user's own ``DatasetCatalog.register``. Where: d2dist's ``Trainer.build_train_loader`` (once,
before training) and ``Trainer.build_test_loader`` (before each evaluation), the LazyConfig
train loader, and the loader :func:`register_coco_format` registers (``--coco-dataset``); a
project's own ``build_train_loader`` calls :func:`checked_dataset_dicts` itself. A fault names
the dataset, the file, the image id (and image file) and the annotation (its index in the image
and, where the loader kept it, its id) and says how to fix it. The data is never changed
silently. The policy, fault by fault:

======================================================  ==========================================
fault                                                   policy
======================================================  ==========================================
annotation file that is not valid JSON, an image        refused (:class:`DataError`) where the file
without ``file_name``, a ``category_id`` not among      is read: Detectron2's loader's own error
the file's categories (COCO format)                     is explained (the file is read again only
                                                        then) with the JSON's indices and ids
Cityscapes: a missing split folder, a missing           refused before Detectron2's loader runs
``*_gtFine_polygons.json``, ``labelIds.png``,           (the layout is checked: one ``stat`` per
``instanceIds.png`` or (semantic) ``labelTrainIds.png`` file); a polygons JSON that cannot be
                                                        parsed: the loader's error explained
record without ``file_name``; image file missing,       refused; only the images the loader keeps
unreadable, not 8-bit (16-bit and float images would    (after ``filter_empty``) are read
be clipped to 255 by ``read_image``), or of another
size than its record says
semantic label image in colour, or with a palette       refused (``read_image(..., "L")`` would
that is not the identity                                turn colours into grey levels, not ids)
``category_id`` not an integer in ``[0, classes)``      refused
``bbox`` missing or not four finite numbers, a          refused
``bbox_mode`` other than XYXY_ABS / XYWH_ABS (rotated
boxes: checked as numbers only)
a box of negative width or height                       refused (never mirrored)
a polygon with fewer than 3 points, an odd number of    refused
coordinates or non-finite ones; an RLE without
``counts`` or of another size than the image
a box partly outside its image                          kept: Detectron2's transforms clip it
                                                        (``transform_instance_annotations``);
                                                        counted in a logged line
a box entirely outside its image, or of zero width      training set: dropped and counted, with a
or height                                               logged summary; refused above
                                                        :data:`MAX_DROPPED` of the dataset's boxes
                                                        (``D2DIST_MAX_DROPPED``); test set: kept
                                                        (the evaluator reads its own ground
                                                        truth), counted, same limit
a training set left without any box                    refused
a test set without any annotation (no instances, no     refused before evaluation (it cannot be
semantic labels)                                        scored: NaN); except a COCO image-info
                                                        file (no ``annotations`` key, as
                                                        test-dev), whose predictions Detectron2's
                                                        COCOEvaluator writes for the server
======================================================  ==========================================

The classes of the datasets and the models are compared by :func:`check_same_classes` and
:func:`check_num_classes` (the config's side: :mod:`d2dist.engine.data_checks`).

Cost. The annotations are checked in memory (about 3 microseconds a box: some 3 s for COCO
train2017's 860k boxes). Each image is checked from its header alone (PIL's ``Image.open``, no
decoding), in a thread pool: 30-100 microseconds an image from the page cache or a local disk
(measured on 3000 COCO-sized JPEGs: 4-12 s for COCO's 118k training images), more from a
network disk, where the threads help most; decoding an image, as the mapper does, costs about
2.5 ms. Every process of a multi-process run checks what it loads. The dataset mapper keeps
its per-iteration check as the backstop (:class:`~d2dist.engine.faults.CheckedMapper`): a file
that changes, or is truncated after its header, still stops the run, named. Keypoints are not
checked; Detectron2's COCO loader itself drops polygons of fewer than 3 points, with a logged
warning, before d2dist sees them.
"""

import contextlib
import itertools
import json
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import (
    filter_images_with_few_keypoints,
    filter_images_with_only_crowd_annotations,
    get_detection_dataset_dicts,
    print_instances_class_histogram,
)
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DataError, RunFault, os_error_cause

__all__ = [
    "MAX_DROPPED",
    "check_dataset_dicts",
    "check_image_files",
    "check_num_classes",
    "check_same_classes",
    "checked_dataset_dicts",
    "coco_json_faults",
    "dataset_classes",
    "load_coco_format",
    "load_explained",
    "register_coco_format",
    "show_classes",
]

logger = logging.getLogger(__name__)

MAX_DROPPED = 0.01
"""The largest share of a dataset's boxes that may lie entirely outside their images or have zero
size (dropped from a training set, with a summary); more is refused. ``D2DIST_MAX_DROPPED``
overrides it (a fraction, e.g. ``0.05``)."""

# PIL modes Detectron2's read_image converts to 8-bit RGB/BGR without losing values (grey and
# palette images become three equal channels; an alpha channel is dropped).
_EIGHT_BIT = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
# Semantic labels: one channel of class ids (16-bit ids below 256 convert to "L" unchanged; a
# palette image only with the identity palette, see _header).
_LABEL_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L"}
_EXIF_ORIENTATION = 0x0112
_MOST = 5  # examples named in a message


def _max_dropped(value: Optional[float]) -> float:
    if value is not None:
        return float(value)
    text = os.environ.get("D2DIST_MAX_DROPPED", "")
    if not text:
        return MAX_DROPPED
    try:
        limit = float(text)
    except ValueError:
        limit = -1.0
    if not 0 <= limit <= 1:
        raise ConfigError(
            f"D2DIST_MAX_DROPPED={text!r}: expected a fraction between 0 and 1 (the largest share "
            "of a dataset's boxes that may be dropped for lying outside their images), e.g. 0.05."
        )
    return limit


# ---- naming what is wrong --------------------------------------------------------------------
def _dataset(name: str) -> str:
    meta = MetadataCatalog.get(name)
    source = getattr(meta, "json_file", None) or getattr(meta, "gt_dir", None)
    return f"dataset {name!r}" + (f" ({source})" if source else "")


def _image(record: dict, index: int) -> str:
    image_id = record.get("image_id")
    where = f"image id {image_id!r}" if image_id is not None else f"image #{index}"
    return f"{where} ({record.get('file_name', 'no file_name')})"


def _annotation(ann, index: int) -> str:
    ann_id = ann.get("id") if isinstance(ann, dict) else None
    return f"annotation #{index}" + (f" (id {ann_id})" if ann_id is not None else "")


def _some(items: Sequence[str], most: int = _MOST) -> str:
    items = list(items)
    more = f"; and {len(items) - most} more" if len(items) > most else ""
    return "; ".join(items[:most]) + more


# ---- images ----------------------------------------------------------------------------------
def _header(path: str) -> Tuple[Optional[str], int, int, str]:
    """``(problem or None, width, height, mode)`` of an image file from its header (EXIF rotation
    applied to the size, as Detectron2's ``read_image`` applies it to the pixels)."""
    try:
        with PathManager.open(path, "rb") as f:
            with Image.open(f) as image:
                width, height = image.size
                mode = image.mode
                orientation = 1
                if "exif" in image.info:  # JPEG APP1 (no decoding needed)
                    with contextlib.suppress(Exception):  # Detectron2 ignores unreadable EXIF too
                        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
                palette = image.getpalette() if mode == "P" else None
    except FileNotFoundError:
        return "does not exist", 0, 0, ""
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return f"cannot be read as an image ({type(e).__name__}: {e})", 0, 0, ""
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if palette is not None and any(
        palette[i : i + 3] != [i // 3] * 3 for i in range(0, len(palette) - 2, 3)
    ):
        mode = "P (a colour palette)"
    return None, width, height, mode


def _check_image(record: dict, index: int, name: str) -> Optional[str]:
    """What is wrong with the image (and semantic labels) of ``record``, or None."""
    problem, width, height, mode = _header(record["file_name"])
    if problem:
        return (
            f"{_dataset(name)}: {_image(record, index)}: the image file {problem}. Restore the "
            "file, or remove the image from the dataset's annotations."
        )
    if mode not in _EIGHT_BIT:
        return (
            f"{_dataset(name)}: {_image(record, index)}: the image is of PIL mode {mode!r} (more "
            "than 8 bits a channel); Detectron2's read_image converts images to 8-bit RGB, "
            "which clips such values to 255. Convert the image to 8 bits (values scaled to 0-255) "
            "before training on it."
        )
    expected = (record.get("width"), record.get("height"))
    if expected != (None, None) and expected != (width, height):
        return (
            f"{_dataset(name)}: {_image(record, index)}: the image is {width}x{height} (width x "
            f"height), but its record says {expected[0]}x{expected[1]}. Fix the height and width "
            "in the annotations, or the image."
        )
    labels = record.get("sem_seg_file_name")
    if labels is None:
        return None
    problem, lw, lh, lmode = _header(labels)
    if problem:
        return (
            f"{_dataset(name)}: {_image(record, index)}: its semantic labels {labels} {problem}. "
            "Restore the label image."
        )
    if lmode not in _LABEL_MODES:
        return (
            f"{_dataset(name)}: {_image(record, index)}: its semantic labels {labels} are of PIL "
            f"mode {lmode!r}; Detectron2 reads labels as one channel of class ids "
            "(read_image(..., 'L')), which would turn colours into grey levels, not ids. Save "
            "the labels as a single-channel image of class ids (Cityscapes: the "
            "*_labelTrainIds.png of cityscapesscripts' createTrainIdLabelImgs)."
        )
    if (lw, lh) != (width, height):
        return (
            f"{_dataset(name)}: {_image(record, index)}: its semantic labels {labels} are "
            f"{lw}x{lh}, the image {width}x{height}; they must have the image's size."
        )
    return None


def check_image_files(records: Sequence[dict], dataset_name: str) -> None:
    """Each record's image file (and semantic labels) exists, can be read as an image of 8 bits
    a channel, and has the record's size, from its header alone (threads; see the module's
    docstring for the cost). Raises :class:`DataError` naming the images at fault."""
    name = dataset_name
    if not records:
        return
    workers = min(16, 4 * (os.cpu_count() or 1), max(1, len(records) // 64))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = pool.map(lambda x: _check_image(x[1], x[0], name), enumerate(records))
        problems = [p for p in found if p]
    if problems:
        raise DataError(_some(problems))


# ---- instances -------------------------------------------------------------------------------
def _finite_numbers(values, count: Optional[int] = None) -> bool:
    """Whether ``values`` is a list, tuple or 1-d array of finite numbers (``count`` of them)."""
    if hasattr(values, "tolist"):  # a numpy array
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        return False
    if count is not None and len(values) != count:
        return False
    try:  # math.isfinite takes real numbers only (a string, None, a list raise TypeError)
        return all(map(math.isfinite, values))
    except TypeError:
        return False


def _segmentation_fault(segm, height, width) -> Optional[str]:
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            return f"its RLE segmentation has keys {sorted(segm)}; an RLE needs 'counts' and 'size'"
        size = list(segm["size"])
        if height and width and size != [height, width]:
            return f"its RLE segmentation is of size {size}, the image [{height}, {width}]"
        return None
    if not isinstance(segm, (list, tuple)):
        return f"its segmentation is a {type(segm).__name__}; expected polygons or an RLE dict"
    for k, poly in enumerate(segm):
        if not _finite_numbers(poly) or len(poly) % 2 or len(poly) < 6:
            n = len(poly) if hasattr(poly, "__len__") else "?"
            return (
                f"its polygon #{k} ({n} values) is not a list of x, y pairs of finite numbers "
                "with at least 3 points"
            )
    return None


class _Tally:
    """What one dataset's check found besides refusals: the boxes dropped and clipped."""

    def __init__(self):
        self.boxes = 0
        self.dropped = Counter()
        self.clipped = 0
        self.examples: List[str] = []

    def drop(self, why: str, record: dict, i: int, ann: dict, j: int) -> None:
        self.dropped[why] += 1
        if len(self.examples) < _MOST:
            box = list(ann["bbox"])
            self.examples.append(f"{_image(record, i)}, {_annotation(ann, j)} bbox={box}: {why}")


def _annotation_fault(ann, record: dict, classes, tally: _Tally) -> Tuple[Optional[str], str]:
    """``(fault, "")`` to refuse annotation ``ann`` of ``record``, ``(None, why)`` to drop it
    (``why`` the reason) or ``(None, "")`` to keep it. Messages are made only for a fault."""
    if not isinstance(ann, dict):
        return f"is a {type(ann).__name__}, not a dict of bbox, category_id, ...", ""
    cat = ann.get("category_id")
    if not isinstance(cat, Integral) or isinstance(cat, bool) or cat < 0:
        return f"category_id={cat!r} is not a class index (an integer >= 0).", ""
    if classes is not None and cat >= len(classes):
        return (
            f"category_id={cat} is not among the dataset's {len(classes)} classes (0-"
            f"{len(classes) - 1}: {show_classes(classes)}). Fix the annotation, or register the "
            "dataset with the classes it uses.",
            "",
        )
    box, mode = ann.get("bbox"), ann.get("bbox_mode")
    rotated = mode == BoxMode.XYWHA_ABS
    if not _finite_numbers(box, 5 if rotated else 4):
        return (
            f"bbox={box!r} is not four finite numbers (COCO files: x, y, width, height; dataset "
            "dicts: as their bbox_mode says). Fix or remove the annotation.",
            "",
        )
    if mode not in (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS):
        return (
            f"bbox_mode={mode!r}; Detectron2's transforms take BoxMode.XYXY_ABS or XYWH_ABS "
            "(absolute pixels). Convert the boxes when registering the dataset.",
            "",
        )
    height, width = record.get("height"), record.get("width")
    segm = ann.get("segmentation")
    if segm is not None:
        fault = _segmentation_fault(segm, height, width)
        if fault:
            return f"{fault}. Fix or remove the annotation.", ""
    if rotated:
        return None, ""
    tally.boxes += 1
    x0, y0, x1, y1 = box
    if mode == BoxMode.XYWH_ABS:
        x1, y1 = x0 + x1, y0 + y1
    if x1 < x0 or y1 < y0:
        return (
            f"bbox={list(box)} ({BoxMode(mode).name}) has a negative width or height "
            f"({x1 - x0:g} x {y1 - y0:g}); d2dist does not mirror it into another box. Fix the "
            "annotation (COCO's boxes are x, y of the top-left corner, then width, height).",
            "",
        )
    if x1 == x0 or y1 == y0:
        return None, "zero width or height"
    if width and height:
        if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
            return None, f"entirely outside the {width}x{height} image"
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            tally.clipped += 1
    return None, ""


def check_dataset_dicts(
    dicts: List[dict],
    dataset_name: str,
    *,
    training: bool = True,
    check_images: bool = True,
    max_dropped: Optional[float] = None,
) -> List[dict]:
    """Check the records of one dataset (Detectron2's standard dataset dicts) as the module's
    policy says; returns them, without the dropped boxes of a training set (the records that
    lose boxes are copies: the input list and its records are not changed).

    Args:
        dicts: the records, as ``DatasetCatalog.get(dataset_name)`` returns them.
        dataset_name: its registered name (its metadata gives the classes and the files named in
            messages).
        training: a training set (boxes outside the images dropped, at least one box must be
            left) or a test set (kept; it must have annotations to be scored).
        check_images: read each image's header (see the module's docstring for the cost).
        max_dropped: the largest share of boxes that may lie outside the images or have zero
            size; default :data:`MAX_DROPPED` or ``D2DIST_MAX_DROPPED``.

    Raises:
        DataError: a fault of the data (named, with the fix).
        ConfigError: a test set that cannot be scored.
    """
    limit = _max_dropped(max_dropped)
    classes = getattr(MetadataCatalog.get(dataset_name), "thing_classes", None)
    tally, out, annotated = _Tally(), [], False
    for i, record in enumerate(dicts):
        if not isinstance(record, dict) or "file_name" not in record:
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"{_dataset(dataset_name)}: record #{i} has no 'file_name' (it has {got}). Every "
                "image record needs the path of its image; fix the dataset's annotations or the "
                "function registered for it."
            )
        for key in ("height", "width"):
            value = record.get(key)
            if value is not None and (not isinstance(value, Integral) or value <= 0):
                raise DataError(
                    f"{_dataset(dataset_name)}: {_image(record, i)}: {key}={value!r} is not a "
                    "positive integer. Fix the image's entry in the annotations."
                )
        if "sem_seg_file_name" in record or "pan_seg_file_name" in record:
            annotated = True
        anns = record.get("annotations")
        if anns is None:
            out.append(record)
            continue
        if not isinstance(anns, (list, tuple)):
            raise DataError(
                f"{_dataset(dataset_name)}: {_image(record, i)}: its annotations are a "
                f"{type(anns).__name__}, not a list of dicts (bbox, bbox_mode, category_id, ...)."
            )
        kept = []
        for j, ann in enumerate(anns):
            fault, why = _annotation_fault(ann, record, classes, tally)
            if fault:
                where = f"{_image(record, i)}, {_annotation(ann, j)}"
                raise DataError(f"{_dataset(dataset_name)}: {where}: {fault}")
            if why:
                tally.drop(why, record, i, ann, j)
            if not why or not training:
                kept.append(ann)
        annotated = annotated or bool(anns)
        out.append(record if len(kept) == len(anns) else {**record, "annotations": kept})
    if check_images:
        check_image_files(out, dataset_name)
    _report(tally, dataset_name, training, limit, out)
    if not training and not annotated:
        _refuse_unscorable(dataset_name)
    return out


def _report(tally: _Tally, name: str, training: bool, limit: float, records) -> None:
    dropped = sum(tally.dropped.values())
    if tally.clipped:
        logger.info(
            f"{_dataset(name)}: {tally.clipped} of {tally.boxes} boxes lie partly outside their "
            "image; Detectron2's transforms clip them to it (transform_instance_annotations)."
        )
    if not dropped:
        return
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(tally.dropped.items()))
    share = dropped / tally.boxes
    summary = (
        f"{_dataset(name)}: {dropped} of its {tally.boxes} boxes ({share:.1%}) cannot be "
        f"trained on ({reasons}), e.g. {_some(tally.examples)}"
    )
    if training and not any(
        not a.get("iscrowd", 0) for r in records for a in r.get("annotations", ())
    ):
        raise DataError(
            f"{summary}. No box of the training set is left, so it would train on background "
            "alone. Are the boxes in another format (x, y, x, y read as x, y, width, height) or "
            "for other image sizes? Fix the annotations."
        )
    if share > limit:
        raise DataError(
            f"{summary}. That is more than d2dist drops ({limit * 100:g}% of a dataset's boxes, "
            "D2DIST_MAX_DROPPED): so many suggest a fault in the annotations (another box format "
            "or image size). Fix them, or allow more with D2DIST_MAX_DROPPED=FRACTION (e.g. "
            f"{min(1.0, math.ceil(share * 100) / 100):g}) to train on the rest."
        )
    fate = "dropped before training" if training else "kept (the evaluator reads its own files)"
    logger.warning(
        f"{summary}. They are {fate}; at most {limit * 100:g}% may be (D2DIST_MAX_DROPPED)."
    )


def _refuse_unscorable(name: str) -> None:
    meta = MetadataCatalog.get(name)
    json_file = getattr(meta, "json_file", None)
    if json_file and getattr(meta, "evaluator_type", None) == "coco":
        with PathManager.open(json_file) as f:
            if "annotations" not in json.load(f):  # an image-info file (test-dev): predictions only
                logger.warning(
                    f"{_dataset(name)} has no annotations (an image-info file): Detectron2's "
                    "COCOEvaluator writes its predictions for an evaluation server; no metric is "
                    "computed."
                )
                return
    raise ConfigError(
        f"the test set {name!r} has no annotations (no instances and no semantic labels in any "
        "of its images), so it cannot be scored: every metric would be NaN. Name a test set "
        "with ground truth in DATASETS.TEST, or none to train without evaluating."
    )


# ---- loading ---------------------------------------------------------------------------------
def checked_dataset_dicts(
    names,
    *,
    training: bool = True,
    filter_empty: bool = True,
    min_keypoints: int = 0,
    proposal_files: Optional[Sequence[str]] = None,
    check_consistency: bool = True,
    check_images: bool = True,
    max_dropped: Optional[float] = None,
    key: str = "",
    filter_key: str = "filter_empty",
    per_dataset: bool = False,
):
    """Detectron2's ``get_detection_dataset_dicts`` with every dataset checked when it is loaded:
    the drop-in for it, e.g. in a LazyConfig's ``dataloader.train.dataset`` or a project's own
    ``build_train_loader``::

        dicts = checked_dataset_dicts(cfg.DATASETS.TRAIN, key="DATASETS.TRAIN",
                                      filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dicts)

    Each dataset is loaded by Detectron2's function alone (a fault in reading its files named:
    :func:`load_explained`) and its annotations checked (:func:`check_dataset_dicts`); then the
    images are filtered as Detectron2 filters them (``filter_empty``: images without non-crowd
    annotations; ``min_keypoints``), the images left are checked (:func:`check_image_files`) and
    the datasets joined. The train sets' class names agree (``check_consistency``). ``key`` and
    ``filter_key`` name the datasets and ``filter_empty`` in messages. With ``per_dataset`` the
    checked, filtered lists are returned as ``(name, records)`` pairs instead of joined.
    """
    names = [names] if isinstance(names, str) else list(names)
    which = f"{key}={tuple(names)}" if key else f"datasets {names}"
    if not names:
        raise ConfigError(f"{key or 'the dataset list'} is empty: name at least one dataset.")
    if proposal_files is not None and len(proposal_files) != len(names):
        raise ConfigError(
            f"{len(proposal_files)} proposal files for {len(names)} datasets {names}: give one "
            "proposal file per dataset (DATASETS.PROPOSAL_FILES_TRAIN / _TEST)."
        )
    loaded = []  # (name, records): a name given twice (to sample it twice as often) stays twice
    for k, name in enumerate(names):
        proposals = [proposal_files[k]] if proposal_files is not None else None
        dicts = load_explained(name, training=training, proposal_files=proposals, which=which)
        if isinstance(dicts, torchdata.Dataset):
            logger.info(
                f"Dataset {name!r} is a torch Dataset, not a list: d2dist does not check it."
            )
            loaded.append((name, dicts))
            continue
        dicts = check_dataset_dicts(
            dicts, name, training=training, check_images=False, max_dropped=max_dropped
        )
        if dicts and "annotations" in dicts[0]:  # as get_detection_dataset_dicts filters
            if filter_empty:
                dicts = filter_images_with_only_crowd_annotations(dicts)
            if min_keypoints > 0:
                dicts = filter_images_with_few_keypoints(dicts, min_keypoints)
        if check_images:
            check_image_files(dicts, name)
        loaded.append((name, dicts))
    if check_consistency and len(names) > 1:  # after loading: a COCO file sets its classes
        check_same_classes([(key or "dataset", n) for n in names])
    if any(isinstance(d, torchdata.Dataset) for _, d in loaded):
        # as get_detection_dataset_dicts: torch datasets are joined as they are
        values = [d for _, d in loaded]
        return values[0] if len(values) == 1 else torchdata.ConcatDataset(values)
    if not any(d for _, d in loaded):
        raise ConfigError(
            f"{which} gives no {'training ' if training else ''}images: no image has usable "
            f"annotations, and {filter_key}={filter_empty} drops images without annotations. "
            "Check the dataset's files (datasets/README.md) and its registration, or name "
            "another dataset."
        )
    if per_dataset:
        return loaded
    dicts = list(itertools.chain.from_iterable(d for _, d in loaded))
    classes = dataset_classes(names[0], "thing_classes")
    labeled = [d for d in dicts if "annotations" in d]  # an unlabeled dataset's records have none
    if check_consistency and classes is not None and labeled:
        print_instances_class_histogram(labeled, classes)
    return dicts


def load_explained(name: str, *, training: bool = True, proposal_files=None, which: str = ""):
    """One dataset's records from Detectron2's ``get_detection_dataset_dicts`` (unfiltered), the
    layout of a Cityscapes dataset checked first; a fault in reading its files (invalid JSON, a
    missing key, an unknown category id) is a :class:`DataError` naming the file and the entry,
    an empty dataset a :class:`ConfigError` (``which``: how the caller names the datasets). Any
    other error propagates unchanged."""
    meta = MetadataCatalog.get(name)
    kind = getattr(meta, "evaluator_type", None)
    cityscapes = kind in ("cityscapes_instance", "cityscapes_sem_seg")
    if cityscapes:
        _check_cityscapes_layout(name, meta, kind, training)
    json_file = getattr(meta, "json_file", None)
    try:
        return get_detection_dataset_dicts(
            [name], filter_empty=False, proposal_files=proposal_files, check_consistency=False
        )
    except OSError as e:  # a file that is missing, a directory, unreadable
        raise RunFault(
            f"{_dataset(name)} cannot be read: {e.filename or json_file!r}: {os_error_cause(e)}. "
            "Its files must exist and be readable (datasets/README.md describes the layouts; "
            "Detectron2's built-in datasets are looked for under $DETECTRON2_DATASETS)."
        ) from e
    except (json.JSONDecodeError, KeyError, ValueError, TypeError, AssertionError) as e:
        if isinstance(e, AssertionError) and str(e) == f"Dataset '{name}' is empty!":
            raise ConfigError(
                f"{which or f'dataset {name!r}'} gives no {'training ' if training else ''}"
                f"images: dataset {name!r} is empty. Check the dataset's files "
                "(datasets/README.md) and its registration, or name another dataset."
            ) from e
        if cityscapes:
            faults = cityscapes_json_faults(meta.gt_dir)
        elif json_file:
            faults = coco_json_faults(json_file)
        else:
            raise
        if not faults:
            raise  # not a fault of the files: a bug, shown with its traceback
        raise DataError(
            f"{_dataset(name)} cannot be loaded ({type(e).__name__}: {e}): {_some(faults)}. Fix "
            "the file(s) named; datasets/README.md describes the layouts."
        ) from e


def load_coco_format(json_file: str, image_root: str, dataset_name: str) -> List[dict]:
    """Detectron2's ``load_coco_json`` keeping each annotation's ``id`` (named in messages); a
    file that cannot be used is a :class:`DataError` naming it and the entry at fault."""
    from detectron2.data.datasets import load_coco_json

    if not PathManager.isfile(json_file):
        raise DataError(
            f"dataset {dataset_name!r}: its annotation file {json_file!r} does not exist "
            "(registered with --coco-dataset / register_coco_format). Restore it."
        )
    try:
        return load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["id"])
    except (json.JSONDecodeError, KeyError, ValueError, TypeError, AssertionError) as e:
        faults = coco_json_faults(json_file)
        if not faults:
            raise
        raise DataError(
            f"dataset {dataset_name!r}: {json_file} cannot be loaded ({type(e).__name__}: {e}): "
            f"{_some(faults)}. Fix the annotation file (COCO's format: "
            "https://cocodataset.org/#format-data)."
        ) from e


def register_coco_format(name: str, json_file: str, image_root: str, metadata=None) -> None:
    """Register a COCO-format dataset as Detectron2's ``register_coco_instances`` does (same
    metadata: ``json_file``, ``image_root``, ``evaluator_type="coco"``), loaded by
    :func:`load_coco_format` so that a faulty file is named with the entry at fault."""
    DatasetCatalog.register(name, lambda: load_coco_format(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )


def coco_json_faults(json_file: str) -> List[str]:
    """What makes ``json_file`` unusable as COCO instances: invalid JSON (with its line and
    column), a missing list, images without ``id`` / ``file_name`` / ``height`` / ``width``,
    annotations without ``id`` / ``image_id`` / ``category_id``, or naming an image or a
    category the file does not have. Empty if none of these (the file is read in full)."""
    try:
        with PathManager.open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        return [
            f"{json_file} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} "
            "(a file cut short by a copy or download fails so; write or download it again)"
        ]
    except OSError as e:
        return [f"{json_file} cannot be read: {e}"]
    if not isinstance(data, dict):
        return [f"{json_file} holds a JSON {type(data).__name__}; COCO's format is an object"]
    faults = []
    lists = {}
    for key in ("images", "annotations", "categories"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
            faults.append(f"{json_file}: {key!r} is not a list of objects")
            value = []
        lists[key] = value
    images, anns, cats = lists["images"], lists["annotations"], lists["categories"]

    def missing(kind: str, k: int, entry: dict, keys) -> None:
        absent = [key for key in keys if key not in entry]
        if absent:
            ident = f" (id {entry['id']})" if "id" in entry else ""
            faults.append(f"{json_file}: {kind}[{k}]{ident} has no {', '.join(map(repr, absent))}")

    for k, image in enumerate(images):
        missing("images", k, image, ("id", "file_name", "height", "width"))
    for k, cat in enumerate(cats):
        missing("categories", k, cat, ("id", "name"))
    image_ids = {image.get("id") for image in images}
    cat_ids = sorted({cat.get("id") for cat in cats}, key=str)
    known_cats = set(cat_ids)
    seen = set()
    for k, ann in enumerate(anns):
        missing("annotations", k, ann, ("id", "image_id", "category_id"))
        where = (
            f"{json_file}: annotations[{k}] (id {ann.get('id')}, image_id {ann.get('image_id')})"
        )
        if "id" in ann and ann["id"] in seen:
            faults.append(f"{where}: another annotation has this id; ids must be unique")
        seen.add(ann.get("id"))
        if "image_id" in ann and ann["image_id"] not in image_ids:
            faults.append(f"{where} names an image id that is not among 'images'")
        if cats and "category_id" in ann and ann["category_id"] not in known_cats:
            faults.append(
                f"{where} has category_id={ann['category_id']!r}, which is not among the "
                f"file's categories (ids {cat_ids[:12]}{' ...' if len(cat_ids) > 12 else ''}): "
                "add the category or correct the id"
            )
        if "bbox" in ann and not _finite_numbers(ann["bbox"], 4):
            faults.append(f"{where} has bbox={ann['bbox']!r}; COCO's is [x, y, width, height]")
    return faults


# ---- Cityscapes ------------------------------------------------------------------------------
def _cityscapes_files(image_dir: str) -> Iterator[Tuple[str, str]]:
    for city in sorted(PathManager.ls(image_dir)):
        city_dir = os.path.join(image_dir, city)
        if not PathManager.isdir(city_dir):
            continue
        for basename in sorted(PathManager.ls(city_dir)):
            yield city, basename


def _check_cityscapes_layout(name: str, meta, kind: str, training: bool) -> None:
    """The folders and files Detectron2's Cityscapes loader (and, for a test set, its evaluator)
    will read: one ``stat`` per file, nothing parsed."""
    fix = (
        "Lay the dataset out as datasets/README.md says (leftImg8bit/<split>/<city>/ and "
        "gtFine/<split>/<city>/), under $DETECTRON2_DATASETS/cityscapes for the built-in names."
    )
    for what, folder in (("image", meta.image_dir), ("ground-truth", meta.gt_dir)):
        if not PathManager.isdir(folder):
            raise DataError(
                f"dataset {name!r}: its {what} split folder {folder} does not exist. {fix}"
            )
    # Detectron2's loader asserts the first three for the first image it lists (and reads the
    # polygons of all); its evaluators read the label ids (semantic) and instance ids.
    needed = ["_gtFine_polygons.json", "_gtFine_labelIds.png", "_gtFine_instanceIds.png"]
    if kind == "cityscapes_sem_seg":
        needed.append("_gtFine_labelTrainIds.png")
    missing, wrong, images = [], [], 0
    for city, basename in _cityscapes_files(meta.image_dir):
        if not basename.endswith("_leftImg8bit.png"):
            wrong.append(os.path.join(meta.image_dir, city, basename))
            continue
        images += 1
        stem = os.path.join(meta.gt_dir, city, basename[: -len("_leftImg8bit.png")])
        missing += [stem + suffix for suffix in needed if not PathManager.isfile(stem + suffix)]
    if wrong:
        raise DataError(
            f"dataset {name!r}: {_some(wrong)} in the image folder do not end in "
            "_leftImg8bit.png; Detectron2's Cityscapes loader reads only such files. Move them "
            "out."
        )
    if not images:
        raise DataError(f"dataset {name!r}: no image in {meta.image_dir}/<city>/. {fix}")
    if missing:
        hint = ""
        if any(m.endswith("labelTrainIds.png") for m in missing):
            hint = (
                " The *_labelTrainIds.png are made from the polygons by cityscapesscripts: "
                "CITYSCAPES_DATASET=/path/to/cityscapes python -m "
                "cityscapesscripts.preparation.createTrainIdLabelImgs (datasets/README.md)."
            )
        raise DataError(
            f"dataset {name!r}: {len(missing)} ground-truth file(s) of its {images} images are "
            f"missing: {_some(missing)}.{hint or ' Restore them from gtFine_trainvaltest.zip.'}"
        )


def cityscapes_json_faults(gt_dir: str) -> List[str]:
    """The ``*_gtFine_polygons.json`` under ``gt_dir`` that Detectron2's Cityscapes loaders cannot
    read: invalid JSON, no ``imgHeight`` / ``imgWidth`` / ``objects``, objects without a ``label``
    (known to cityscapesscripts) or a ``polygon`` of at least 3 points."""
    from cityscapesscripts.helpers.labels import name2label

    faults = []
    for city, basename in _cityscapes_files(gt_dir):
        if not basename.endswith("_gtFine_polygons.json"):
            continue
        path = os.path.join(gt_dir, city, basename)
        try:
            with PathManager.open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            faults.append(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}")
            continue
        if not isinstance(data, dict) or any(
            k not in data for k in ("imgHeight", "imgWidth", "objects")
        ):
            faults.append(f"{path} is not an object with imgHeight, imgWidth and objects")
            continue
        for k, obj in enumerate(data["objects"]):
            label = obj.get("label") if isinstance(obj, dict) else None
            known = isinstance(label, str) and (
                label in name2label or label.endswith("group") and label[:-5] in name2label
            )
            polygon = obj.get("polygon") if isinstance(obj, dict) else None
            points = isinstance(polygon, list) and all(_finite_numbers(p, 2) for p in polygon)
            if not known or not points or len(polygon) < 3:
                faults.append(
                    f"{path}: objects[{k}] (label {label!r}) needs a Cityscapes label and a "
                    "polygon of at least 3 [x, y] points"
                )
    return faults


# ---- classes ---------------------------------------------------------------------------------
def dataset_classes(name: str, field: str) -> Optional[List[str]]:
    """The class names ``field`` (``thing_classes`` or ``stuff_classes``) of dataset ``name``:
    from its metadata, or, for a COCO-format dataset not loaded yet, from its file's
    ``categories`` (sorted by id, as Detectron2's loader orders them). None if unknown."""
    meta = MetadataCatalog.get(name)
    classes = getattr(meta, field, None)
    if classes is not None:
        return list(classes)
    json_file = getattr(meta, "json_file", None)
    if field != "thing_classes" or not json_file or getattr(meta, "evaluator_type", "") != "coco":
        return None
    try:
        stamp = (json_file, os.path.getmtime(json_file))
        if stamp not in _CATEGORIES:
            with PathManager.open(json_file) as f:
                cats = json.load(f).get("categories", [])
            _CATEGORIES[stamp] = [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
        return list(_CATEGORIES[stamp])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # not readable as COCO: loading the dataset names the fault


_CATEGORIES: Dict[Tuple[str, float], List[str]] = {}  # the class names read from COCO files


FIELDS = ("thing_classes", "stuff_classes")


def show_classes(classes: Sequence[str], most: int = 8) -> str:
    """``classes`` for a message: the first ``most`` names."""
    shown = ", ".join(map(repr, classes[:most]))
    return f"[{shown}{', ...' if len(classes) > most else ''}]"


def check_same_classes(datasets: Sequence[Tuple[str, str]]) -> None:
    """The datasets (``(key, name)`` pairs, e.g. ``("DATASETS.TEST", "coco_2017_val")``) that
    define ``thing_classes`` (or ``stuff_classes``) define the same names in the same order: a
    model is trained and scored on one list of classes. Datasets that define none are skipped."""
    for field in FIELDS:
        known = [(k, n, dataset_classes(n, field)) for k, n in datasets]
        known = [x for x in known if x[2] is not None]
        for key, name, classes in known[1:]:
            key0, name0, first = known[0]
            if classes == first:
                continue
            if len(classes) != len(first):
                diff = f"{len(first)} classes vs {len(classes)}"
            else:
                i = next(i for i, (a, b) in enumerate(zip(first, classes)) if a != b)
                diff = f"class {i} is {first[i]!r} in the one, {classes[i]!r} in the other"
            raise ConfigError(
                f"{key0} {name0!r} and {key} {name!r} have different {field} ({diff}): "
                f"{show_classes(first)} vs {show_classes(classes)}. A model is trained and scored "
                "on one list of classes in one order (its class index i is the dataset's class "
                "i): name datasets with the same classes, or register them with the same "
                "categories (a COCO-format file: the same 'categories', ids and names)."
            )


def check_num_classes(
    heads: Sequence[Tuple[str, int, str]], datasets: Sequence[Tuple[str, str]], whose: str = ""
) -> None:
    """Each head (``(key, number, field)``, e.g. of
    :func:`d2dist.engine.data_checks.model_classes`) predicts at least the classes
    of each dataset (``(key, name)`` pairs): fewer is refused (a class index past the head is an
    ``IndexError`` mid-run, or is silently taken for background); more is logged."""
    for key, number, field in heads:
        for dkey, name in datasets:
            classes = dataset_classes(name, field)
            if classes is None or number == len(classes):
                continue
            head = f"{key}={number}{f' ({whose})' if whose else ''}"
            if number < len(classes):
                raise ConfigError(
                    f"{head} is below the {len(classes)} classes of {dkey} {name!r} ({field} "
                    f"{show_classes(classes)}): the classes {number}-{len(classes) - 1} would be "
                    f"past the head (an IndexError mid-run, or taken for background). Set {key} "
                    f"{len(classes)}."
                )
            logger.warning(
                f"{head}: the head predicts {number} classes, {dkey} {name!r} has {len(classes)} "
                f"({field}); the {number - len(classes)} others are never trained as objects. "
                f"Set {key} {len(classes)} unless this is what you want."
            )
