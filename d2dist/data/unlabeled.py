"""Datasets of images nobody labelled: a folder of images registered as a Detectron2 dataset.

Its records have a ``file_name`` and an ``image_id`` and *no* ``annotations`` key (not an empty
list: an empty list means "labelled, and nothing is in it", a background image). Detectron2's
``DatasetMapper`` then gives no ``instances`` and no ``sem_seg``, and a
:class:`~d2dist.modeling.Distiller` has its teacher label those images on the step's own
augmented view (``MODEL.DISTILL.TEACHER_LABELS``, docs/unlabeled.md).

- :func:`register_image_folder` (the tools' ``--image-folder NAME DIR``) registers a folder;
- :func:`is_unlabeled` says whether a registered dataset is one (its metadata's ``unlabeled``);
- ``d2dist_shapes_unlabeled`` (registered by :mod:`.builtin`) is 4,000 new images of the built-in
  generator whose labels are withheld, for the study of unlabeled images (docs/results.md).

How many of a batch's images are unlabeled is set with Detectron2's own per-dataset sampling
weights (``DATALOADER.SAMPLER_TRAIN: WeightedTrainingSampler`` and
``DATASETS.TRAIN_REPEAT_FACTOR``); :func:`repeat_factors_for_fraction` computes them.
"""

import functools
import os
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "is_unlabeled",
    "load_image_folder",
    "register_image_folder",
    "repeat_factors_for_fraction",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""The file name endings (any case) read as images; other files in the folder are skipped."""


def load_image_folder(image_dir: str, dataset_name: str = "") -> List[dict]:
    """The records of every image under ``image_dir`` (sub-folders included), sorted by path:
    ``{"file_name": path, "image_id": index}``, without ``annotations``.

    Raises:
        DataError: the folder does not exist or holds no image (the message says what it holds).
    """
    which = f"dataset {dataset_name!r}: " if dataset_name else ""
    if not os.path.isdir(image_dir):
        raise DataError(
            f"{which}the image folder {image_dir!r} does not exist or is not a folder (working "
            f"directory {os.getcwd()}). Give the folder that holds the unlabeled images."
        )
    files, others = [], []
    for root, dirs, names in os.walk(image_dir, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            (files if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(path)
    if not files:
        seen = f"it holds {len(others)} other files, e.g. {others[:3]}" if others else "it is empty"
        raise DataError(
            f"{which}the image folder {image_dir!r} holds no image ({seen}); images are files "
            f"ending in {', '.join(IMAGE_EXTENSIONS)}."
        )
    return [{"file_name": f, "image_id": i} for i, f in enumerate(files)]


def register_image_folder(name: str, image_dir: str, metadata: Optional[Dict] = None) -> None:
    """Register the images under ``image_dir`` as the unlabeled dataset ``name`` (records of
    :func:`load_image_folder`; metadata ``image_root``, ``unlabeled=True`` and ``metadata``, e.g.
    the ``thing_classes`` the teacher predicts). A name registered already with the same folder
    is left as it is; with another folder, or as another kind of dataset, it is an error."""
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if getattr(meta, "unlabeled", False) and meta.image_root == image_dir:
            return
        raise ConfigError(
            f"--image-folder {name} {image_dir}: a dataset named {name!r} is registered already "
            f"(image_root={getattr(meta, 'image_root', None)!r}); choose another name."
        )
    if not os.path.isdir(image_dir):
        raise ConfigError(
            f"--image-folder {name} {image_dir}: the folder {image_dir!r} does not exist "
            f"(working directory {os.getcwd()})."
        )
    DatasetCatalog.register(name, functools.partial(load_image_folder, image_dir, name))
    MetadataCatalog.get(name).set(image_root=image_dir, unlabeled=True, **(metadata or {}))


def is_unlabeled(dataset_name: str) -> bool:
    """Whether ``dataset_name`` was registered as a dataset of unlabeled images."""
    return bool(getattr(MetadataCatalog.get(dataset_name), "unlabeled", False))


def repeat_factors_for_fraction(
    sizes: Sequence[Tuple[str, int, bool]], fraction: float
) -> List[Tuple[str, float]]:
    """``DATASETS.TRAIN_REPEAT_FACTOR`` pairs that make ``fraction`` of the sampled images (on
    average, over batches) unlabeled, with ``DATALOADER.SAMPLER_TRAIN WeightedTrainingSampler``.

    Args:
        sizes: ``(dataset name, number of images, unlabeled?)`` of each of ``DATASETS.TRAIN``.
        fraction: the share of unlabeled images, strictly between 0 and 1.

    Within each group the datasets keep their proportions; the smaller factor is 1.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(
            f"unlabeled fraction {fraction}: must be strictly between 0 and 1 (for 0 or 1, leave "
            "the unlabeled or the labeled datasets out of DATASETS.TRAIN)."
        )
    unlabeled = sum(n for _, n, u in sizes if u)
    labeled = sum(n for _, n, u in sizes if not u)
    if not unlabeled or not labeled:
        raise ConfigError(
            f"DATASETS.TRAIN {[s[0] for s in sizes]} needs labeled and unlabeled images for an "
            "unlabeled fraction; it has only one kind."
        )
    # each labeled image drawn with weight a, each unlabeled one with weight b:
    # b*U / (a*L + b*U) = fraction  ->  a/b = U*(1-fraction) / (L*fraction)
    ratio = unlabeled * (1.0 - fraction) / (labeled * fraction)
    a, b = (ratio, 1.0) if ratio >= 1.0 else (1.0, 1.0 / ratio)
    return [(name, round(b if u else a, 6)) for name, _, u in sizes]
