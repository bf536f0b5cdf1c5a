"""The teacher: built from its own config, frozen, always in eval, loaded strictly and only once.

:class:`Teacher` is the one small wrapper that owns how the teacher is run: its input format,
pixel statistics (read from the built model), autocast dtype and memory format, and where its
weights come from. Building a teacher (:func:`build_teacher`, called by ``build_model``) reads its
config but never its weights: :meth:`Teacher.load` does, where Detectron2 loads weights (d2dist's
trainers' ``resume_or_load``, ``--eval-teacher``, the benchmark). A teacher whose weights were
never loaded cannot train a student (:meth:`Teacher.check_loaded`).
"""

import logging
import os
from typing import Optional, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.structures import ImageList
from torch import nn

from ..errors import UNREADABLE_CHECKPOINT, ConfigError, incompatible_keys
from .teacher_config import (
    _local,
    _resolved,
    _teacher_config_path,
    build_meta_arch,
    is_lazy_config,
    load_lazy_teacher_config,
    load_teacher_config,
)

__all__ = ["AUTOCAST_DTYPES", "FLOAT16_ON_CPU", "Teacher", "TeacherNotLoadedError", "build_teacher"]

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = ("", "bfloat16", "float16")

# Why a float16 teacher cannot run on the CPU (every entry point says so).
FLOAT16_ON_CPU = (
    "float16 on the CPU is refused: its range ends at 65504, so a teacher's large activations "
    "become Inf and the distillation losses NaN at the first step, and CPUs without native "
    "float16 run it slower than float32. Use 'bfloat16' (float32's range; CPU autocast supports "
    "it) or '' (float32); float16 is for CUDA devices."
)


class TeacherNotLoadedError(RuntimeError):
    """A Distiller was asked to train with a teacher whose weights were never loaded."""


