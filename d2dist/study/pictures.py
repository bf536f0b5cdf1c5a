"""Pictures of predictions: several models side by side on a few images of a dataset (Detectron2's
``Visualizer``), each panel titled with its model and its box AP, one PNG per image.

A model is a run directory (its ``config.yaml`` and final checkpoint; a Distiller run's student is
built and loaded alone, as ``--eval-only`` evaluates it) or a config file with weights::

    models = [run_model("output/study/faster_rcnn/teacher", "teacher"),
              run_model("output/study/faster_rcnn/pkd/seed1", "PKD")]
    draw_predictions(models, "d2dist_shapes_val", "output/pictures", num_images=3)
"""

import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer
from matplotlib.figure import Figure

from ..checkpoint import EvalCheckpointer, resume_or_load
from ..data import ensure_generated
from ..engine import Trainer, for_evaluation, load_config
from ..engine.export import run_checkpoint
from ..errors import ConfigError
from ..modeling import TeacherLabels, teacher_from_file
from ..modeling.mixup import mix
from ..modeling.targets import TeacherRun
from .runs import run_box_ap

__all__ = [
    "PANEL_INCHES",
    "SCORE_THRESHOLD",
    "PictureModel",
    "draw_mixup_example",
    "draw_predictions",
    "run_model",
]

# detections drawn: those scoring at least this (the built-in dataset's models are weak)
SCORE_THRESHOLD = 0.3
PANEL_INCHES = 2.8  # each panel's side
TITLE_INCHES = 0.5  # room for a panel's two-line title
DPI = 100
PANEL_PIXELS = 256  # images are drawn at about this size (the built-in dataset's are 64 px)
MOST = 20  # detections drawn per panel, the highest scoring


@dataclass
class PictureModel:
    """A model to draw: its label, its yacs config file (a Distiller config's student is the
    model drawn), its weights and the box AP shown in its title (None: unknown)."""

    label: str
    config: str
    weights: str
    ap: Optional[float] = None


def run_model(run_dir: str, label: Optional[str] = None, ap: Optional[float] = None):
    """The model of a training run's directory: its ``config.yaml`` and the checkpoint its
    ``last_checkpoint`` names; its box AP, unless given, from the study's stored results (when
    they belong to the run's current files) or its last evaluation in ``metrics.json``."""
    config = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config):
        raise ConfigError(
            f"{run_dir!r} holds no config.yaml: give the OUTPUT_DIR of a training run, or a "
            "config file and its weights."
        )
    label = label or os.path.relpath(run_dir, os.path.dirname(os.path.dirname(run_dir)))
    ap = run_box_ap(run_dir) if ap is None else ap
    return PictureModel(label, config, run_checkpoint(run_dir), ap)


def _predictor(model: PictureModel, device: Optional[str]) -> Callable[[np.ndarray], object]:
    """A function from an RGB image to the model's detections (``Instances`` on the CPU), as
    Detectron2's ``DefaultPredictor`` makes them, but with the model an evaluation builds."""
    opts = ["MODEL.WEIGHTS", model.weights] + (["MODEL.DEVICE", device] if device else [])
    cfg = for_evaluation(load_config(model.config, opts, training=False))
    net = Trainer.build_model(cfg)
    checkpointer = EvalCheckpointer(net, save_dir=os.path.dirname(model.weights))
    resume_or_load(checkpointer, model.weights, resume=False)
    net.eval()
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    bgr = cfg.INPUT.FORMAT == "BGR"

    def predict(rgb: np.ndarray):
        image = rgb[:, :, ::-1] if bgr else rgb
        height, width = image.shape[:2]
        image = resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
        with torch.no_grad():
            output = net([{"image": tensor, "height": height, "width": width}])[0]
        return output["instances"].to("cpu")

    return predict


def _title(model: PictureModel) -> str:
    ap = "n/a" if model.ap is None else f"{model.ap:.1f}"
    return f"{model.label}\nbox AP {ap}"


