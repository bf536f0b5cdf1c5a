"""What every run of d2dist's entry points shares, for yacs and LazyConfig configs alike: the run
options, the device, the preparation of the run (subnormals, output directory, its lock, what
interrupted saves left, Detectron2's ``default_setup``, d2dist's logger), and the launcher that
turns d2dist's errors into one message and exit status 2."""

import contextlib
import logging
import os
import re
import sys
from typing import Callable

import torch
from detectron2.engine import default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import remove_partials
from ..errors import D2DIST_ERRORS, ConfigError
from .rundir import check_output_dir, config_text, keeping_earlier_config
from .runlock import OutputDirLock
from .steps import debugging
from .subnormals import flush_subnormals, log_subnormal_mode

__all__ = ["add_run_arguments", "launch_cli", "prepare_run", "release_run", "resolve_device"]

logger = logging.getLogger(__name__)
DEBUG = "D2DIST_DEBUG"


def add_run_arguments(parser) -> None:
    """d2dist's options of every training entry point (yacs and LazyConfig)."""
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue the run even though its config (or its teacher's files) "
        "differs from what its last checkpoint was trained with (listed otherwise, and refused)",
    )
    parser.add_argument(
        "--image-folder",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "DIR"),
        help="register the images under DIR as the unlabeled dataset NAME, to name in the "
        "training sets: a Distiller's teacher labels them on each step's view "
        "(MODEL.DISTILL.TEACHER_LABELS, docs/unlabeled.md). Repeat for several",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the whole traceback of d2dist's own errors too (a config mistake, a data "
        f"fault), not their message alone; {DEBUG}=1 does the same for your own script",
    )


def resolve_device(device: str, explicit: bool, key: str, sep: str = " ") -> str:
    """The device a run uses: the CPU when the config asks for CUDA (Detectron2's default) and
    no GPU exists, with a warning. A CUDA device given explicitly on the command line is an
    error instead: the user asked for a GPU, so it is never silently replaced.

    ``key`` and ``sep`` write the setting in messages (``MODEL.DEVICE cpu``, ``train.device=cpu``).
    """
    if not device.startswith("cuda") or torch.cuda.is_available():
        return device
    if explicit:
        raise ConfigError(
            f"{key}{sep}{device} was given on the command line, but PyTorch "
            f"{torch.__version__} sees no CUDA device (torch.cuda.is_available() is False). "
            f"Run on a machine with a GPU, or pass {key}{sep}cpu."
        )
    logger.warning(f"No CUDA device is available: running on the CPU ({key}{sep}cpu).")
    return "cpu"


def prepare_run(cfg, args, *, output_dir: str, device: str) -> None:
    """Set up the run of ``cfg`` (yacs or LazyConfig; its output directory and device given):
    flush subnormal floats on the CPU (before any computation: :mod:`.subnormals`), check the
    output directory (:func:`~d2dist.engine.rundir.check_output_dir`), take its lock (the main
    process; released by :func:`release_run` when the run ends, or by the end of the process),
    remove what interrupted saves of an earlier run left, run Detectron2's ``default_setup``
    (which writes ``config.yaml``: an earlier one is kept, :mod:`.rundir`) and set up d2dist's
    logger. ``args`` are the entry point's parsed arguments; the lock is kept in
    ``args.output_dir_lock``."""
    flushed = flush_subnormals(device)
    check_output_dir(output_dir, resume=args.resume, training=not args.eval_only)
    if comm.is_main_process():  # the run owns its output directory until it ends
        args.output_dir_lock = OutputDirLock(output_dir)
        args.output_dir_lock.acquire()
        remove_partials(output_dir)  # what an interrupted save of an earlier run left
    text = config_text(cfg) if comm.is_main_process() else ""
    with keeping_earlier_config(output_dir, text, eval_only=args.eval_only), _plain_text():
        default_setup(cfg, args)
    # d2dist's own messages (teacher, resolved targets, DDP) into the console and log.txt too,
    # as Detectron2's projects do for theirs.
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="d2dist")
    log_subnormal_mode(flushed)