class _StrictCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, but a key or shape mismatch is an error instead of a log line."""

    def __init__(self, model: nn.Module, *, key: str, source: str):
        super().__init__(model)
        self.key, self.source = key, source

    def _load_file(self, filename: str):
        """The file read; one that cannot be (cut short, not a checkpoint) is a ConfigError."""
        try:
            return super()._load_file(filename)
        except UNREADABLE_CHECKPOINT as e:
            raise ConfigError(
                f"could not read {self.key}={filename!r}: {type(e).__name__}: {e}"
            ) from e

    def _log_incompatible_keys(self, incompatible) -> None:
        problems = incompatible_keys(incompatible, "the teacher model", most=None)
        if problems:
            raise ConfigError(
                f"{self.key} does not fit the teacher built from {self.source} "
                f"({'; '.join(problems)}). Use the weights that were trained with that config "
                "(and its OPTS)."
            )


class Teacher:
    """A frozen, eval-mode teacher model and how it is run on the student's images.

    Not an ``nn.Module`` of its own and never a submodule of the Distiller: the teacher stays out
    of the student's ``state_dict()``, optimizer and DDP. ``.to()`` of the Distiller moves it.

    Args:
        model: any Detectron2-style meta-architecture (``backbone``, ``pixel_mean``,
            ``pixel_std``, and the heads the terms use).
        input_format: the channel order the teacher was trained on ("BGR" or "RGB"). Default:
            the model's own ``input_format`` attribute (Detectron2's R-CNN, RetinaNet and FCOS
            have it); other models need it given.
        weights: its trained checkpoint (a path or any URL Detectron2's checkpointer reads),
            loaded strictly by :meth:`load`. Empty for a model whose weights are already loaded,
            which must then be said with ``loaded=True``.
        loaded: the model already holds its trained weights (e.g. loaded by hand).
        autocast: "", "bfloat16" or "float16": run it under ``torch.autocast`` of that dtype
            ("": float32, with autocast off even inside the student's mixed-precision region).
        channels_last: run it (weights and images) in the channels_last memory format.
        source: where it was built from, for messages (a config file, "hand-built", ...).
        cfg: its yacs config, when it was built from one; lazy: its LazyConfig, when from one.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_format: Optional[str] = None,
        weights: str = "",
        loaded: bool = False,
        autocast: str = "",
        channels_last: bool = False,
        source: str = "hand-built",
        cfg: Optional[CfgNode] = None,
        lazy=None,
    ):
        if input_format is None:
            input_format = getattr(model, "input_format", None)
            if input_format is None:
                raise ConfigError(
                    f"the teacher ({type(model).__name__}, {source}) has no input_format "
                    "attribute: give Teacher(..., input_format='BGR' or 'RGB'), the channel "
                    "order it was trained on."
                )
        for attr in ("pixel_mean", "pixel_std", "backbone"):
            if not hasattr(model, attr):
                raise ConfigError(
                    f"the teacher ({type(model).__name__}, {source}) has no {attr!r}; d2dist "
                    "teachers are Detectron2 meta-architectures (backbone, pixel_mean, pixel_std)."
                )
        std = torch.as_tensor(model.pixel_std)
        if not bool(torch.isfinite(std).all() and (std > 0).all()):
            raise ConfigError(
                f"the teacher ({type(model).__name__}, {source}) has pixel_std "
                f"{std.flatten().tolist()}: the channel standard deviations must be finite and > 0 "
                "(its images are divided by them; its config's MODEL.PIXEL_STD, or the pixel_std "
                "of its LazyConfig model)."
            )
        if autocast not in AUTOCAST_DTYPES:
            raise ConfigError(
                f"MODEL.DISTILL.TEACHER.AUTOCAST={autocast!r}; expected '', 'bfloat16' or 'float16'"
            )
        if not isinstance(channels_last, bool):
            raise ConfigError(
                f"MODEL.DISTILL.TEACHER.CHANNELS_LAST={channels_last!r}; expected True or False"
            )
        if not weights and not loaded:
            raise ConfigError(
                "MODEL.DISTILL.TEACHER.WEIGHTS is empty: the teacher must be trained. Set it to "
                "the teacher's checkpoint (a path, or a URL such as detectron2://...)"
                + ("." if cfg is not None else "; for a model whose weights you loaded yourself, "
                   "pass Teacher(model, loaded=True).")  # fmt: skip
            )
        self.model = model
        self.input_format = input_format
        self.weights = weights
        self.loaded = bool(loaded)
        self.autocast = autocast
        self.channels_last = channels_last
        self.source = source
        self.cfg, self.lazy = cfg, lazy
        self.config_path = ""  # the config file it was built from (set by build_teacher)
        self.weights_file = ""  # the local file its weights were loaded from, once loaded
        model.eval()
        model.requires_grad_(False)
        if channels_last:
            model.to(memory_format=torch.channels_last)

    @property
    def pixel_mean(self) -> torch.Tensor:
        return self.model.pixel_mean

    @property
    def pixel_std(self) -> torch.Tensor:
        return self.model.pixel_std

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    def load(self) -> "Teacher":
        """Load :attr:`weights` into the model, strictly (a missing, unexpected or mis-shaped key
        is a :class:`ConfigError` listing them); a teacher already loaded is left as it is."""
        if self.loaded:
            return self
        weights = _local(self.weights, "MODEL.DISTILL.TEACHER.WEIGHTS")
        if "://" not in weights and not os.path.isfile(weights):
            raise ConfigError(
                f"MODEL.DISTILL.TEACHER.WEIGHTS={self.weights!r}{_resolved(weights, self.weights)} "
                f"does not exist (working directory {os.getcwd()}). Train the teacher first, or give its checkpoint: a "
                "path relative to the working directory, 'd2dist://<path>' in the d2dist "
                "checkout, or a URL such as detectron2://..."
            )
        checkpointer = _StrictCheckpointer(
            self.model, key="MODEL.DISTILL.TEACHER.WEIGHTS", source=self.source
        )
        checkpointer.load(weights)  # (its existence was checked above)
        self._check_finite(weights)
        if self.channels_last:  # loading copies into the parameters; keep their memory format
            self.model.to(memory_format=torch.channels_last)
        self.model.eval()
        self.loaded = True
        self.weights_file = weights
        logger.info(
            f"Teacher: {type(self.model).__name__} from {self.source}, weights {weights} "
            f"({sum(p.numel() for p in self.model.parameters()) / 1e6:.1f}M params)"
        )
        return self

    def _check_finite(self, weights: str) -> None:
        """The loaded weights (parameters and buffers, e.g. BatchNorm statistics) hold no NaN or
        Inf: a teacher with them teaches NaN."""
        tensors = list(self.model.named_parameters()) + list(self.model.named_buffers())
        bad = [n for n, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            shown = bad if len(bad) <= 8 else bad[:8] + [f"... {len(bad) - 8} more"]
            raise ConfigError(
                f"MODEL.DISTILL.TEACHER.WEIGHTS={weights!r} holds NaN or Inf values in {len(bad)} "
                f"tensors of the teacher: {shown}. Its training diverged or the file is damaged: "
                "use a checkpoint of the teacher from before it diverged (an earlier "
                "model_*.pth of its run), or retrain it."
            )

    def check_loaded(self) -> None:
        """Raise :class:`TeacherNotLoadedError` unless the teacher's weights were loaded."""
        if not self.loaded:
            raise TeacherNotLoadedError(
                f"the teacher ({type(self.model).__name__} from {self.source}) was built but its "
                f"weights ({self.weights!r}) were never loaded, so it cannot teach. Load them "
                "where your script loads the model's weights (docs/own_project.md): a DefaultTrainer script (train_net.py), add "
                "d2dist.engine.DistillationMixin as the first base of its trainer class; a "
                "script that calls checkpointer.resume_or_load(...) itself (LazyConfig's "
                "lazyconfig_train_net.py, a training loop of your own), call "
                "d2dist.checkpoint.resume_or_load(checkpointer, ...) instead, which also initialises "
                "the student; or call distiller.load_teacher() before training."
            )

    def autocast_context(self):
        """The teacher's own precision: its AUTOCAST dtype, else float32 (autocast off), also
        inside the student's mixed-precision region (``SOLVER.AMP``)."""
        device = self.device.type
        if not self.autocast:
            return torch.autocast(device_type=device, enabled=False)
        if self.autocast == "float16" and device == "cpu":  # the entry points refuse it earlier
            raise ConfigError(
                f"the teacher ({self.source}) runs on the CPU with MODEL.DISTILL.TEACHER.AUTOCAST="
                f"'float16' (teacher_from_file / Teacher: autocast='float16'): {FLOAT16_ON_CPU}"
            )
        return torch.autocast(device_type=device, dtype=getattr(torch, self.autocast))

    def images(self, batched_inputs: Sequence[dict], student_format: str) -> ImageList:
        """The student's (augmented) images, given in ``student_format``, in the teacher's channel
        order and normalisation, padded as the teacher's backbone needs."""
        images = [x["image"].to(self.device) for x in batched_inputs]
        if student_format != self.input_format:
            images = [x.flip(0) for x in images]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        backbone = self.model.backbone
        return ImageList.from_tensors(
            images,
            backbone.size_divisibility,
            padding_constraints=backbone.padding_constraints,
        )

    def check_formats(self, student_format: str) -> None:
        """The student's and the teacher's formats must be equal or the RGB/BGR pair."""
        formats = {student_format, self.input_format}
        if student_format != self.input_format and formats != {"RGB", "BGR"}:
            raise ConfigError(
                f"student INPUT.FORMAT={student_format!r} and teacher INPUT.FORMAT="
                f"{self.input_format!r}: d2dist converts only between 'RGB' and 'BGR'."
            )


def build_teacher(cfg: CfgNode) -> Teacher:
    """The :class:`Teacher` described by ``cfg.MODEL.DISTILL.TEACHER``: its structure, on
    ``MODEL.DEVICE``, frozen and in eval mode. Its weights are not read here (call
    :meth:`Teacher.load`), but an empty ``TEACHER.WEIGHTS`` is already an error.

    ``TEACHER.CONFIG_FILE`` is a yacs file (see :func:`load_teacher_config`) or a LazyConfig
    ``.py`` file, whose ``model`` is instantiated; the input format is then read from the built
    model's ``input_format`` and the pixel statistics from its ``pixel_mean`` / ``pixel_std``.
    """
    t = cfg.MODEL.DISTILL.TEACHER
    device = torch.device(cfg.MODEL.DEVICE)
    common = {"weights": t.WEIGHTS, "autocast": t.AUTOCAST, "channels_last": t.CHANNELS_LAST}
    if is_lazy_config(_teacher_config_path(cfg)):
        from detectron2.config import instantiate

        lazy = load_lazy_teacher_config(cfg)
        if t.CONFIG_FUNCTIONS:
            raise ConfigError(
                f"MODEL.DISTILL.TEACHER.CONFIG_FUNCTIONS={list(t.CONFIG_FUNCTIONS)} apply to yacs "
                f"configs; the teacher {t.CONFIG_FILE!r} is a LazyConfig file. Empty the list."
            )
        try:
            model = instantiate(lazy.model)
        except Exception as e:  # a user's config: any exception is possible
            raise ConfigError(
                f"could not build the `model` of the LazyConfig teacher {t.CONFIG_FILE!r}: "
                f"{type(e).__name__}: {e}"
            ) from e
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"the `model` of the LazyConfig teacher {t.CONFIG_FILE!r} built a "
                f"{type(model).__name__}, not a torch.nn.Module."
            )
        model.to(device)
        teacher = Teacher(model, source=f"LazyConfig {t.CONFIG_FILE}", lazy=lazy, **common)
        teacher.config_path = _teacher_config_path(cfg)
        return teacher
    teacher_cfg = load_teacher_config(cfg)
    model = build_meta_arch(
        teacher_cfg, teacher_cfg.MODEL.META_ARCHITECTURE, "teacher MODEL.META_ARCHITECTURE"
    )
    model.to(device)
    teacher = Teacher(
        model,
        input_format=teacher_cfg.INPUT.FORMAT,
        source=f"{teacher_cfg.MODEL.META_ARCHITECTURE} config {t.CONFIG_FILE}",
        cfg=teacher_cfg,
        **common,
    )
    teacher.config_path = _teacher_config_path(cfg)
    return teacher
