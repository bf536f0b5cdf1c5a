"""The target-kind registry, what a distillation term asks for, and what it gets.

A *target kind* is one way of pairing student and teacher tensors for the distillation terms
(FPN features by level name, RoI logits on the student's RoIs, ...). Each kind is a
:class:`TargetKind` subclass registered in :data:`TARGET_KIND_REGISTRY` under its ``name``; a
term asks for kinds with a :class:`TargetRequest` (``TargetRequest(features=("p2", "p3"),
roi=())``: each kind with the options it takes) and receives :class:`Targets`, the paired values
by kind (``targets.features["p2"]``, ``targets.roi``). A kind of a user's own is added by
registering a subclass; nothing in d2dist needs to be edited.

Per training step, for every requested kind (see :class:`~d2dist.modeling.targets.TargetExtractor`):

1. the student's training forward runs inside a :class:`~d2dist.modeling.Recorder` of the
   submodules the kinds name (:meth:`TargetKind.student_outputs` / ``student_inputs``);
2. :meth:`TargetKind.teacher_forward` runs the teacher parts the kind needs, under ``no_grad``
   and the teacher's own precision and memory format, on the very images the student saw (a
   :class:`TeacherRun` computes the teacher's images and backbone features once for all kinds);
3. :meth:`TargetKind.pair` forms the kind's value from the recorded student tensors and the
   teacher's outputs, with gradients enabled (a kind may run frozen teacher modules on student
   tensors there, with gradients into the student: the cross-head kind). A student that runs k
   branches per image and concatenates them along the batch (TridentNet) is paired branch by
   branch with the teacher's tensors of the same images (:func:`pair_batch`);
4. the terms compute their losses on the values. :meth:`TargetKind.leaf` gives the same value
   with its student tensors replaced by detached leaves, so that the benchmark times the terms
   alone for every kind.
"""

import functools
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.structures import ImageList
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ...errors import ConfigError

__all__ = [
    "LogitPair",
    "NamedRegistry",
    "TARGET_KIND_REGISTRY",
    "TargetKind",
    "TargetNotRequested",
    "TargetRequest",
    "Targets",
    "TeacherRun",
    "check_feature_names",
    "check_head_strides",
    "crop_to_common",
    "leaf",
    "num_branches",
    "pair_batch",
    "repeat_batch",
]


class NamedRegistry(Registry):
    """fvcore's ``Registry``, keyed by each registered class's ``name`` attribute (one name: the
    one that configs and requests use) instead of its Python class name."""

    def register(self, obj=None):
        if obj is None:
            return self.register
        name = getattr(obj, "name", "")
        if not name or not isinstance(name, str):
            raise TypeError(
                f"{obj!r} needs a non-empty str `name` to be registered in {self._name}"
            )
        self._do_register(name, obj)
        return obj


TARGET_KIND_REGISTRY = NamedRegistry("DISTILL_TARGET_KIND")
TARGET_KIND_REGISTRY.__doc__ = """
Target kinds, by name (``features``, ``roi``, ``dense``, ``pixel``, ``gt``, ``cross_head``, and any
registered later). A registered class is a :class:`TargetKind` subclass with a ``name``; it is
built as ``cls(student, teacher, options, input_format=...)``: the student meta-architecture, the
:class:`~d2dist.modeling.Teacher`, the union of the options every term asked for (a tuple), and
the student's ``INPUT.FORMAT``. Construction validates everything it can (names, widths, class
counts) and raises :class:`~d2dist.errors.ConfigError` with the fix. See :class:`TargetKind` for
the methods it implements.
"""


