"""Loss scale of a Distiller config: how large each distillation term is next to the student's
own losses over the first training iterations of a recipe.

A term's weight only means something relative to the size of its unweighted value, and for the
terms that are sums over channels and positions (MGD, FGD) that size depends on the teacher's
feature magnitude and the image area, which differ between the authors' code bases and
Detectron2. :func:`measure_loss_scale` runs the recipe's first iterations exactly as the trainer
does (its optimizer, gradient clipping, LR warm-up and loss-weight schedule; teacher and student
initialised as a run initialises them, or random weights with calibrated norm statistics) and
records, per iteration, every student loss, every term's unweighted value (its module's output),
its weighted value (what the Distiller adds to the loss) and its per-level parts.
``tools/loss_scale.py`` prints them; docs/recipes.md lists what it shows for the shipped recipes.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List

from detectron2.utils.events import EventStorage

from ..errors import ConfigError
from .benchmark import is_lazy_config, prepare_distiller
from .trainer import Trainer

__all__ = ["LossScale", "measure_loss_scale"]

logger = logging.getLogger(__name__)


def _mean(values: List[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@dataclass
class LossScale:
    """Per-iteration values of a recipe's first iterations (see the module docstring).

    ``student``: each student loss; ``unweighted`` / ``weighted``: each term's loss key (and its
    extra keys, e.g. ``loss_distill_crosskd_reg``) before and after its weight and schedule;
    ``weights``: each term key's configured weight; ``factors``: the loss-weight schedule's factor
    at each iteration; ``parts``: the unweighted per-level values (``distill/<term>/<level>``).
    """

    iterations: int = 0
    random_weights: bool = False
    student: Dict[str, List[float]] = field(default_factory=dict)
    unweighted: Dict[str, List[float]] = field(default_factory=dict)
    weighted: Dict[str, List[float]] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)
    factors: List[float] = field(default_factory=list)
    parts: Dict[str, List[float]] = field(default_factory=dict)

    def student_total(self) -> List[float]:
        """The sum of the student's losses at each iteration."""
        return [sum(v[i] for v in self.student.values()) for i in range(self.iterations)]

    def summary(self) -> dict:
        """Means over the iterations, and each term key's ratio (weighted / the student's total,
        both means)."""
        total = _mean(self.student_total())
        terms = {
            k: {
                "weight": self.weights[k],
                "unweighted": _mean(self.unweighted[k]),
                "weighted": _mean(self.weighted[k]),
                "ratio_to_student": _mean(self.weighted[k]) / total if total else float("nan"),
            }
            for k in self.weighted
        }
        return {
            "iterations": self.iterations,
            "random_weights": self.random_weights,
            "student": {k: _mean(v) for k, v in self.student.items()},
            "student_total": total,
            "terms": terms,
            "parts": {k: _mean(v) for k, v in self.parts.items()},
            "weight_factor": _mean(self.factors),
        }

    def degenerate(self) -> List[str]:
        """The term keys whose unweighted value was not finite or was zero at some iteration."""
        return [
            k
            for k, values in self.unweighted.items()
            if any(not math.isfinite(v) or v == 0.0 for v in values)
        ]


def measure_loss_scale(
    cfg, *, iters: int = 4, random_weights: bool = False, progress: Callable = None
) -> LossScale:
    """Run the first ``iters`` training iterations of ``cfg``'s Distiller and record its losses.

    Args:
        cfg: a validated Distiller config: yacs, or a LazyConfig (``model`` a Distiller).
        iters: iterations to run (>= 1).
        random_weights: random teacher and student weights (norm statistics calibrated on the
            first batch) instead of ``TEACHER.WEIGHTS`` and ``MODEL.WEIGHTS``: for recipes whose
            checkpoints are absent. The sizes then reflect the architectures and the input, not
            trained features.
        progress: optional callable, called once per iteration with its index.
    """
    if iters < 1:
        raise ConfigError(f"--iters must be >= 1; got {iters}.")
    model, batches = prepare_distiller(
        cfg, batches=iters, random_weights=random_weights, what="the loss-scale check"
    )
    if is_lazy_config(cfg):  # its optimizer and LR multiplier, as do_train has them
        from detectron2.config import instantiate
        from detectron2.solver import LRMultiplier

        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        scheduler = LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), cfg.train.max_iter)
    else:
        optimizer = Trainer.build_optimizer(cfg, model)  # the trainer's, with gradient clipping
        scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    result = LossScale(iterations=iters, random_weights=random_weights)
    outputs = {}

    def record_output(term, inputs, output):
        outputs[term.loss_key] = output

    handles = [term.register_forward_hook(record_output) for term in model.terms]
    try:
        with EventStorage(0) as storage:
            for i, batch in enumerate(batches):
                storage.iter = i
                outputs.clear()
                losses = model(batch)
                loss = sum(losses.values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                _record(result, model, losses, outputs, storage)
                if progress is not None:
                    progress(i)
    finally:
        for h in handles:
            h.remove()
    return result


def _record(result: LossScale, model, losses, outputs, storage) -> None:
    factor = model.schedule_factor(storage.iter)
    result.factors.append(factor)
    term_keys = set()
    for term in model.terms:
        out = outputs.get(term.loss_key)
        unweighted = {term.loss_key: out.loss if out is not None else None}
        if out is not None:
            unweighted.update({f"{term.loss_key}_{s}": v for s, v in out.extra.items()})
        for key, value in unweighted.items():
            term_keys.add(key)
            result.weights[key] = float(term.weight)
            result.weighted.setdefault(key, []).append(float(losses[key].detach()))
            # None: the schedule switched the term off, so its module did not run
            number = float("nan") if value is None else float(value.detach())
            result.unweighted.setdefault(key, []).append(number)
    for key, value in losses.items():
        if key not in term_keys:
            result.student.setdefault(key, []).append(float(value.detach()))
    for key, (value, _) in storage.latest().items():
        if key.startswith("distill/") and key != "distill/weight_factor":
            result.parts.setdefault(key, []).append(float(value))
