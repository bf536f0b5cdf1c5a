#!/usr/bin/env python
"""Export the student of a Distiller run as a plain Detectron2 model.

    python tools/export_student.py --config-file DISTILL_CONFIG.yaml \
        [--checkpoint OUTPUT_DIR/model_final.pth] [--output OUTPUT_DIR/student.pth] [KEY VALUE ...]

Writes the student's weights (no teacher, no adapters) and its own config (the Distiller
config without MODEL.DISTILL) next to them; the weights are verified by a strict load.
"""

import argparse
import os
import sys

from detectron2.utils.logger import setup_logger

from d2dist.config import ConfigError, get_cfg
from d2dist.engine.export import export_student


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--checkpoint", default="", help="default: OUTPUT_DIR/model_final.pth")
    parser.add_argument("--output", default="", help="default: OUTPUT_DIR/student.pth")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    setup_logger(name="d2dist")
    try:
        cfg = get_cfg()
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        checkpoint = args.checkpoint or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        output = args.output or os.path.join(cfg.OUTPUT_DIR, "student.pth")
        weights, config = export_student(cfg, checkpoint, output)
    except (ConfigError, KeyError, OSError) as e:
        print(f"export_student.py: error: {e}", file=sys.stderr)
        return 2
    print(f"student weights: {weights}\nstudent config:  {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
