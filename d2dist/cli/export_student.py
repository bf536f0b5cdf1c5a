"""Export the student of a Distiller run as a plain Detectron2 model.

    d2dist-export --run-dir OUTPUT_DIR [--output OUTPUT_DIR/student.pth]
    d2dist-export --config-file DISTILL_CONFIG.yaml \\
        [--checkpoint OUTPUT_DIR/model_final.pth] [--output OUTPUT_DIR/student.pth] [KEY VALUE ...]

(``python tools/export_student.py ...`` in a checkout.) ``--run-dir`` takes the run's own
``config.yaml`` (with every override it was trained with) and the checkpoint its
``last_checkpoint`` names; runs of ``d2dist-train-lazy`` (and ``.py`` config files) export the
student's LazyConfig instead, which LazyConfig.load reads back. Writes the student's weights (no
teacher, no adapters) and its config, which plain Detectron2's ``get_cfg()`` merges (plus only the
config functions of the student's own project), next to them; the weights are verified by a strict
load. From Python: :func:`d2dist.engine.export_student` (:mod:`d2dist.engine.export`).
"""

import argparse
import os
import re
import sys

from detectron2.config import LazyConfig
from detectron2.utils.logger import setup_logger

from ..config import get_cfg, merge_config_file, merge_overrides
from ..engine.export import export_lazy_student, export_student, run_checkpoint
from ..engine.lazy_checks import apply_overrides
from ..errors import ConfigError, RunFault
from ..file_io import local_path
from ._warnings import quiet_third_party_warnings

__all__ = ["console_main", "main"]


def _is_lazy(config_file: str) -> bool:
    """A LazyConfig .py file, or a LazyConfig run's config.yaml (what LazyConfig.save wrote)."""
    if config_file.endswith(".py"):
        return True
    with open(config_file, errors="replace") as f:  # top-level keys lowercase (model, train...)
        text = f.read()
    return all(re.search(rf"(?m)^{key}:", text) for key in ("model", "train"))


def main(argv=None, prog: str = "export_student.py") -> int:
    """Export as the command line ``argv`` asks; returns the exit status (errors: 2, printed
    after ``prog``)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", help="a Distiller run's OUTPUT_DIR (config.yaml, checkpoint)")
    source.add_argument("--config-file", help="the Distiller config the run was trained with")
    parser.add_argument("--checkpoint", default="", help="default: the run's last checkpoint")
    parser.add_argument("--output", default="", help="default: <run dir>/student.pth")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier export at --output (refused otherwise)",
    )
    parser.add_argument(
        "--config-function",
        action="append",
        default=[],
        metavar="MODULE.FUNCTION",
        help="a project's config function the config needs (as for tools/train_net.py)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    setup_logger(name="d2dist")
    try:
        config_file = local_path(args.config_file or os.path.join(args.run_dir, "config.yaml"))
        if not os.path.isfile(config_file):
            raise ConfigError(
                f"--config-file {config_file!r} does not exist"
                if args.config_file
                else f"the run directory {args.run_dir!r} has no config.yaml (is it the "
                "OUTPUT_DIR of a training run?)"
            )
        lazy = _is_lazy(config_file)
        if lazy:
            try:
                cfg = LazyConfig.load(config_file)
            except Exception as e:  # a user's Python config: any exception is possible
                raise ConfigError(
                    f"could not load the LazyConfig {config_file!r} with overrides {args.opts}: "
                    f"{type(e).__name__}: {e}"
                ) from e
            cfg = apply_overrides(cfg, args.opts, config_file)  # each key checked first
            out_dir = cfg.train.output_dir
        else:
            cfg = get_cfg(*args.config_function)
            # keys and value types checked as they are read (a project's keys need
            # --config-function MODULE.FUNCTION, which the messages say)
            merge_config_file(cfg, config_file, f"config {config_file!r}")
            merge_overrides(cfg, args.opts, "command-line overrides")
            out_dir = cfg.OUTPUT_DIR
        run_dir = args.run_dir or out_dir
        if args.checkpoint:
            checkpoint = args.checkpoint
        elif args.run_dir:
            checkpoint = run_checkpoint(args.run_dir)
        else:
            checkpoint = os.path.join(out_dir, "model_final.pth")
        output = args.output or os.path.join(run_dir, "student.pth")
        export = export_lazy_student if lazy else export_student
        weights, config = export(cfg, checkpoint, output, overwrite=args.overwrite)
    except (ConfigError, RunFault, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"student weights: {weights}\nstudent config:  {config}")
    return 0


def console_main(argv=None) -> int:
    """``d2dist-export``: parses ``argv`` (default ``sys.argv[1:]``), returns the exit status."""
    quiet_third_party_warnings()
    return main(argv, prog=os.path.basename(sys.argv[0]))


if __name__ == "__main__":
    sys.exit(console_main())