class _PlainText(logging.Filter):
    """Drops terminal colour codes from a record: Detectron2's ``default_setup`` logs the config
    file and the full config highlighted for a terminal, which would put them into ``log.txt``."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\x1b[" in message:
            record.msg, record.args = self._ANSI.sub("", message), ()
        return True


@contextlib.contextmanager
def _plain_text():
    """Around ``default_setup`` only: its records without colour codes (the filter is removed
    afterwards; Detectron2's logger is left as it was)."""
    logger, plain = logging.getLogger("detectron2"), _PlainText()
    logger.addFilter(plain)
    try:
        yield
    finally:
        logger.removeFilter(plain)


def release_run(args) -> None:
    """Release the output directory's lock :func:`prepare_run` took (if this process took it)."""
    lock = getattr(args, "output_dir_lock", None)
    if lock is not None:
        lock.release()


def _cpu_processes(args) -> bool:
    """Whether ``--num-gpus N`` asks for N CPU processes: ``MODEL.DEVICE cpu`` (LazyConfig:
    ``train.device=cpu``) on the command line of a machine without CUDA (Detectron2's launcher
    then uses the gloo backend).
    """
    opts = list(args.opts)
    devices = [v for k, v in zip(opts[::2], opts[1::2]) if k == "MODEL.DEVICE"]
    devices += [o.split("=", 1)[1] for o in opts if o.startswith("train.device=")]  # LazyConfig
    return bool(devices) and devices[-1] == "cpu" and not torch.cuda.is_available()


def launch_cli(main: Callable, args) -> int:
    """Run ``main(args)`` through Detectron2's ``launch``; a d2dist error exits with 2.

    ``--num-gpus N`` starts N processes, one per GPU (NCCL), or, with ``MODEL.DEVICE cpu`` on a
    machine without CUDA, N CPU processes (gloo). A d2dist error (:data:`D2DIST_ERRORS`) raised
    in any of them is printed as its message alone, like one of a single process; with
    ``--debug`` (or ``D2DIST_DEBUG=1``) it keeps its traceback, as every other exception does.
    Returns the process exit status.
    """
    if getattr(args, "debug", False):
        os.environ[DEBUG] = "1"  # for the trainers, here and in the processes launched
    prog = os.path.basename(sys.argv[0])
    try:
        gpus = torch.cuda.device_count()
        if args.num_gpus > 1 and args.num_gpus > gpus and not _cpu_processes(args):
            raise ConfigError(
                f"--num-gpus {args.num_gpus} asks for {args.num_gpus} GPUs per machine, but "
                f"{gpus} CUDA devices are visible. Pass --num-gpus {max(gpus, 1)} or run on a "
                "machine with more GPUs (on a machine without CUDA, --num-gpus N MODEL.DEVICE cpu "
                "runs N CPU processes with the gloo backend)."
            )
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except D2DIST_ERRORS as e:
        if debugging():
            raise
        print(f"{prog}: error: {_last_message(str(e), type(e))}", file=sys.stderr)
        return 2
    except torch.multiprocessing.ProcessRaisedException as e:
        # A worker's exception arrives as its formatted traceback; show a d2dist error's
        # message alone, as for one process.
        text = str(e)
        for kind in D2DIST_ERRORS:
            if f"{kind.__module__}.{kind.__name__}: " in text and not debugging():
                print(f"{prog}: error: {_last_message(text, kind)}", file=sys.stderr)
                return 2
        raise
    return 0


def _last_message(text: str, kind) -> str:
    """The message of the innermost ``kind`` error in ``text`` (an exception re-raised from a
    data-loading or training worker carries the worker's traceback in its message)."""
    marker = f"{kind.__name__}: "
    if "Traceback" in text and marker in text:
        text = text[text.rindex(marker) + len(marker) :]
    return text.strip()
