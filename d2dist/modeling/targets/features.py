"""``features``: backbone outputs by name (``p2``... of FPNs, ``res5``... of ResNets)."""

from typing import Dict, List, Tuple

from torch import Tensor

from .base import (
    TARGET_KIND_REGISTRY,
    TargetKind,
    check_feature_names,
    crop_to_common,
    pair_batch,
)

__all__ = ["FeatureTargets"]


@TARGET_KIND_REGISTRY.register()
class FeatureTargets(TargetKind):
    """Backbone features by name: ``{name: (student, teacher)}``, each pair cropped to the
    common top-left region (the two networks may pad the images differently). A student level
    with k branches per image (TridentNet) is paired with the teacher's level repeated k times.

    Options: the feature names, each produced by both backbones (checked at build).
    """

    name = "features"

    def __init__(self, student, teacher, options, *, input_format):
        super().__init__(student, teacher, options, input_format=input_format)
        check_feature_names(self.options, student, teacher.model, "a term's IN_FEATURES")

    def student_outputs(self) -> List[str]:
        return ["backbone"]

    def teacher_forward(self, run, student_rec) -> Dict[str, Tensor]:
        return {name: run.features[name] for name in self.options}

    def pair(self, batched_inputs, student_rec, teacher_out) -> Dict[str, Tuple[Tensor, Tensor]]:
        s_feats = student_rec.output("backbone")
        out = {}
        for name in self.options:
            s = s_feats[name]
            t = pair_batch(s, teacher_out[name].float().contiguous(), f"feature {name!r}")
            out[name] = crop_to_common(s, t)
        return out
