"""The ``Distiller`` meta-architecture: a student, a frozen teacher and distillation terms."""

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.layers import ASPP
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage
from torch import nn

from ...errors import ConfigError
from ..lazy import TermSpec
from ..mixup import Mixup
from ..targets import TargetExtractor, TargetRequest
from ..teacher import Teacher, build_teacher
from ..teacher_config import build_meta_arch
from ..teacher_labels import TeacherLabels
from ..terms import DistillTerm, build_distill_terms
from .state import STUDENT, TERMS, into_student, report_top_level_names, student_at_top_level

__all__ = ["Distiller"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class Distiller(nn.Module):
    """Train an unmodified Detectron2 student with a frozen teacher and distillation terms.

    In eval mode it is exactly the student. In training, the student runs its own forward
    (inside a recorder), the teacher runs the parts the terms need on the same images, and the
    loss dict is the student's losses (times ``student_loss_weight``) plus one
    ``loss_distill_<name>`` per term (times its weight and the schedule's factor).

    The teacher is deliberately *not* a registered submodule: it is absent from
    ``state_dict()`` (run checkpoints hold the student and the terms' adapters only; resuming
    rebuilds the teacher from its source), from ``parameters()`` (never in the optimizer or in
    DDP) and from ``train()`` (it stays in eval mode). ``.to()`` and friends still move it.
    ``teacher`` is the teacher model; ``teacher_wrapper`` the :class:`Teacher` that runs it.

    **Its state is a student's state plus the terms'.** ``state_dict()`` holds the student's
    entries under their own names (``backbone.…``, ``roi_heads.…``: exactly the keys of the
    student model alone) and the terms' trainable modules under ``terms.``. So whichever
    checkpointer loads it (Detectron2's, fvcore's, ``train.init_checkpoint``, a project's own):

    - a plain model given a Distiller checkpoint loads its student's weights (the ``terms.``
      entries are reported as unused);
    - a Distiller given a plain student checkpoint (or an exported student) loads it into its
      student (its terms' entries are reported as missing: they start from their init).

    Checkpoints of d2dist before 0.2 held the student under ``student.``; they load too.

    Building reads no weights (Detectron2's ``build_model`` contract): the teacher's are loaded by
    :meth:`load_teacher`, which d2dist's trainers call in ``resume_or_load``; training with a
    teacher that was never loaded is an error.
    """

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: Teacher,
        terms: List[Union[DistillTerm, TermSpec]],
        input_format: Optional[str] = None,
        student_loss_weight: float = 1.0,
        warmup_iters: int = 0,
        stop_iter: int = -1,
        inherit: Sequence[str] = (),
        teacher_labels: Optional[TeacherLabels] = None,
        mixup: Optional[Mixup] = None,
    ):
        """
        Args:
            student: the Detectron2 meta-architecture being trained.
            teacher: the :class:`Teacher` (its model is frozen and kept in eval mode).
            terms: the distillation terms, or :class:`~d2dist.modeling.TermSpec` s built here
                for this student and teacher (LazyConfig configs).
            input_format: the student's ``INPUT.FORMAT`` (the channel order of the images it
                is given); default: the student's ``input_format`` attribute.
            student_loss_weight: factor of the student's own losses.
            warmup_iters: the terms' weights rise linearly from 0 over this many iterations.
            stop_iter: from this iteration on the terms are off (-1: never).
            inherit: prefixes of student parameter names (e.g. ``["backbone.fpn_", "head"]``)
                that a new run initialises from the teacher's parameters of the same name and
                shape (:meth:`inherit_from_teacher`; "inheriting", as the one-stage COCO
                configs of MGD, FGD and CrossKD do). Checked here: each prefix names student
                parameters, and some of them can be copied.
        """
        super().__init__()
        if not terms:
            raise ConfigError(
                "MODEL.DISTILL.LOSSES is empty: name at least one distillation term, e.g. "
                "['MIMIC'] (a Distiller without terms would be the student alone, plus a teacher "
                "forward for nothing; train the student config directly instead)."
            )
        if warmup_iters < 0:
            raise ConfigError(f"MODEL.DISTILL.WEIGHT_SCHEDULE.WARMUP_ITERS={warmup_iters} < 0")
        if stop_iter < -1 or 0 <= stop_iter <= warmup_iters:
            raise ConfigError(
                f"MODEL.DISTILL.WEIGHT_SCHEDULE.STOP_ITER={stop_iter} with WARMUP_ITERS="
                f"{warmup_iters}: the terms would never act at full weight. STOP_ITER is -1 (never "
                "stop) or an iteration after the warm-up."
            )
        if not (math.isfinite(student_loss_weight) and student_loss_weight >= 0):
            raise ConfigError(
                f"MODEL.DISTILL.STUDENT_LOSS_WEIGHT={student_loss_weight}: must be a finite number "
                ">= 0 (a negative weight would make the student maximise its own loss; 0 trains "
                "on the distillation terms alone)."
            )
        if not isinstance(teacher, Teacher):
            raise TypeError(
                f"Distiller(teacher=...) takes a d2dist.modeling.Teacher, got {type(teacher)}: "
                "wrap the model, e.g. Teacher(model, weights='teacher.pth')."
            )
        if input_format is None:
            input_format = getattr(student, "input_format", None)
            if input_format is None:
                raise ConfigError(
                    f"Distiller(input_format=...) is needed: the student "
                    f"({type(student).__name__}) has no input_format attribute. Give the channel "
                    "order of the images its data loader produces, 'BGR' or 'RGB'."
                )
        terms = [t.build(student, teacher.model) if isinstance(t, TermSpec) else t for t in terms]
        for name in (STUDENT, TERMS):
            if hasattr(student, name):
                raise ConfigError(
                    f"the student ({type(student).__name__}) has an attribute {name!r}, which "
                    "the Distiller's checkpoint layout reserves (its state holds the student's "
                    f"entries at the top level and the terms' under {TERMS!r}); rename it."
                )
        self.student = student
        self.__dict__["teacher_wrapper"] = teacher  # not a submodule: see the class docstring
        self.terms = nn.ModuleList(terms)
        assert [n for n, _ in self.named_children()] == [STUDENT, TERMS]  # the layout's own
        self.register_state_dict_post_hook(student_at_top_level)
        self.register_load_state_dict_pre_hook(into_student)
        self.register_load_state_dict_post_hook(report_top_level_names)
        self.input_format = input_format
        self.student_loss_weight = float(student_loss_weight)
        self.warmup_iters, self.stop_iter = int(warmup_iters), int(stop_iter)
        request = TargetRequest()
        for term in terms:
            request = request | term.request()
        self.extractor = TargetExtractor(student, teacher, request, input_format=input_format)
        self.inherit = tuple(inherit)
        self._inherited_keys()  # checks the prefixes now, before any training
        self.teacher_labels = teacher_labels if teacher_labels is not None else TeacherLabels()
        self.mixup = mixup if mixup is not None else Mixup()
        for name, value, kind in (("teacher_labels", self.teacher_labels, TeacherLabels),
                                  ("mixup", self.mixup, Mixup)):  # fmt: skip
            if not isinstance(value, kind):
                raise TypeError(
                    f"Distiller({name}=...) takes a d2dist.modeling.{kind.__name__}, got "
                    f"{type(value).__name__}"
                )
        if self.teacher_labels.images == "all":
            self.teacher_labels.check(student, teacher.model)  # every image: check it now

    def _inherited_keys(self) -> Tuple[List[str], List[str]]:
        """The student state keys under :attr:`inherit` that the teacher has with the same shape
        (copied by :meth:`inherit_from_teacher`), and those it has not (left as they are)."""
        if not self.inherit:
            return [], []
        student = self.student.state_dict()
        teacher = self.teacher.state_dict()
        copy, skip = [], []
        for prefix in self.inherit:
            keys = [k for k in student if k.startswith(prefix)]
            if not keys:
                near = sorted({k.split(".")[0] + "." for k in student})
                raise ConfigError(
                    f"MODEL.DISTILL.INHERIT names {prefix!r}, which starts no parameter name of "
                    f"the student; its names start with {near} (e.g. "
                    f"{next(iter(student))!r})."
                )
            for k in keys:
                same = k in teacher and teacher[k].shape == student[k].shape
                (copy if same else skip).append(k)
        if not copy:
            raise ConfigError(
                f"MODEL.DISTILL.INHERIT={list(self.inherit)}: no student parameter under these "
                f"prefixes has a teacher parameter of the same name and shape (e.g. {skip[:3]}); "
                "inheriting needs modules of equal structure and width (e.g. the same FPN width "
                "and head convs)."
            )
        return copy, skip

    @torch.no_grad()
    def inherit_from_teacher(self) -> List[str]:
        """Copy the teacher's parameters and buffers into the student under :attr:`inherit`,
        where name and shape match (the start of a new run; the teacher must be loaded).
        Returns the copied keys; the ones left alone are logged."""
        copy, skip = self._inherited_keys()
        if not copy:
            return []
        self.teacher_wrapper.check_loaded()
        student, teacher = self.student.state_dict(), self.teacher.state_dict()
        for k in copy:
            student[k].copy_(teacher[k])
        logger.info(
            f"MODEL.DISTILL.INHERIT {list(self.inherit)}: {len(copy)} student tensors initialised "
            f"from the teacher"
            + (
                f"; left as they were (no teacher tensor of that name and shape): {skip}"
                if skip
                else ""
            )
        )
        return copy

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DISTILL
        student = build_meta_arch(
            cfg, d.STUDENT_META_ARCHITECTURE, "MODEL.DISTILL.STUDENT_META_ARCHITECTURE"
        )
        student.to(torch.device(cfg.MODEL.DEVICE))
        teacher = build_teacher(cfg)  # its structure: the weights are loaded by load_teacher()
        terms = build_distill_terms(cfg, student, teacher.model)
        if d.ACCLIMATION.ENABLED and not any(
            getattr(term, "acclimation", None) is not None for term in terms
        ):
            users = "DIST" if d.ACCLIMATION.MODE == "head" else "DIST and DIST_FEATURE"
            raise ConfigError(
                f"MODEL.DISTILL.ACCLIMATION.ENABLED is True, but no term of LOSSES="
                f"{list(d.LOSSES)} uses it (MODE {d.ACCLIMATION.MODE!r} acclimates {users}): "
                "add such a term, or set ACCLIMATION.ENABLED False."
            )
        if any("pixel" in term.request() for term in terms):
            _check_teacher_pooling(cfg, teacher.cfg, teacher.model)
        return {
            "student": student,
            "teacher": teacher,
            "terms": terms,
            "input_format": cfg.INPUT.FORMAT,
            "student_loss_weight": d.STUDENT_LOSS_WEIGHT,
            "warmup_iters": d.WEIGHT_SCHEDULE.WARMUP_ITERS,
            "stop_iter": d.WEIGHT_SCHEDULE.STOP_ITER,
            "inherit": list(d.INHERIT),
            "teacher_labels": TeacherLabels.from_config(cfg),
            "mixup": Mixup.from_config(cfg),
        }

    @property
    def teacher(self) -> nn.Module:
        """The teacher model (frozen, in eval mode, not a submodule)."""
        return self.teacher_wrapper.model

    def load_teacher(self) -> "Distiller":
        """Load the teacher's weights from its source, strictly, once (see :class:`Teacher`)."""
        self.teacher_wrapper.load()
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return self.student.device

    @property
    def needs_find_unused_parameters(self) -> bool:
        """Whether some steps leave trainable parameters unused: from the schedule's STOP_ITER
        on (the terms do not run), or a term that says so (acclimation off or frozen). DDP is
        then built with ``find_unused_parameters=True`` (:func:`d2dist.engine.create_ddp_model`);
        otherwise every parameter takes part in every step and DDP skips that search."""
        return self.stop_iter >= 0 or any(term.skips_parameters() for term in self.terms)

    def schedule_factor(self, iteration: int) -> float:
        """The factor of every term's weight at ``iteration``."""
        if self.stop_iter >= 0 and iteration >= self.stop_iter:
            return 0.0
        if self.warmup_iters > 0:
            return min(1.0, (iteration + 1) / self.warmup_iters)
        return 1.0

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        self._check_images(batched_inputs)
        if not self.training:
            return self.student(batched_inputs)
        self.teacher_wrapper.check_loaded()
        if self.teacher.training:  # someone called teacher.train() explicitly
            self.teacher.eval()
        storage = get_event_storage()
        factor = self.schedule_factor(storage.iter)
        if self.mixup.enabled:  # before anything runs: teacher and student see the mixed view
            batched_inputs = self.mixup(batched_inputs)
        run = self.extractor.teacher_run(batched_inputs)  # the teacher's images and features
        batched_inputs = self.teacher_labels.label(
            self.student, self.teacher_wrapper, batched_inputs, run
        )
        if factor == 0.0:
            losses = self._student_losses(self.student(batched_inputs))
            zero = next(iter(losses.values())).new_zeros(())
            return {**losses, **{term.loss_key: zero for term in self.terms}}

        with self.extractor.student_recorder() as recorder:
            student_losses = self.student(batched_inputs)
        losses = self._student_losses(student_losses)
        targets = self.extractor.extract(batched_inputs, recorder, run)
        scalars, totals = {}, {}
        for term in self.terms:
            out = term(targets.for_term(term))
            scale = term.weight * factor
            losses[term.loss_key] = out.loss * scale
            totals[term.loss_key] = out.loss
            for suffix, extra_value in out.extra.items():
                losses[f"{term.loss_key}_{suffix}"] = extra_value * scale
                totals[f"{term.loss_key}_{suffix}"] = extra_value
            name = term.CONFIG_KEY.lower()
            scalars.update({f"distill/{name}/{k}": v for k, v in out.parts.items()})
        # One device-to-host copy for every level of every term (not one per value), which also
        # serves the finiteness check.
        checked = {**scalars, **totals}
        values = dict(
            zip(checked, torch.stack([v.detach().float() for v in checked.values()]).tolist())
        )
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(
                f"non-finite distillation loss at iteration {storage.iter}: "
                + ", ".join(f"{k} = {v}" for k, v in bad.items())
                + " (distill/<term>/<level> are the unweighted per-level values). Lower that "
                "term's WEIGHT or SOLVER.BASE_LR, warm it up (MODEL.DISTILL.WEIGHT_SCHEDULE."
                "WARMUP_ITERS), or check the teacher (tools/train_net.py --eval-teacher)."
            )
        if scalars:
            storage.put_scalars(**{k: values[k] for k in scalars}, smoothing_hint=True)
        if self.warmup_iters > 0 or self.stop_iter >= 0:
            storage.put_scalar("distill/weight_factor", factor, smoothing_hint=False)
        return losses

    def _check_images(self, batched_inputs) -> None:
        """Images must have the channels the student normalises (a grey or RGBA image would be
        broadcast against, or crash on, its per-channel pixel mean deep inside Detectron2)."""
        channels = self.student.pixel_mean.numel()
        for x in batched_inputs:
            image = x["image"]
            if image.dim() != 3 or image.shape[0] != channels:
                raise ConfigError(
                    f"an input image ({x.get('file_name', 'no file_name')}) has shape "
                    f"{tuple(image.shape)}, but the student expects ({channels}, H, W): "
                    f"INPUT.FORMAT={self.input_format!r} and MODEL.PIXEL_MEAN has "
                    f"{channels} values. Load the images in that format (Detectron2's "
                    "DatasetMapper does, with INPUT.FORMAT), or convert them in your mapper."
                )

    def _student_losses(self, losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if self.student_loss_weight == 1.0:
            return dict(losses)
        return {k: v * self.student_loss_weight for k, v in losses.items()}


def _check_teacher_pooling(cfg, teacher_cfg, teacher: nn.Module) -> None:
    """A DeepLab teacher's ASPP pools image features with a kernel fixed by its own training crop
    (``INPUT.CROP.SIZE``); it runs on the student's training images, so they must be those crops.
    Checked here, before training, for a yacs teacher (its INPUT.CROP against the student's); for
    every teacher, the ``pixel`` target kind checks the kernel against each step's images. Only
    the semantic head runs for pixel logits, so only its ASPPs count (a Panoptic-DeepLab
    teacher's instance head does not run).
    """
    head = getattr(teacher, "sem_seg_head", None)
    if head is None or not any(isinstance(m, ASPP) and m.pool_kernel_size for m in head.modules()):
        return
    if teacher_cfg is None:  # a LazyConfig teacher: no INPUT.CROP to compare here; the pixel
        return  # target kind checks the pooling kernel on every step's images instead
    t_crop, s_crop = teacher_cfg.INPUT.CROP, cfg.INPUT.CROP
    if s_crop.ENABLED and s_crop.TYPE == "absolute" and tuple(s_crop.SIZE) == tuple(t_crop.SIZE):
        return
    student = f"crops of {tuple(s_crop.SIZE)}" if s_crop.ENABLED else "uncropped images"
    raise ConfigError(
        f"the teacher's DeepLab head pools with a kernel made for its training crop "
        f"INPUT.CROP.SIZE={tuple(t_crop.SIZE)} (teacher config), but the student trains on "
        f"{student} (INPUT.CROP), and the teacher runs on the student's images. Train the "
        f"student on the same crops (INPUT.CROP.ENABLED True, TYPE absolute, SIZE "
        f"{tuple(t_crop.SIZE)}), or give the teacher global pooling, with the same weights: "
        "MODEL.DISTILL.TEACHER.OPTS ['INPUT.CROP.ENABLED', 'False']."
    )
