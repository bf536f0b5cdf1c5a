"""The target extractor: runs the requested kinds for one step and pairs their tensors."""

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ..recorder import Recorder
from .base import TARGET_KIND_REGISTRY, TargetKind, TargetRequest, Targets, TeacherRun

__all__ = ["TargetExtractor"]


class TargetExtractor:
    """Turns a student forward pass and the teacher into :class:`Targets` for a request.

    Every requested kind is built (and so validated) at construction, from
    :data:`~d2dist.modeling.targets.TARGET_KIND_REGISTRY`.

    Args:
        student: the student meta-architecture.
        teacher: the :class:`~d2dist.modeling.Teacher` (how it runs: input format, pixel
            statistics, autocast, memory format).
        request: the union of the terms' requests.
        input_format: the student's ``INPUT.FORMAT`` (the format of the step's images).
    """

    def __init__(self, student: nn.Module, teacher, request: TargetRequest, *, input_format: str):
        teacher.check_formats(input_format)
        self.teacher = teacher
        self.input_format = input_format
        self.student, self.request = student, request
        registered = sorted(n for n, _ in TARGET_KIND_REGISTRY)
        self.kinds: Dict[str, TargetKind] = {}
        for name, options in request.items():
            if name not in TARGET_KIND_REGISTRY:
                raise ConfigError(
                    f"target kind {name!r} is not registered; registered kinds: {registered}"
                )
            kind = TARGET_KIND_REGISTRY.get(name)(
                student, teacher, options, input_format=input_format
            )
            assert isinstance(kind, TargetKind), f"kind {name} built a {type(kind)}"
            self.kinds[name] = kind
        outputs: List[str] = []
        inputs: List[str] = []
        for kind in self.kinds.values():
            outputs += kind.student_outputs()
            inputs += kind.student_inputs()
        self._outputs, self._inputs = outputs, inputs

    def student_recorder(self) -> Recorder:
        """A recorder of the student sources this request needs (use as a context manager)."""
        return Recorder(self.student, outputs=self._outputs, inputs=self._inputs)

    def teacher_run(self, batched_inputs: Sequence[dict]) -> TeacherRun:
        """The step's :class:`TeacherRun` (its images and backbone features, computed once), to
        share with the teacher's labels (:class:`~d2dist.modeling.teacher_labels.TeacherLabels`)."""
        return TeacherRun(self.teacher, batched_inputs, self.input_format)

    @torch.no_grad()
    def teacher_forward(
        self,
        batched_inputs: Sequence[dict],
        student_rec: Recorder,
        run: Optional[TeacherRun] = None,
    ) -> dict:
        """The teacher parts the request needs, on the step's images (and the student's RoIs),
        under the teacher's own precision: each kind's raw output, for :meth:`pair`. ``run``: the
        step's teacher run when it was started already (its features are reused)."""
        run = run if run is not None else self.teacher_run(batched_inputs)
        with self.teacher.autocast_context():
            return {
                name: kind.teacher_forward(run, student_rec) for name, kind in self.kinds.items()
            }

    def pair(self, batched_inputs: Sequence[dict], student_rec: Recorder, t_out: dict) -> Targets:
        """Pair the recorded student tensors with :meth:`teacher_forward`'s outputs."""
        values = {
            name: kind.pair(batched_inputs, student_rec, t_out[name])
            for name, kind in self.kinds.items()
        }
        return Targets(values, batched_inputs=batched_inputs)

    def extract(
        self,
        batched_inputs: Sequence[dict],
        student_rec: Recorder,
        run: Optional[TeacherRun] = None,
    ) -> Targets:
        """Run the teacher parts and pair its tensors with the recorded student tensors (``run``:
        see :meth:`teacher_forward`)."""
        return self.pair(
            batched_inputs, student_rec, self.teacher_forward(batched_inputs, student_rec, run)
        )

    def leaf(self, targets: Targets) -> Targets:
        """``targets`` with every student tensor replaced by a detached leaf that requires
        grad (each kind's :meth:`~TargetKind.leaf`), to time the terms alone."""
        values: Dict[str, Any] = {
            name: self.kinds[name].leaf(value) for name, value in targets.values.items()
        }
        return Targets(values, batched_inputs=targets.batched_inputs)
