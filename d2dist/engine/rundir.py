"""What a run directory holds, and the rule that nothing d2dist wrote there before is lost.

A directory *holds a run* when it has checkpoints (``model_*.pth``) or a ``last_checkpoint`` tag.

- A training run without ``--resume`` never starts in a directory that holds one (Detectron2
  would write its checkpoints over the earlier run's).
- ``--resume`` continues the run ``last_checkpoint`` names; checkpoints without that tag are not
  guessed at (the run stops and says how to name the one to continue); a directory with no
  checkpoint at all starts a new run and says so (a requeued job's first start).
- Detectron2's ``default_setup`` writes the run's ``config.yaml``: an earlier, different one is
  kept aside as ``config.<n>.yaml`` (a run resumed with another config, a run that never saved a
  checkpoint), and ``--eval-only`` with another config never replaces the ``config.yaml`` of a
  run (``tools/export_student.py --run-dir`` reads it): its own goes to ``config.eval.yaml``.
"""

import contextlib
import errno
import logging
import os
import re
import tempfile
from typing import List

from detectron2.config import CfgNode, LazyConfig

from ..errors import ConfigError, RunFault, os_error_cause

__all__ = [
    "check_output_dir",
    "checkpoints_in",
    "config_text",
    "keeping_earlier_config",
    "resume_target",
]

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"model_(\d+|final)\.pth")


def checkpoints_in(out: str) -> List[str]:
    """The checkpoint files d2dist's (and Detectron2's) trainers write, in ``out``."""
    if not os.path.isdir(out):
        return []
    return sorted(f for f in os.listdir(out) if _CHECKPOINT.fullmatch(f))


def resume_target(out: str, resume: bool) -> None:
    """For a training run: refuse what would overwrite an earlier run's checkpoints, or resume
    something other than what the user meant (see the module docstring)."""
    tagged = os.path.exists(os.path.join(out, "last_checkpoint"))
    found = checkpoints_in(out)
    if not resume and (tagged or found):
        listed = f" ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''})" if found else ""
        raise ConfigError(
            f"OUTPUT_DIR {out!r} holds checkpoints of an earlier run{listed}"
            f"{'' if tagged else ', without a last_checkpoint naming the last one'}. Pass "
            "--resume to continue that run, or choose another OUTPUT_DIR; delete the old "
            "directory yourself if you no longer need it."
        )
    if resume and not tagged:
        if found:
            raise ConfigError(
                f"--resume: OUTPUT_DIR {out!r} holds checkpoints ({', '.join(found[-4:])}) but no "
                "last_checkpoint naming the one to continue, so d2dist will not guess. Write the "
                "file name of the one to continue into it (e.g. `echo "
                f"{found[-1]} > {os.path.join(out, 'last_checkpoint')}`) and run again, or start "
                "a new run in another OUTPUT_DIR."
            )
        logger.warning(
            f"--resume: OUTPUT_DIR {out!r} has no checkpoint yet, so this starts a new run (as "
            "the first start of a requeued job does), from MODEL.WEIGHTS / train.init_checkpoint."
        )


def check_output_dir(out: str, resume: bool, training: bool) -> None:
    """``out`` must be a writable directory; a training run without ``resume`` must not find an
    earlier run's checkpoints there (Detectron2 would overwrite them), and one with ``resume``
    must find the one to continue (:func:`~d2dist.engine.rundir.resume_target`)."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out) as probe:  # room for a start: 1 MiB
            probe.write(b"\0" * (1 << 20))
            probe.flush()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunFault(
                f"OUTPUT_DIR {out!r}: {os_error_cause(e)}, so the run could write neither its "
                "config nor a checkpoint; nothing was written. Free space there, or choose an "
                "OUTPUT_DIR on another disk."
            ) from e
        raise ConfigError(
            f"OUTPUT_DIR {out!r} is not a writable directory ({os_error_cause(e)}). Pass one "
            "that is, e.g. `OUTPUT_DIR ./output/my_run` at the end of the command line "
            "(LazyConfig: train.output_dir=./output/my_run)."
        ) from e
    # Detectron2 would silently overwrite an earlier run's checkpoints, or start over when there
    # is none to resume: refuse instead (d2dist.engine.rundir).
    if training:
        resume_target(out, resume)


@contextlib.contextmanager
def keeping_earlier_config(out: str, text: str, *, eval_only: bool):
    """Around Detectron2's ``default_setup``, which writes ``out/config.yaml`` (``text``): an
    earlier, different ``config.yaml`` is renamed to ``config.<n>.yaml`` first; for an evaluation
    in a directory that holds a run, the run's own ``config.yaml`` (which ``--run-dir`` exports
    read) is put back afterwards and the evaluation's is kept as ``config.eval.yaml``."""
    path = os.path.join(out, "config.yaml")
    earlier = None
    if text and os.path.isfile(path):
        with open(path) as f:
            earlier = f.read()
    if earlier is None or earlier == text:
        yield
        return
    if eval_only and (checkpoints_in(out) or os.path.exists(os.path.join(out, "last_checkpoint"))):
        yield
        evaluation = _free(out, "config.eval{}.yaml")
        os.replace(path, evaluation)
        with open(path + ".tmp", "w") as f:
            f.write(earlier)
        os.replace(path + ".tmp", path)
        logger.warning(
            f"--eval-only with another config than the run's in OUTPUT_DIR {out!r}: the run's "
            f"config.yaml is kept as it was; this evaluation's config is {evaluation}"
        )
        return
    kept = _free(out, "config.{}.yaml", first=1)
    os.replace(path, kept)
    logger.warning(f"OUTPUT_DIR's config.yaml was another config's: kept as {kept}")
    yield


def _free(out: str, pattern: str, first: int = 0) -> str:
    """The first path ``out/pattern`` (formatted with "", then ".1", ".2", ... or 1, 2, ...) that
    does not exist."""
    n = first
    while True:
        name = pattern.format(n if first else ("" if n == 0 else f".{n}"))
        if not os.path.exists(os.path.join(out, name)):
            return os.path.join(out, name)
        n += 1


def config_text(cfg) -> str:
    """What Detectron2's ``default_setup`` writes as ``config.yaml`` for ``cfg``."""
    if isinstance(cfg, CfgNode):
        return cfg.dump()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        LazyConfig.save(cfg, path)  # a config YAML cannot hold is pickled beside instead
        if not os.path.isfile(path):
            return ""
        with open(path) as f:
            return f.read()
