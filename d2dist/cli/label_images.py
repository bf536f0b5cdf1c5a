"""Label a folder of unlabeled images with a trained teacher: a COCO-format annotation file.

    d2dist-label --config-file TEACHER.yaml --weights TEACHER.pth --image-folder DIR \\
        --output pseudo.json [--score-threshold 0.5] [--masks] [--device cpu|cuda] \\
        [--opts KEY VALUE ...]

(``python tools/label_images.py ...`` in a checkout.) The offline pseudo-labelling of Data
Distillation (Radosavovic et al., CVPR 2018): the teacher (a Detectron2 yacs config,
``model_zoo:<path>`` or a LazyConfig ``.py``) runs at its own test-time resolution on every image,
and its detections with a score of at least ``--score-threshold`` are written as ground truth
(boxes, with ``--masks`` also RLE masks), which trains a student like any labelled set:
``--coco-dataset NAME pseudo.json DIR``. Images without a detection are listed too (background
images, if ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is False). Labels made once, offline, cost one
teacher pass per image instead of one per step; the Distiller's online labelling of the step's own
augmented view (``MODEL.DISTILL.TEACHER_LABELS``, docs/unlabeled.md) is the alternative.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf
from tqdm import tqdm

from ..data import load_image_folder
from ..errors import ConfigError, DataError
from ..file_io import local_path
from ..modeling import Teacher, teacher_from_file
from ._warnings import quiet_third_party_warnings

__all__ = ["console_main", "label_images", "main"]

_SEMANTIC = (
    "semantic pseudo-labels are not written offline: a Distiller labels the unlabeled images "
    "online on each step's own augmented view (MODEL.DISTILL.TEACHER_LABELS, docs/unlabeled.md)."
)

# The teacher's messages name its config keys, which this tool's options set.
_TEACHER_KEYS = (
    " (here --config-file, --weights and --opts set MODEL.DISTILL.TEACHER.CONFIG_FILE, .WEIGHTS "
    "and .OPTS)"
)


def _check_arguments(args) -> None:
    """The threshold is a score, the output's folder exists and so do the teacher's files (named
    by the option that gave them, not by the teacher's config key, before anything is built)."""
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ConfigError(
            f"--score-threshold {args.score_threshold}: expected a score in [0, 1] (e.g. 0.5; "
            "Data Distillation keeps the confident detections only)."
        )
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise ConfigError(
            f"--output {args.output!r}: its folder {folder!r} does not exist; create it first."
        )
    for option, path in (("--config-file", args.config_file), ("--weights", args.weights)):
        if path.startswith("model_zoo:") or ("://" in path and not path.startswith("d2dist://")):
            continue  # resolved (and checked) by the teacher's own machinery
        try:
            exists = os.path.isfile(local_path(path))
        except FileNotFoundError as e:
            raise ConfigError(f"{option}: {e}") from e
        if not exists:
            raise ConfigError(
                f"{option} {path!r} does not exist (working directory {os.getcwd()}); expected "
                + ("the teacher's config file (a yacs .yaml, model_zoo:<path> or a LazyConfig "
                   ".py)." if option == "--config-file" else "the teacher's trained checkpoint "
                   "(.pth / .pkl, or a URL such as detectron2://...).")  # fmt: skip
            )


def build_labelling_teacher(args) -> Teacher:
    """The teacher of ``args``, built by d2dist's teacher machinery (as a Distiller's is: yacs,
    ``model_zoo:`` or LazyConfig, with ``--opts``); its weights are loaded by ``Teacher.load``."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device is available; use --device cpu.")
    return teacher_from_file(
        args.config_file, args.weights, opts=list(args.opts or []), device=args.device
    )


def detector_heads(teacher: Teacher, masks: bool) -> int:
    """The number of classes the teacher detects; a ConfigError for a teacher that detects
    nothing (semantic segmentation) or, with ``masks``, predicts no masks."""
    model = teacher.model
    heads = getattr(model, "roi_heads", None)
    num_classes = getattr(heads if heads is not None else model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ConfigError(
            f"--config-file {teacher.config_path!r} builds a {type(model).__name__}, which is not "
            "a detector (no roi_heads.num_classes or num_classes): d2dist-label writes boxes of "
            f"R-CNN, RetinaNet, FCOS or Panoptic FPN teachers; {_SEMANTIC}"
        )
    if masks and not getattr(heads, "mask_on", False):
        raise ConfigError(
            f"--masks: the teacher ({teacher.source}) has no mask head; "
            "drop --masks to write boxes only, or give a Mask R-CNN teacher (MODEL.MASK_ON True)."
        )
    return num_classes


def categories(teacher: Teacher, num_classes: int) -> list:
    """COCO categories ``1..N``: the ``thing_classes`` of the teacher's first training set when
    they are known and as many as its classes, else ``class_0 ... class_{N-1}``."""
    if teacher.cfg is not None:
        names = teacher.cfg.DATASETS.TRAIN
    else:
        names = OmegaConf.select(teacher.lazy, "dataloader.train.dataset.names", default=None)
    names = [names] if isinstance(names, str) else list(names or [])
    classes = getattr(MetadataCatalog.get(names[0]), "thing_classes", None) if names else None
    if not classes or len(classes) != num_classes:
        classes = [f"class_{i}" for i in range(num_classes)]
    return [{"id": i + 1, "name": name} for i, name in enumerate(classes)]


def teacher_mapper(teacher: Teacher, min_size: int, max_size: int) -> DatasetMapper:
    """The teacher's own test-time input: its yacs config's mapper (INPUT.MIN_SIZE_TEST,
    MAX_SIZE_TEST, FORMAT); for a LazyConfig teacher a shortest-edge resize to the given sizes."""
    if teacher.cfg is not None:
        return DatasetMapper(teacher.cfg, is_train=False)
    resize = T.ResizeShortestEdge(min_size, max_size)
    return DatasetMapper(is_train=False, augmentations=[resize], image_format=teacher.input_format)


def label_images(teacher, records, image_dir, mapper, threshold, masks=False, progress=True):
    """The COCO dict (without ``info``/``categories``) of the teacher's detections with a score
    ``>= threshold`` on ``records`` (of :func:`d2dist.data.load_image_folder`), in each original
    image's coordinates; ``category_id`` is the contiguous class + 1."""
    images, anns = [], []
    for record in tqdm(records, desc="labelling", unit="image", disable=not progress):
        try:
            inputs = mapper(record)
        except OSError as e:
            raise DataError(
                f"the image {record['file_name']!r} cannot be read ({type(e).__name__}: {e}); "
                "remove it from --image-folder or replace it."
            ) from e
        h, w = inputs["height"], inputs["width"]
        image_id = record["image_id"] + 1
        rel = os.path.relpath(record["file_name"], image_dir).replace(os.sep, "/")
        images.append({"id": image_id, "file_name": rel, "height": h, "width": w})
        with torch.no_grad():
            out = teacher.model([{"image": inputs["image"], "height": h, "width": w}])[0]
        inst = out["instances"].to("cpu")
        inst = inst[inst.scores >= threshold]
        for k, (x0, y0, x1, y1) in enumerate(inst.pred_boxes.tensor.tolist()):
            ann = {"id": len(anns) + 1, "image_id": image_id,
                   "category_id": int(inst.pred_classes[k]) + 1,
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                   "iscrowd": 0, "score": float(inst.scores[k])}  # fmt: skip
            if masks:
                mask = np.asfortranarray(inst.pred_masks[k].numpy().astype(np.uint8))
                rle = mask_util.encode(mask)
                ann["area"] = float(mask_util.area(rle))
                ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            anns.append(ann)
    return {"images": images, "annotations": anns}


def _write_atomically(data: dict, output: str) -> None:
    """``output`` appears whole or not at all (a temporary file beside it, then os.replace)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(output)}.", dir=os.path.dirname(
        os.path.abspath(output)))  # fmt: skip
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None, prog: str = "label_images.py") -> int:
    """Label as the command line ``argv`` asks; returns the exit status (errors: 2, printed
    after ``prog``)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="the teacher's own config")
    parser.add_argument("--weights", required=True, help="the teacher's trained checkpoint")
    parser.add_argument("--image-folder", required=True, metavar="DIR", help="the images")
    parser.add_argument("--output", required=True, metavar="JSON", help="the COCO file to write")
    parser.add_argument(
        "--score-threshold", type=float, default=0.5,
        help="keep detections scoring at least this (the teacher's own test threshold, e.g. "
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST, applies first; lower it with --opts)",
    )  # fmt: skip
    parser.add_argument("--masks", action="store_true", help="also write RLE masks")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-size", type=int, default=800, help="LazyConfig teachers' resize")
    parser.add_argument("--max-size", type=int, default=1333, help="LazyConfig teachers' resize")
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[],
        help="the teacher's config overrides, last: KEY VALUE ... (yacs) or key=value (LazyConfig)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    setup_logger(name="d2dist")
    try:
        _check_arguments(args)
        records = load_image_folder(args.image_folder)
        teacher = build_labelling_teacher(args)
        num_classes = detector_heads(teacher, args.masks)
        teacher.load()
        mapper = teacher_mapper(teacher, args.min_size, args.max_size)
        data = label_images(
            teacher, records, args.image_folder, mapper, args.score_threshold, args.masks
        )
        description = (
            f"d2dist pseudo-labels: {args.config_file} {args.weights}, "
            f"score >= {args.score_threshold}"
        )
        info = {"description": description, "date_created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "config_file": args.config_file, "weights": args.weights,
                "score_threshold": args.score_threshold, "masks": args.masks}  # fmt: skip
        data = {"info": info, **data}
        data["categories"] = categories(teacher, num_classes)
        _write_atomically(data, args.output)
    except (ConfigError, DataError, OSError) as e:
        keys = _TEACHER_KEYS if "MODEL.DISTILL.TEACHER." in str(e) else ""
        print(f"{prog}: error: {e}{keys}", file=sys.stderr)
        return 2
    n, dets = len(data["images"]), len(data["annotations"])
    empty = n - len({a["image_id"] for a in data["annotations"]})
    print(
        f"{n} images, {dets} detections (score >= {args.score_threshold}), {dets / n:.2f} per "
        f"image, {empty} images without detections (listed: background images when "
        f"DATALOADER.FILTER_EMPTY_ANNOTATIONS is False) -> {args.output}\ntrain on them with "
        f"--coco-dataset NAME {args.output} {args.image_folder}"
    )
    return 0


def console_main(argv=None) -> int:
    """``d2dist-label``: parses ``argv`` (default ``sys.argv[1:]``), returns the exit status."""
    quiet_third_party_warnings()
    return main(argv, prog=os.path.basename(sys.argv[0]))


if __name__ == "__main__":
    sys.exit(console_main())
