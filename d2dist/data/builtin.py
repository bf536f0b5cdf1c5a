"""Registration of d2dist's built-in datasets in Detectron2's catalogs.

Importing this module registers, under :func:`datasets_root`, the synthetic shapes datasets of
:mod:`.shapes`:

- ``d2dist_shapes_{train,val}``: COCO instances (``evaluator_type="coco"``);
- ``d2dist_shapes_{train,val}_sem_seg``: semantic labels of the same images
  (``evaluator_type="sem_seg"``; 0 is background, class ``i`` is ``i + 1``);
- the same four for ``d2dist_shapes_tiny``, a few 64-pixel images for smoke tests.

The root is ``$DETECTRON2_DATASETS`` when it is set (Detectron2's variable, which also places its
own built-in datasets); otherwise one folder, whatever the working directory: the checkout's
``datasets/`` when d2dist runs from a checkout, and ``$XDG_CACHE_HOME/d2dist/datasets`` (default
``~/.cache/d2dist/datasets``) for an installed d2dist. (Detectron2's own default, ``./datasets``
relative to the working directory, would generate a new copy in each folder a run starts from.)

Nothing is generated at registration. A dataset is generated the first time it is loaded
(``DatasetCatalog.get``) or when :func:`ensure_generated` is called, e.g. by an evaluator that
reads ``MetadataCatalog.get(name).json_file`` without loading the dataset.
"""

import dataclasses
import functools
import os
from typing import Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

from ..file_io import checkout
from .shapes import CLASSES, SPLITS, ShapesSpec, generate_shapes
from .unlabeled import load_image_folder

__all__ = [
    "BUILTIN_SHAPES",
    "datasets_root",
    "ensure_generated",
    "register_all_shapes",
    "register_shapes",
]

BUILTIN_SHAPES: Dict[str, ShapesSpec] = {
    # Sized for from-scratch training on a CPU in minutes (see configs/Shapes-Detection/).
    "d2dist_shapes": ShapesSpec(
        image_size=64,
        min_objects=1,
        max_objects=3,
        min_size=16,
        max_size=40,
        distractors=2,
        lines=2,
        textured=False,
    ),
    "d2dist_shapes_tiny": ShapesSpec(
        image_size=64,
        num_train=16,
        num_val=8,
        max_objects=4,
        min_size=10,
        max_size=28,
        distractors=3,
    ),
}
"""The built-in shapes datasets: name -> spec."""
# New images of the same generator (another seed), 4x the training set: the study of unlabeled
# images registers their train split as d2dist_shapes_unlabeled, its labels withheld.
BUILTIN_SHAPES["d2dist_shapes_extra"] = dataclasses.replace(
    BUILTIN_SHAPES["d2dist_shapes"], num_train=4000, num_val=1, seed=1
)

# Distinct RGB colours for visualisation, one per class in CLASSES.
_THING_COLORS = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [255, 225, 25],
    [70, 240, 240],
    [240, 50, 230],
]
assert len(_THING_COLORS) == len(CLASSES)

# name -> (root, spec) of each shapes dataset registered here; dataset name -> shapes name.
_REGISTERED: Dict[str, Tuple[str, ShapesSpec]] = {}
_DATASET_TO_SHAPES: Dict[str, str] = {}


def _dataset_names(name: str) -> List[str]:
    return [f"{name}_{split}{suffix}" for suffix in ("", "_sem_seg") for split in SPLITS]


def _load_instances(name, root, spec, json_file, image_root, dataset_name):
    generate_shapes(root, spec, name)
    return load_coco_json(json_file, image_root, dataset_name)


def _load_sem_seg(name, root, spec, gt_root, image_root):
    generate_shapes(root, spec, name)
    return load_sem_seg(gt_root, image_root, gt_ext="png", image_ext="jpg")


