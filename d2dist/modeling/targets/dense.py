"""Dense-head classification logits (``dense``): RetinaNet, FCOS heads, per level. What a
network must have for it is checked in :mod:`.logits`.
"""

from typing import Dict, List

from ...errors import ConfigError
from ..recorder import Recorder
from .base import (
    TARGET_KIND_REGISTRY,
    LogitPair,
    check_head_strides,
    crop_to_common,
    num_branches,
    repeat_batch,
)
from .logits import _LogitTargets

__all__ = ["DenseLogits"]


@TARGET_KIND_REGISTRY.register()
class DenseLogits(_LogitTargets):
    """Per-level classification logits of a dense head (RetinaNet, FCOS), (N, A*K, H, W):
    ``{level: LogitPair}`` by the student's head level names (levels paired by stride; a student
    with k branches per image is paired with the teacher's logits repeated k times)."""

    name = "dense"

    def __init__(self, student, teacher, options, *, input_format):
        super().__init__(student, teacher, options, input_format=input_format)
        s, t = student, teacher.model
        check_head_strides(s, t, "dense logits", "dense distillation pairs levels of equal stride")
        ns, nt = s.head.cls_score.out_channels, t.head.cls_score.out_channels
        if ns != nt:
            raise ConfigError(
                f"dense logits: the student's head has {ns} = anchors x classes channels per "
                f"location, the teacher's {nt}; they need the same anchors per location "
                "(ANCHOR_GENERATOR) and classes."
            )

    def student_outputs(self) -> List[str]:
        return ["head"]

    def teacher_forward(self, run, student_rec):
        t = self.teacher_model
        feats = [run.features[f] for f in t.head_in_features]
        if not self.classifier_inputs:
            return {"logits": t.head(feats)[0]}
        with Recorder(t, inputs=["head.cls_score"]) as rec:
            logits = t.head(feats)[0]
        return {"logits": logits, "inputs": [x[0] for x in rec.all_inputs("head.cls_score")]}

    def pair(self, batched_inputs, student_rec, teacher_out) -> Dict[str, LogitPair]:
        s_levels = student_rec.output("head")[0]
        inputs = teacher_out.get("inputs") or [None] * len(s_levels)
        out = {}
        for name, s, t, x in zip(self.student.head_in_features, s_levels, teacher_out["logits"],
                                 inputs):  # fmt: skip
            k = num_branches(s.shape[0], t.shape[0], f"dense logits {name!r}")
            s, t = crop_to_common(s, repeat_batch(t.float().contiguous(), k))
            # the classifier's whole input map (a 3x3 conv reads across the crop's border)
            x = None if x is None else repeat_batch(x.float(), k)
            out[name] = LogitPair(s, t, teacher_inputs=x)
        return out