class TargetRequest(Mapping):
    """What one term needs: target kinds by name, each with a tuple of options (e.g. level
    names for ``features``; ``()`` for a kind without options). Immutable; ``a | b`` is the
    union (options of one kind merged in order, without repeats)."""

    def __init__(self, **kinds: Sequence):
        self._kinds: Dict[str, Tuple] = {k: tuple(v) for k, v in kinds.items()}

    def __getitem__(self, kind: str) -> Tuple:
        return self._kinds[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def __or__(self, other: "TargetRequest") -> "TargetRequest":
        merged = dict(self._kinds)
        for kind, options in other.items():
            merged[kind] = tuple(dict.fromkeys(merged.get(kind, ()) + tuple(options)))
        return TargetRequest(**merged)

    def __eq__(self, other) -> bool:
        return isinstance(other, TargetRequest) and self._kinds == other._kinds

    def __hash__(self) -> int:
        return hash(tuple(self._kinds.items()))

    def __repr__(self) -> str:
        return f"TargetRequest({', '.join(f'{k}={v!r}' for k, v in self._kinds.items())})"


class TargetNotRequested(LookupError):
    """A term read a target kind it did not request (a bug in the term: its ``request()`` must
    name every kind its ``forward`` reads)."""


class Targets:
    """The paired values of one step, by kind: ``targets["roi"]`` or ``targets.roi``.

    Teacher tensors are detached float32; student tensors carry gradients. ``batched_inputs``
    is the step's input batch. Each term reads the view :meth:`for_term` gives it, which holds
    the kinds that term requested: reading another kind raises :class:`TargetNotRequested`
    naming the term and the kind (not a None that fails later, far from the cause).
    """

    def __init__(
        self,
        values: Optional[Dict[str, Any]] = None,
        batched_inputs: Sequence = (),
        reader: str = "",
    ):
        self.values: Dict[str, Any] = dict(values or {})
        self.batched_inputs = batched_inputs
        self.reader = reader

    def for_term(self, term) -> "Targets":
        """The view of these targets that ``term`` reads: the kinds of its ``request()``."""
        kinds = list(term.request())
        return Targets(
            {k: v for k, v in self.values.items() if k in kinds},
            self.batched_inputs,
            reader=f"term {getattr(term, 'CONFIG_KEY', type(term).__name__)!r}",
        )

    def _missing(self, kind: str) -> TargetNotRequested:
        who = self.reader or "this step's terms"
        return TargetNotRequested(
            f"{who} read the target kind {kind!r}, but its request() names "
            f"{sorted(self.values)}: add {kind!r} to the TargetRequest its request() returns "
            "(the kinds a term reads must be the kinds it requests)."
        )

    def __getitem__(self, kind: str) -> Any:
        if kind not in self.values and kind in TARGET_KIND_REGISTRY:
            raise self._missing(kind)
        return self.values[kind]

    def __contains__(self, kind: str) -> bool:
        return kind in self.values

    def __getattr__(self, kind: str) -> Any:
        if kind.startswith("_") or kind in ("values", "batched_inputs", "reader"):
            raise AttributeError(kind)
        if kind in self.values:
            return self.values[kind]
        if kind in TARGET_KIND_REGISTRY:
            raise self._missing(kind)
        raise AttributeError(
            f"Targets has no kind {kind!r}; registered kinds: {sorted(n for n, _ in TARGET_KIND_REGISTRY)}"
        )


@dataclass
class LogitPair:
    """A student/teacher pair of logits (unpacks as ``s, t = pair``).

    Attributes:
        student, teacher: the logits; the teacher's detached float32.
        teacher_inputs: what the teacher's classification layer received (its input features),
            when a term asked for ``classifier_inputs`` (DIST+ head acclimation); else None.
        labels: for pixel logits with the ``labels`` option: the semantic ground truth sampled at
            the logits' resolution, (N, H, W); else None.
        ignore_value: the label of ignored pixels (pixel logits).
    """

    student: Tensor
    teacher: Tensor
    teacher_inputs: Any = None
    labels: Optional[Tensor] = None
    ignore_value: int = 255

    def __iter__(self):
        return iter((self.student, self.teacher))

    def leaf(self) -> "LogitPair":
        return LogitPair(
            _leaf(self.student), self.teacher, self.teacher_inputs, self.labels, self.ignore_value
        )


def _leaf(x: Tensor) -> Tensor:
    return x.detach().requires_grad_(x.is_floating_point())


def leaf(value: Any) -> Any:
    """``value`` with its student tensors replaced by detached leaves that require grad: the
    default :meth:`TargetKind.leaf` for values made of (student, teacher) tuples,
    :class:`LogitPair` s, and dicts / lists of them."""
    if value is None:
        return None
    if isinstance(value, LogitPair):
        return value.leaf()
    if isinstance(value, dict):
        return {k: leaf(v) for k, v in value.items()}
    if isinstance(value, list):
        return [leaf(v) for v in value]
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Tensor):
        return _leaf(value[0]), value[1]
    raise TypeError(
        f"cannot tell the student tensors of a {type(value).__name__} apart: the kind that made it "
        "must implement TargetKind.leaf()"
    )


def crop_to_common(s: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
    """Crop two maps of one stride to their common top-left region (they differ by padding)."""
    h, w = min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1])
    return s[..., :h, :w], t[..., :h, :w]


def num_branches(
    student_batch: int, teacher_batch: int, what: str, other: str = "the teacher"
) -> int:
    """How many rows the student has per teacher row of a tensor computed on the step's images:
    1 when both have one row per image; k for a student that runs k branches per image and
    concatenates them along the batch, branch-major (``[branch 0's images, branch 1's, ...]``:
    TridentNet in training), whose every branch is paired with the teacher's rows of the same
    images (:func:`repeat_batch`). Any other ratio cannot be paired: a :class:`ConfigError`.

    ``what`` names the tensor in the message (e.g. "feature 'res4'"), ``other`` the side with
    one row per image.
    """
    if student_batch == teacher_batch:
        return 1
    if teacher_batch > 0 and student_batch % teacher_batch == 0:
        return student_batch // teacher_batch
    if teacher_batch > student_batch:
        why = (
            f"Here {other} has more rows than the student: a teacher that runs several branches "
            "per image in eval mode (TridentNet with MODEL.TRIDENT.TEST_BRANCH_IDX -1) cannot be "
            "paired with a student of one row per image; make it run one branch (for TridentNet: "
            "MODEL.DISTILL.TEACHER.OPTS ['MODEL.TRIDENT.TEST_BRANCH_IDX', '1'])."
        )
    else:
        why = (
            "Here it is not a whole multiple: the student's model must keep one row per image, "
            "or k rows per image as k branches concatenated along the batch, branch-major."
        )
    raise ConfigError(
        f"{what}: a batch of {student_batch} in the student and of {teacher_batch} in {other}, "
        "on the same images. A student that runs k branches per image (TridentNet: [branch 0's "
        "images, branch 1's, ...]) is paired branch by branch with the teacher's tensors of the "
        f"same images, which needs k times the batch of {other}. " + why
    )


