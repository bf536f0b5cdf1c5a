"""Consistent mixup (function matching, Beyer et al., CVPR 2022): a training image mixed with
another of its batch, which the teacher and the student then both see (``MODEL.DISTILL.MIXUP``).

The Distiller mixes the step's images before anything runs, so the teacher labels and is
distilled on exactly the mixed view. Each image is mixed, with probability ``PROB``, with another
image of the same batch (a random pairing): ``lam * image_a + (1 - lam) * image_b``, ``lam`` drawn
from Beta(``ALPHA``, ``ALPHA``), both placed at the top-left corner of a canvas of their largest
height and width (zeros elsewhere). Its labels:

- two labelled detection images: the union of their instances (boxes, classes, masks), at full
  weight, as detection mixup does;
- an unlabelled image in the pair, or a semantic-segmentation image (mixing per-pixel labels has
  no single answer): no labels, so the teacher labels the mixed image
  (``MODEL.DISTILL.TEACHER_LABELS``).

A mixed image's dict names its partner (``mixed_with``: the partner's ``file_name``) and ``lam``.
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.structures import BitMasks, Instances, PolygonMasks

from ..config import register_distill_namespaces
from ..errors import ConfigError

__all__ = ["Mixup", "mixup_namespace"]


def mixup_namespace() -> CN:
    """``MODEL.DISTILL.MIXUP``: a fresh node of its keys with their defaults."""
    n = CN()
    # The probability that a training image is mixed with another of its batch (0: off).
    n.PROB = 0.0
    # The mixing weight of the image is drawn from Beta(ALPHA, ALPHA) (1.0: uniform in [0, 1]).
    n.ALPHA = 1.0
    return n


register_distill_namespaces(lambda: {"MIXUP": mixup_namespace()})


class Mixup:
    """Mixes the images of a training batch (see the module's docstring).

    Args:
        prob: the probability that an image is mixed, in [0, 1].
        alpha: the Beta distribution's parameter (> 0).
    """

    def __init__(self, *, prob: float = 0.0, alpha: float = 1.0):
        if not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
            raise ConfigError(f"MODEL.DISTILL.MIXUP.PROB={prob!r}: expected a number in [0, 1]")
        if not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ConfigError(f"MODEL.DISTILL.MIXUP.ALPHA={alpha!r}: expected a number > 0")
        self.prob, self.alpha = float(prob), float(alpha)

    @classmethod
    def from_config(cls, cfg) -> "Mixup":
        n = cfg.MODEL.DISTILL.MIXUP
        return cls(prob=n.PROB, alpha=n.ALPHA)

    def __repr__(self) -> str:
        return f"Mixup(prob={self.prob}, alpha={self.alpha})"

    @property
    def enabled(self) -> bool:
        return self.prob > 0.0

    def __call__(self, batched_inputs: Sequence[dict]) -> List[dict]:
        """The batch with its images mixed (new dicts; the inputs are not changed). Uses PyTorch's
        global generator (seeded by Detectron2's ``SEED``)."""
        n = len(batched_inputs)
        out = list(batched_inputs)
        if n < 2 or not self.enabled:
            return out
        order = torch.randperm(n).tolist()
        partner = {order[k]: order[(k + 1) % n] for k in range(n)}  # never an image with itself
        chosen = (torch.rand(n) < self.prob).tolist()
        lams = torch.distributions.Beta(self.alpha, self.alpha).sample((n,)).tolist()
        for i in range(n):
            if chosen[i]:
                out[i] = mix(batched_inputs[i], batched_inputs[partner[i]], lams[i])
        return out


def _pad(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.pad(image, (0, w - image.shape[-1], 0, h - image.shape[-2]))


def _instances_on(instances: Instances, h: int, w: int) -> Instances:
    """``instances`` on a larger ``h`` x ``w`` canvas (same coordinates; bit masks padded)."""
    fields = dict(instances.get_fields())
    masks = fields.get("gt_masks")
    if isinstance(masks, BitMasks):
        fields["gt_masks"] = BitMasks(_pad(masks.tensor, h, w))
    return Instances((h, w), **fields)


def mix(a: dict, b: dict, lam: float) -> dict:
    """The mixed training dict of ``a`` (weight ``lam``) and ``b`` (see the module docstring)."""
    ia, ib = a["image"], b["image"]
    h, w = max(ia.shape[-2], ib.shape[-2]), max(ia.shape[-1], ib.shape[-1])
    image = lam * _pad(ia.float(), h, w) + (1.0 - lam) * _pad(ib.float(), h, w)
    out = {k: v for k, v in a.items() if k not in ("instances", "sem_seg")}
    out.update(image=image, height=h, width=w, mixed_with=b.get("file_name"), lam=lam)
    if "instances" in a and "instances" in b and "sem_seg" not in a and "sem_seg" not in b:
        ka, kb = a["instances"], b["instances"]
        if set(ka.get_fields()) != set(kb.get_fields()):
            raise ConfigError(
                f"mixup of {a.get('file_name')} and {b.get('file_name')}: their instances have "
                f"different fields ({sorted(ka.get_fields())} vs {sorted(kb.get_fields())}); "
                "the images of one training run need the same kinds of annotations."
            )
        ma, mb = ka.get("gt_masks") if ka.has("gt_masks") else None, (
            kb.get("gt_masks") if kb.has("gt_masks") else None
        )
        if type(ma) is not type(mb):  # polygons and bit masks: both as bit masks
            ka, kb = _as_bitmasks(ka), _as_bitmasks(kb)
        out["instances"] = Instances.cat([_instances_on(ka, h, w), _instances_on(kb, h, w)])
    return out


def _as_bitmasks(instances: Instances) -> Instances:
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):
        h, w = instances.image_size
        instances = Instances(instances.image_size, **instances.get_fields())
        instances.gt_masks = BitMasks.from_polygon_masks(masks, h, w)
    return instances