def register_shapes(name: str, root: str, spec: ShapesSpec) -> None:
    """Register the four datasets of a shapes dataset, generated lazily into ``<root>/<name>``.

    Registers ``{name}_train`` and ``{name}_val`` (COCO instances, loaded with Detectron2's
    ``load_coco_json``) and ``{name}_train_sem_seg`` and ``{name}_val_sem_seg`` (loaded with
    ``load_sem_seg``), with their metadata. Each loader first calls
    ``generate_shapes(root, spec, name)``, which returns at once when the data is up to date.

    Registering the same ``name`` again with the same ``root`` and ``spec`` does nothing; with
    others it raises ``ValueError``. A dataset name already registered by someone else raises
    Detectron2's usual ``AssertionError``.

    Args:
        name: dataset directory name, and prefix of the registered dataset names.
        root: the datasets directory (``<root>/<name>`` holds the data).
        spec: what to generate.
    """
    if not isinstance(spec, ShapesSpec):
        raise TypeError(f"spec must be a ShapesSpec, got {type(spec).__name__}")
    if name in _REGISTERED:
        if _REGISTERED[name] == (root, spec):
            return
        old_root, old_spec = _REGISTERED[name]
        raise ValueError(
            f"The shapes dataset {name!r} is already registered with root={old_root!r}, "
            f"spec={old_spec}; cannot register it again with root={root!r}, spec={spec}. "
            "Use another name."
        )
    names = _dataset_names(name)
    for n in names:  # check all first, so a clash leaves nothing half-registered
        assert n not in DatasetCatalog, f"Dataset '{n}' is already registered!"

    directory = os.path.join(root, name)
    for split in SPLITS:
        image_root = os.path.join(directory, split)
        json_file = os.path.join(directory, "annotations", f"instances_{split}.json")
        sem_seg_root = os.path.join(directory, "sem_seg", split)
        instances, sem_seg = f"{name}_{split}", f"{name}_{split}_sem_seg"

        DatasetCatalog.register(
            instances,
            functools.partial(_load_instances, name, root, spec, json_file, image_root, instances),
        )
        MetadataCatalog.get(instances).set(
            thing_classes=list(CLASSES),
            thing_colors=[list(c) for c in _THING_COLORS],
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(CLASSES))},
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
        )
        DatasetCatalog.register(
            sem_seg, functools.partial(_load_sem_seg, name, root, spec, sem_seg_root, image_root)
        )
        MetadataCatalog.get(sem_seg).set(
            stuff_classes=["background", *CLASSES],
            stuff_colors=[[0, 0, 0]] + [list(c) for c in _THING_COLORS],
            ignore_label=255,
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            evaluator_type="sem_seg",
        )
    _REGISTERED[name] = (root, spec)
    for n in names:
        _DATASET_TO_SHAPES[n] = name


def ensure_generated(dataset_name: str) -> None:
    """Generate ``dataset_name`` now if it is one of the shapes datasets registered here.

    For any other dataset this does nothing. Call it before reading files named in a dataset's
    metadata (such as ``json_file``) without going through ``DatasetCatalog.get``.
    """
    name = _DATASET_TO_SHAPES.get(dataset_name)
    if name is not None:
        root, spec = _REGISTERED[name]
        generate_shapes(root, spec, name)


def _load_unlabeled(name: str, image_dir: str, dataset_name: str) -> List[dict]:
    ensure_generated(f"{name}_train")
    return load_image_folder(image_dir, dataset_name)


def register_all_shapes(root: str) -> None:
    """Register the built-in shapes datasets (:data:`BUILTIN_SHAPES`) under ``root``, and
    ``d2dist_shapes_unlabeled``: the images of ``d2dist_shapes_extra_train`` without labels
    (:mod:`.unlabeled`), with the classes of ``d2dist_shapes_train`` as metadata."""
    for name, spec in BUILTIN_SHAPES.items():
        register_shapes(name, root, spec)
    name = "d2dist_shapes_unlabeled"
    if name not in DatasetCatalog.list():
        image_dir = os.path.join(root, "d2dist_shapes_extra", "train")
        DatasetCatalog.register(
            name, functools.partial(_load_unlabeled, "d2dist_shapes_extra", image_dir, name)
        )
        MetadataCatalog.get(name).set(
            image_root=image_dir, unlabeled=True, thing_classes=list(CLASSES)
        )


def datasets_root() -> str:
    """The folder the built-in datasets are registered under (see the module docstring):
    ``$DETECTRON2_DATASETS``, else the checkout's ``datasets/``, else the user's cache."""
    given = os.getenv("DETECTRON2_DATASETS")
    if given:
        return os.path.expanduser(given)
    root = checkout()
    if root is not None:
        return os.path.join(root, "datasets")
    cache = os.getenv("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "d2dist", "datasets")


register_all_shapes(datasets_root())