def repeat_batch(value, k: int):
    """``value`` repeated ``k`` times along its batch, branch-major (``[x, x, ...]``): a tensor's
    first dimension, or a list's items (per-image boxes, image sizes)."""
    if k == 1:
        return value
    if isinstance(value, Tensor):
        return value.repeat(k, *([1] * (value.dim() - 1)))
    return list(value) * k


def pair_batch(student: Tensor, teacher: Tensor, what: str) -> Tensor:
    """The teacher's tensor with the student's rows: itself, or repeated once per student branch
    (see :func:`num_branches`)."""
    return repeat_batch(teacher, num_branches(student.shape[0], teacher.shape[0], what))


def check_head_strides(student: nn.Module, teacher: nn.Module, what: str, why: str) -> None:
    """The dense heads of ``student`` and ``teacher`` run on levels of the same strides, else a
    :class:`ConfigError` naming both (``what``: the target kind; ``why``: what needs them equal)."""
    s_shapes, t_shapes = student.backbone.output_shape(), teacher.backbone.output_shape()
    s_strides = [s_shapes[f].stride for f in student.head_in_features]
    t_strides = [t_shapes[f].stride for f in teacher.head_in_features]
    if s_strides != t_strides:
        raise ConfigError(
            f"{what}: student head levels {list(student.head_in_features)} (strides "
            f"{s_strides}) and teacher head levels {list(teacher.head_in_features)} (strides "
            f"{t_strides}) differ; {why}."
        )


def check_feature_names(names: Sequence[str], student: nn.Module, teacher: nn.Module, where: str):
    """Both backbones' ``output_shape()``, after checking that each of ``names`` is in both.

    ``where`` names the config key in the error message.
    """
    s_shapes, t_shapes = student.backbone.output_shape(), teacher.backbone.output_shape()
    for name in names:
        for who, shapes in (("student", s_shapes), ("teacher", t_shapes)):
            if name not in shapes:
                raise ConfigError(
                    f"{where} names {name!r}, which the {who}'s backbone does not produce; it "
                    f"has {sorted(shapes)}."
                )
    return s_shapes, t_shapes


class TeacherRun:
    """One step of the teacher, shared by the kinds: the student's images in the teacher's
    format, normalisation and memory format, and the teacher's backbone features on them, each
    computed once, when a kind first asks (inside the extractor's ``no_grad`` and the teacher's
    autocast)."""

    def __init__(self, teacher, batched_inputs: Sequence[dict], input_format: str):
        self.teacher = teacher
        self.model = teacher.model
        self.batched_inputs = batched_inputs
        self.input_format = input_format

    @functools.cached_property
    def images(self) -> ImageList:
        images = self.teacher.images(self.batched_inputs, self.input_format)
        if self.teacher.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    @functools.cached_property
    def features(self) -> Dict[str, Tensor]:
        return self.model.backbone(self.images.tensor)


class TargetKind:
    """One kind of paired targets; subclass, set ``name``, register in
    :data:`TARGET_KIND_REGISTRY`.

    Args:
        student: the student meta-architecture (the module the recorder hooks).
        teacher: the :class:`~d2dist.modeling.Teacher` (``teacher.model`` is the network).
        options: the union of the options the terms asked for, in order.
        input_format: the student's ``INPUT.FORMAT``.

    Subclasses validate in ``__init__`` (raising :class:`~d2dist.errors.ConfigError`) and
    implement :meth:`pair`, and as needed :meth:`student_outputs`, :meth:`student_inputs`,
    :meth:`teacher_forward` and :meth:`leaf`.
    """

    name: str = ""

    def __init__(self, student: nn.Module, teacher, options: Tuple, *, input_format: str):
        self.student, self.teacher, self.options = student, teacher, tuple(options)
        self.input_format = input_format

    @property
    def teacher_model(self) -> nn.Module:
        return self.teacher.model

    def student_outputs(self) -> List[str]:
        """``named_modules()`` paths of the student whose outputs must be recorded."""
        return []

    def student_inputs(self) -> List[str]:
        """Paths whose positional inputs must be recorded."""
        return []

    def teacher_forward(self, run: TeacherRun, student_rec) -> Any:
        """The teacher's part of the kind, under ``no_grad`` and the teacher's precision (its
        images and backbone features come from ``run``). Default: nothing."""
        return None

    def pair(self, batched_inputs: Sequence[dict], student_rec, teacher_out: Any) -> Any:
        """The kind's value from the recorded student tensors and :meth:`teacher_forward`'s
        output (gradients enabled)."""
        raise NotImplementedError

    def leaf(self, value: Any) -> Any:
        """``value`` with its student tensors as detached leaves (for the benchmark)."""
        return leaf(value)
