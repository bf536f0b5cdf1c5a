"""A run's datasets checked before it trains or evaluates: the config's side of
:mod:`d2dist.data.checks` (which keys name the datasets and the models' classes).

- :func:`train_dataset_dicts` / :func:`test_dataset_dicts`: the checked records that d2dist's
  :class:`~d2dist.engine.Trainer` hands to Detectron2's loaders (loaded once).
- :func:`check_dataset_classes`: the class names and counts of ``DATASETS.TRAIN`` and
  ``DATASETS.TEST`` agree with each other and with the student's and the teacher's heads
  (``DistillationMixin`` runs it for every trainer, a project's own included).
- :func:`check_lazy_classes`: the same for a LazyConfig run (its ``dataloader`` and ``model``).
"""

import logging
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data.samplers import RepeatFactorTrainingSampler
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.checks import (
    check_num_classes,
    check_same_classes,
    checked_dataset_dicts,
    dataset_classes,
    show_classes,
)
from ..data.unlabeled import is_unlabeled
from ..errors import ConfigError
from .configs import is_distiller_node, student_meta_architecture

__all__ = [
    "check_dataset_classes",
    "check_unlabeled_datasets",
    "dataset_names",
    "check_lazy_classes",
    "model_classes",
    "test_dataset_dicts",
    "train_dataset_dicts",
    "weighted_sampler",
]

logger = logging.getLogger(__name__)

