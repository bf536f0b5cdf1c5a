"""Export the student of a Distiller run as a plain Detectron2 checkpoint and config."""

import logging
import os
from typing import Tuple

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from ..config import ConfigError

__all__ = ["export_student", "student_config"]

logger = logging.getLogger(__name__)
_PREFIX = "student."


def student_config(cfg: CfgNode) -> CfgNode:
    """The student's own config: the Distiller config without ``MODEL.DISTILL``."""
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}: not a Distiller config, "
            "so there is no student to export."
        )
    scfg = cfg.clone()
    scfg.defrost()
    scfg.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    scfg.MODEL.pop("DISTILL")
    return scfg


def export_student(cfg: CfgNode, checkpoint: str, output: str) -> Tuple[str, str]:
    """Write the student's weights to ``output`` (.pth) and its config next to it (.yaml).

    The weights are the ``student.*`` entries of a Distiller checkpoint, without the prefix:
    no teacher, adapters or other training-only modules. They are checked by loading them
    strictly into a model built from the written config.

    Returns:
        the paths of the weights and the config.
    """
    scfg = student_config(cfg)
    if not os.path.isfile(checkpoint):
        raise ConfigError(f"checkpoint {checkpoint!r} does not exist")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model_state = state.get("model", state)
    weights = {k[len(_PREFIX) :]: v for k, v in model_state.items() if k.startswith(_PREFIX)}
    if not weights:
        raise ConfigError(
            f"{checkpoint!r} holds no 'student.*' weights: it is not a checkpoint of a Distiller "
            "run (a plain model's checkpoint needs no export)."
        )
    dropped = sorted({k.split(".")[0] for k in model_state if not k.startswith(_PREFIX)})
    # Verify before writing anything: strict load into the plain student, on the CPU.
    scfg.MODEL.DEVICE = "cpu"
    scfg.MODEL.WEIGHTS = ""
    model = build_model(scfg)
    model.load_state_dict(weights, strict=True)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    scfg.MODEL.WEIGHTS = os.path.abspath(output)
    scfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    config_path = os.path.splitext(output)[0] + ".yaml"
    tmp = output + ".tmp"
    torch.save({"model": weights, "__author__": "d2dist export_student"}, tmp)
    os.replace(tmp, output)
    with open(config_path, "w") as f:
        f.write(scfg.dump())
    logger.info(
        f"Exported the student ({len(weights)} tensors; dropped {dropped}) to {output} with its "
        f"config {config_path}"
    )
    return output, config_path
