"""Resuming a learning-rate schedule: its position from the checkpoint, its shape from the config.

Detectron2's own schedulers (``LRMultiplier`` around fvcore's step, cosine and polynomial
schedules) keep only their position in a checkpoint, so ``--resume`` with a larger
``SOLVER.MAX_ITER`` extends a run along the longer schedule. PyTorch-style schedulers that keep
their settings as attributes (the DeepLab project's ``WarmupPolyLR``, used by DeepLab,
Panoptic-DeepLab and Mask2Former) save those settings too, and loading a checkpoint puts the old
``max_iters`` back: past the old end the poly LR is ``math.pow`` of a negative number, and the
run stops with ``ValueError: math domain error``. :func:`schedule_from_config` makes every
scheduler behave like Detectron2's own: after loading, the settings it was built with from this
run's config are restored. And for every scheduler, the optimizer's learning rate is set to the
schedule's at the resumed position: the checkpoint's optimizer state holds the LR the saved run
ended with (0 at the end of a cosine or poly schedule), not the extended schedule's.
"""

import contextlib
import logging
import warnings
from typing import Iterable, List, Optional

from torch.optim.lr_scheduler import LRScheduler

__all__ = ["POSITION", "schedule_from_config", "schedulers_of"]

logger = logging.getLogger(__name__)

# What a PyTorch LR scheduler's state holds about where it is (restored from a checkpoint); every
# other entry of its state_dict() is a setting it was built with.
POSITION = frozenset(
    {"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial",
     "base_lrs", "verbose"}
)  # fmt: skip


def schedulers_of(checkpointables: Iterable) -> List[LRScheduler]:
    """The PyTorch LR schedulers among a checkpointer's checkpointables: given directly (a plain
    training loop's ``scheduler=``), or held by a trainer's ``LRScheduler`` hook."""
    from detectron2.engine import hooks

    found = []
    for obj in checkpointables:
        if isinstance(obj, LRScheduler):
            found.append(obj)
        for hook in getattr(obj, "_hooks", None) or []:  # a Detectron2 trainer
            if isinstance(hook, hooks.LRScheduler) and isinstance(hook.scheduler, LRScheduler):
                found.append(hook.scheduler)
    return list({id(s): s for s in found}.values())


@contextlib.contextmanager
def schedule_from_config(schedulers: Iterable[LRScheduler], max_iter: Optional[int] = None):
    """Around a checkpoint load that restores ``schedulers``: afterwards each keeps the position
    it was saved at, and the settings it was built with (from this run's config) again; where a
    setting differed (e.g. ``max_iters`` of a run extended with a larger ``SOLVER.MAX_ITER``),
    it is logged. Then the optimizer's learning rates are those of the schedule at that position
    (unless it is at or past ``max_iter``: nothing is left to train): the optimizer's state holds
    the LR the saved run was at, which is not the extended schedule's (at the end of a cosine or
    poly schedule it is 0, and the first resumed iteration would not learn)."""
    schedulers = list(schedulers)
    built = [_settings(s) for s in schedulers]
    yield
    for scheduler, settings in zip(schedulers, built):
        loaded = _settings(scheduler)
        changed = sorted(k for k in settings if loaded.get(k) != settings[k])
        if changed:
            scheduler.__dict__.update({k: settings[k] for k in changed})
            logger.info(
                f"Resumed {type(scheduler).__name__} at iteration {scheduler.last_epoch} with this "
                "run's settings: "
                + ", ".join(f"{k} {loaded.get(k)!r} -> {settings[k]!r}" for k in changed)
            )
        if max_iter is not None and scheduler.last_epoch >= max_iter:
            continue
        lrs = _closed_form_lrs(scheduler)
        if lrs is None:
            continue
        saved = [group["lr"] for group in scheduler.optimizer.param_groups]
        for group, lr in zip(scheduler.optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = list(lrs)
        if any(abs(a - b) > 1e-12 * max(abs(a), abs(b), 1.0) for a, b in zip(saved, lrs)):
            logger.info(
                f"Resumed at iteration {scheduler.last_epoch}: learning rate {saved[0]:.6g} (where "
                f"the saved run was) -> {lrs[0]:.6g} (this run's schedule)"
            )


def _closed_form_lrs(scheduler: LRScheduler) -> Optional[List[float]]:
    """The learning rates of ``scheduler`` at its position, for schedulers that compute them from
    the position alone: Detectron2's (``LRMultiplier``, the DeepLab project's ``WarmupPolyLR``, the
    older ``WarmupMultiStepLR`` / ``WarmupCosineLR``) and PyTorch's with a closed form. None for
    others (a chainable schedule's ``get_lr`` depends on the current LR), whose LR is left as the
    checkpoint's optimizer state has it."""
    if hasattr(scheduler, "_get_closed_form_lr"):
        return list(scheduler._get_closed_form_lr())
    if not type(scheduler).__module__.startswith("detectron2."):
        return None
    with warnings.catch_warnings():  # get_lr() outside step(): PyTorch warns, nothing more
        warnings.simplefilter("ignore")
        return list(scheduler.get_lr())


def _settings(scheduler: LRScheduler) -> dict:
    return {k: v for k, v in scheduler.state_dict().items() if k not in POSITION}