# meta-architecture -> the keys of its heads' class counts, and the metadata list each predicts
HEADS = {
    "GeneralizedRCNN": [("MODEL.ROI_HEADS.NUM_CLASSES", "thing_classes")],
    "RetinaNet": [("MODEL.RETINANET.NUM_CLASSES", "thing_classes")],
    "FCOS": [("MODEL.FCOS.NUM_CLASSES", "thing_classes")],
    "PanopticFPN": [
        ("MODEL.ROI_HEADS.NUM_CLASSES", "thing_classes"),
        ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "stuff_classes"),
    ],
    "SemanticSegmentor": [("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "stuff_classes")],
}
# target kinds whose pairs depend on what each class index means (logits, the teacher's head)
CLASS_KINDS = {"roi": "thing_classes", "dense": "thing_classes", "cross_head": "thing_classes",
               "pixel": "stuff_classes"}  # fmt: skip


def _value(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def model_classes(cfg: CfgNode) -> List[Tuple[str, int, str]]:
    """``(key, number of classes, metadata field)`` of each classifying head of ``cfg``'s model (a
    Distiller: its student's); empty for a meta-architecture not in :data:`HEADS`."""
    arch = student_meta_architecture(cfg)
    return [(key, int(_value(cfg, key)), field) for key, field in HEADS.get(arch, [])]


def _unwrapped(model: Optional[nn.Module]) -> Optional[nn.Module]:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _check_teacher(cfg: CfgNode, model: nn.Module, train: Sequence[Tuple[str, str]]) -> None:
    """A Distiller's teacher (its yacs config: heads and ``DATASETS.TRAIN``) against the training
    sets: refused when a class-dependent target pairs classes of other names (same number; other
    numbers are refused when the targets are built); logged otherwise."""
    teacher = getattr(model, "teacher_wrapper", None)
    if teacher is None:
        return
    if teacher.cfg is None:
        logger.info(
            f"The teacher ({teacher.source}) has no yacs config: d2dist does not compare its "
            "classes with the datasets' (class-dependent targets still check their counts)."
        )
        return
    tcfg = teacher.cfg
    kinds = set(getattr(getattr(model, "extractor", None), "kinds", {}) or {})
    taught = {CLASS_KINDS[k] for k in kinds if k in CLASS_KINDS}
    theirs = [("the teacher's DATASETS.TRAIN", n) for n in tcfg.DATASETS.TRAIN[:1]]
    for key, number, field in model_classes(tcfg):
        for dkey, name in train:
            classes = dataset_classes(name, field)
            names = dataset_classes(theirs[0][1], field) if theirs else None
            if classes is None:
                continue
            same = number == len(classes) and (names is None or names == classes)
            if same:
                continue
            what = (
                f"the teacher ({teacher.config_path or teacher.source}) predicts {number} "
                f"classes ({key})"
                + (
                    f" trained on {theirs[0][1]!r} {show_classes(names)}"
                    if names is not None
                    else ""
                )
                + f", {dkey} {name!r} has {len(classes)} {show_classes(classes)}"
            )
            if field in taught and number == len(classes):
                raise ConfigError(
                    f"{what}: the same number in another order or of other classes, so its "
                    f"logits would teach the wrong class at each index ({sorted(kinds)} targets). "
                    "Use a teacher trained on these classes in this order, or only feature terms "
                    "(MIMIC, ReviewKD, PKD, ...). If the teacher's DATASETS.TRAIN is not what it "
                    "was trained on, set it right in MODEL.DISTILL.TEACHER.OPTS."
                )
            logger.info(f"{what}: only its features are distilled, which need no common classes.")


def check_dataset_classes(cfg: CfgNode, model: Optional[nn.Module] = None) -> None:
    """Before training: the classes of ``DATASETS.TRAIN`` and ``DATASETS.TEST`` agree
    (:func:`check_same_classes`), the student's heads predict them (:func:`check_num_classes`),
    and a Distiller ``model``'s teacher was trained on them where its targets depend on it.

    Reads the datasets' metadata (a COCO-format dataset not loaded yet: its file's categories),
    the config and, for the teacher, ``model``'s :class:`~d2dist.modeling.Teacher`.
    """
    train = [("DATASETS.TRAIN", n) for n in cfg.DATASETS.TRAIN]
    test = [("DATASETS.TEST", n) for n in cfg.DATASETS.TEST]
    check_same_classes(train + test)
    whose = "the student's" if cfg.MODEL.META_ARCHITECTURE == "Distiller" else ""
    check_num_classes(model_classes(cfg), train + test, whose)
    model = _unwrapped(model)
    if model is not None:
        _check_teacher(cfg, model, train)


def train_dataset_dicts(cfg: CfgNode, per_dataset: bool = False):
    """The records of ``DATASETS.TRAIN``, loaded once and checked (:mod:`d2dist.data.checks`),
    filtered as Detectron2's train loader filters them."""
    return checked_dataset_dicts(
        cfg.DATASETS.TRAIN,
        training=True,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        key="DATASETS.TRAIN",
        filter_key="DATALOADER.FILTER_EMPTY_ANNOTATIONS",
        per_dataset=per_dataset,
    )


def weighted_sampler(cfg: CfgNode, per_dataset) -> RepeatFactorTrainingSampler:
    """Detectron2's ``WeightedTrainingSampler`` / ``WeightedCategoryTrainingSampler`` made from the
    checked records of each training set (``(name, records)`` pairs of
    :func:`train_dataset_dicts`; Detectron2's own would load them again, unchecked)."""
    factors = dict(cfg.DATASETS.TRAIN_REPEAT_FACTOR)
    unknown = set(factors) - set(cfg.DATASETS.TRAIN)
    if unknown:
        raise ConfigError(
            f"DATASETS.TRAIN_REPEAT_FACTOR names {sorted(unknown)}, which are not in "
            f"DATASETS.TRAIN={tuple(cfg.DATASETS.TRAIN)}."
        )
    repeat = torch.tensor([float(factors.get(name, 1.0)) for name, d in per_dataset for _ in d])
    if cfg.DATALOADER.SAMPLER_TRAIN == "WeightedCategoryTrainingSampler":
        per_category = [
            RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                d, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
            )
            for _, d in per_dataset
        ]
        repeat = repeat * torch.cat(per_category)
        repeat = repeat / repeat.min()
    return RepeatFactorTrainingSampler(repeat)


def test_dataset_dicts(cfg: CfgNode, dataset_name: str) -> list:
    """The records of the test set ``dataset_name``, loaded and checked (it must have annotations
    to be scored), and the heads of ``cfg``'s model checked against its classes."""
    names = list(cfg.DATASETS.TEST)
    proposals = None
    if cfg.MODEL.LOAD_PROPOSALS and dataset_name in names:
        proposals = [cfg.DATASETS.PROPOSAL_FILES_TEST[names.index(dataset_name)]]
    dicts = checked_dataset_dicts(
        [dataset_name],
        training=False,
        filter_empty=False,
        proposal_files=proposals,
        check_consistency=False,
        key="DATASETS.TEST",
    )
    check_num_classes(model_classes(cfg), [("DATASETS.TEST", dataset_name)])
    return dicts


def dataset_names(node) -> List[str]:
    """The dataset names of a LazyConfig dataset node (``get_detection_dataset_dicts``' ``names``:
    one name or a list), [] for a node without them."""
    names = node.get("names", []) if node is not None and hasattr(node, "get") else []
    return [names] if isinstance(names, str) else list(names or [])


def _lazy_heads(model_node) -> List[Tuple[str, int, str]]:

    prefix = "model"
    if is_distiller_node(model_node) and "student" in model_node:
        model_node, prefix = model_node.student, "model.student"
    heads = []
    for path, field in (("roi_heads.num_classes", "thing_classes"),
                        ("num_classes", "thing_classes"),
                        ("sem_seg_head.num_classes", "stuff_classes")):  # fmt: skip
        node = model_node
        for part in path.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if isinstance(node, int) and not isinstance(node, bool):
            heads.append((f"{prefix}.{path}", node, field))
    return heads


def check_lazy_classes(cfg) -> None:
    """:func:`check_dataset_classes` for a LazyConfig run: ``dataloader.train.dataset.names`` and
    ``dataloader.test.dataset.names`` agree, and the model's ``roi_heads.num_classes`` /
    ``num_classes`` / ``sem_seg_head.num_classes`` (a Distiller: its student's) predict them.
    The teacher is not compared (its classes are checked by the targets that use them)."""
    loader = cfg.get("dataloader", {})
    train = [("dataloader.train", n) for n in dataset_names(loader.get("train", {}).get("dataset"))]
    test = [("dataloader.test", n) for n in dataset_names(loader.get("test", {}).get("dataset"))]
    check_same_classes(train + test)
    check_num_classes(_lazy_heads(cfg.model), train + test)


def check_unlabeled_datasets(
    names: Sequence[str],
    model: nn.Module,
    *,
    key: str = "DATASETS.TRAIN",
    plain_loader: bool = False,
    filter_empty: bool = True,
) -> None:
    """Before training on datasets of unlabeled images (:func:`d2dist.data.register_image_folder`):
    the model is a Distiller, whose teacher can label what its student trains on
    (:meth:`~d2dist.modeling.TeacherLabels.check`), and the loader can load them: Detectron2's own
    (``plain_loader``: a trainer that keeps ``DefaultTrainer.build_train_loader``) fails on a mix
    of labeled and unlabeled datasets when it drops images without annotations (``filter_empty``),
    asking every record for its annotations."""
    unlabeled = [n for n in names if is_unlabeled(n)]
    if not unlabeled:
        return
    model = _unwrapped(model)
    labels = getattr(model, "teacher_labels", None)
    if labels is None:
        raise ConfigError(
            f"{key} names the unlabeled dataset(s) {unlabeled} (images without annotations), "
            f"but the model ({type(model).__name__}) is not a d2dist Distiller: only a teacher "
            "can label them (MODEL.DISTILL.TEACHER_LABELS, docs/unlabeled.md). Distil with a "
            "teacher, or label them offline with tools/label_images.py and train on that file."
        )
    labels.check(model.student, model.teacher)
    labeled = [n for n in names if not is_unlabeled(n)]
    if plain_loader and labeled and filter_empty:
        raise ConfigError(
            f"{key} mixes labeled {labeled} and unlabeled {unlabeled} datasets, and the trainer "
            "builds its loader with Detectron2's build_detection_train_loader, whose filter of "
            "images without annotations (DATALOADER.FILTER_EMPTY_ANNOTATIONS True) fails on "
            "unlabeled records. Use d2dist's loader in your trainer (build_train_loader returning "
            "d2dist.engine.train_loader(cfg)), or give Detectron2's loader the records of "
            "d2dist.data.checked_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=...), which filters "
            "each labeled dataset alone."
        )