def draw_predictions(
    models: Sequence[PictureModel],
    dataset: str,
    output_dir: str,
    *,
    num_images: int = 3,
    score_threshold: float = SCORE_THRESHOLD,
    device: Optional[str] = None,
    ground_truth: bool = True,
    prefix: str = "predictions",
) -> List[str]:
    """Draw each model's detections on the first ``num_images`` images of ``dataset``, side by
    side (after the ground truth, if ``ground_truth``), one PNG per image:
    ``<output_dir>/<prefix>_<k>.png``; returns their paths.

    Each panel is ``PANEL_INCHES`` wide at ``DPI``: a PNG of ``n`` panels is
    ``n * PANEL_INCHES * DPI`` pixels wide and ``(PANEL_INCHES + TITLE_INCHES) * DPI`` high.
    """
    if not models:
        raise ConfigError("no models to draw: give at least one run directory or config + weights")
    if num_images < 1:
        raise ConfigError(f"the number of images is {num_images}; give at least 1")
    if dataset not in DatasetCatalog.list():
        raise ConfigError(
            f"dataset {dataset!r} is not registered; d2dist's built-in ones are "
            f"{sorted(n for n in DatasetCatalog.list() if n.startswith('d2dist_'))}"
        )
    ensure_generated(dataset)
    records = DatasetCatalog.get(dataset)[:num_images]
    metadata = MetadataCatalog.get(dataset)
    predictors = [_predictor(m, device) for m in models]
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for k, record in enumerate(records, 1):
        rgb = read_image(record["file_name"], format="RGB")
        scale = max(1.0, PANEL_PIXELS / min(rgb.shape[:2]))

        def visualizer():
            return Visualizer(rgb, metadata, scale=scale, instance_mode=ColorMode.SEGMENTATION)

        panels = []
        if ground_truth:
            count = len(record.get("annotations", []))
            panels.append(
                (f"ground truth\n{count} objects", visualizer().draw_dataset_dict(record))
            )
        for model, predict in zip(models, predictors):
            instances = predict(rgb)
            kept = instances[instances.scores >= score_threshold]
            kept = kept[kept.scores.argsort(descending=True)[:MOST]]
            panels.append((_title(model), visualizer().draw_instance_predictions(kept)))
        paths.append(_save_panels(panels, os.path.join(output_dir, f"{prefix}_{k}.png")))
    return paths


def _save_panels(panels, path: str) -> str:
    """``(title, drawn Visualizer output)`` panels side by side in one PNG."""
    fig = Figure(figsize=(PANEL_INCHES * len(panels), PANEL_INCHES + TITLE_INCHES), dpi=DPI)
    width = 1.0 / len(panels)
    for i, (title, drawn) in enumerate(panels):
        ax = fig.add_axes((i * width, 0.0, width, PANEL_INCHES / (PANEL_INCHES + TITLE_INCHES)))
        ax.imshow(drawn.get_image())
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.savefig(path, dpi=DPI)
    return path


def _boxes(n: int) -> str:
    return f"{n} box" + ("" if n == 1 else "es")


def draw_mixup_example(
    teacher_run: str,
    path: str,
    *,
    labeled: str = "d2dist_shapes_train",
    unlabeled: str = "d2dist_shapes_unlabeled",
    lam: float = 0.5,
    score_threshold: float = SCORE_THRESHOLD,
    device: Optional[str] = None,
) -> str:
    """A consistent-mixup training view (:mod:`d2dist.modeling.mixup`), drawn: the first image of
    ``labeled`` with its boxes, the first of ``unlabeled``, and their mix (weight ``lam``) with
    the labels the student trains on there: the teacher's (a trained run's model, its
    ``config.yaml`` and last checkpoint) on the mixed image, scoring >= ``score_threshold``.
    Returns ``path`` (a PNG)."""
    teacher = teacher_from_file(
        os.path.join(teacher_run, "config.yaml"),
        run_checkpoint(teacher_run),
        device=device or "cpu",
    )
    teacher.load()
    size = teacher.cfg.INPUT.MIN_SIZE_TEST, teacher.cfg.INPUT.MAX_SIZE_TEST
    mapper = DatasetMapper(is_train=True, augmentations=[T.ResizeShortestEdge(*size)],
                           image_format=teacher.input_format)  # fmt: skip
    for name in (labeled, unlabeled):
        ensure_generated(name)
    a, b = (mapper(dict(DatasetCatalog.get(n)[0])) for n in (labeled, unlabeled))
    mixed = mix(a, b, lam)
    run = TeacherRun(teacher, [mixed], teacher.input_format)
    labels = TeacherLabels(score_threshold=score_threshold)
    mixed = labels.label(teacher.model, teacher, [mixed], run)[0]
    metadata = MetadataCatalog.get(labeled)

    def drawn(x, boxes):
        image = x["image"].permute(1, 2, 0).cpu().numpy()
        if teacher.input_format == "BGR":
            image = image[:, :, ::-1]
        scale = max(1.0, PANEL_PIXELS / min(image.shape[:2]))
        v = Visualizer(image.clip(0, 255).astype(np.uint8), metadata, scale=scale)
        if boxes is None:
            return v.get_output()
        inst = boxes.to("cpu")
        names = [metadata.thing_classes[c] for c in inst.gt_classes.tolist()]
        return v.overlay_instances(boxes=inst.gt_boxes.tensor.numpy(), labels=names)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    panels = [
        (f"labeled ({labeled})\n{_boxes(len(a['instances']))}", drawn(a, a["instances"])),
        (f"unlabeled ({unlabeled})\nno labels", drawn(b, None)),
        (f"mixed, lam {lam}: the teacher's labels\n{_boxes(len(mixed['instances']))} "
         f"(score >= {score_threshold})", drawn(mixed, mixed["instances"])),
    ]  # fmt: skip
    return _save_panels(panels, path)
