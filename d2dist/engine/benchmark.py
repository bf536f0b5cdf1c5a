"""Step-cost benchmark of a Distiller config: what distillation costs, part by part.

For one config, on the same prefetched batches (data loading is excluded), each measured iteration
times, in this order:

- ``student_step``: the student's plain training step (forward, backward, optimizer step over the
  student's parameters);
- ``teacher_forward``: :meth:`TargetExtractor.teacher_forward`, the teacher parts the terms need,
  under ``no_grad`` and the configured autocast (the student RoIs it needs are recorded by an
  untimed forward);
- ``method_step``: every term's forward and backward on the recorded student tensors (detached
  leaves, so no student backward is included) and teacher tensors, then an optimizer step over
  the terms' own parameters (adapters, ABF, acclimation): the cost of the method itself;
- ``distill_step``: the full Distiller training step, as the trainer runs it.

``overhead_ratio = distill_step / (student_step + teacher_forward + method_step)`` (medians) is
what the framework adds above that floor; ``distill_over_student`` is the price per step a user
pays over training the student alone. On the CPU the result says whether subnormal floats were
flushed to zero (:mod:`d2dist.engine.subnormals`; ``tools/benchmark.py`` flushes them unless
``D2DIST_FLUSH_DENORMAL=0``), which can change CPU step times many-fold.
"""

import logging
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import ImageList
from detectron2.utils.events import EventStorage
from torch import nn

from ..errors import ConfigError
from ..modeling.targets import Targets
from ..checkpoint import StudentCheckpointer, explained_load, initialise_student
from .configs import is_distiller_node, lazy_target
from .subnormals import subnormals_flushed
from .trainer import Trainer

__all__ = [
    "PHASES",
    "BenchmarkResult",
    "PeakMemory",
    "measurement_parser",
    "benchmark",
    "calibrate_norms",
    "is_lazy_config",
    "cpu_model",
    "machine_description",
    "prepare_distiller",
]

logger = logging.getLogger(__name__)

PHASES = ("student_step", "teacher_forward", "method_step", "distill_step")


class PeakMemory:
    """Peak memory of a code region, in MiB: CUDA max allocated, or the process's peak RSS.

    On Linux the RSS peak (``VmHWM``) is reset at :meth:`reset` through ``/proc/self/clear_refs``,
    so each region gets its own peak. Where that is not possible the process-wide peak since start
    is reported and :attr:`per_region` is False.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.per_region = self.cuda or self._can_reset_rss()

    @staticmethod
    def _can_reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return PeakMemory._vm_hwm_kib() is not None
        except OSError:
            return False

    @staticmethod
    def _vm_hwm_kib():
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.per_region:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak_mib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.per_region:
            return self._vm_hwm_kib() / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Clock:
    """Seconds a code region took: on a GPU, between two CUDA events recorded on the current
    stream around it (the end event synchronised, so every kernel the region queued is counted);
    on the CPU, ``time.perf_counter``."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.name = "cuda_events" if self.cuda else "perf_counter"

    def start(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds_since(self, start) -> float:
        if not self.cuda:
            return time.perf_counter() - start
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0  # milliseconds


@dataclass
class BenchmarkResult:
    """Per-iteration seconds of each phase and term, and each phase's peak memory (MiB)."""

    times: Dict[str, List[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    term_times: Dict[str, List[float]] = field(default_factory=dict)
    peak_mib: Dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    memory_per_phase: bool = True
    random_weights: bool = False
    # CPU: whether every thread flushed subnormals to zero while measuring; None on a GPU.
    flush_subnormals: Optional[bool] = None
    clock: str = "perf_counter"  # how the phases were timed: see Clock

    def median(self, phase: str) -> float:
        return statistics.median(self.times[phase])

    def summary(self) -> dict:
        """The JSON object of ``tools/benchmark.py --json``: medians in seconds, ratios, MiB, the
        slowest iteration of each phase (CPU steps that meet subnormal floats stand out there)."""
        floor = sum(self.median(p) for p in PHASES[:3])
        distill = self.median("distill_step")
        return {
            **{f"{p}_s": self.median(p) for p in PHASES},
            "overhead_ratio": distill / floor,
            "distill_over_student": distill / self.median("student_step"),
            "peak_memory_mib": dict(self.peak_mib),
            "term_step_s": {k: statistics.median(v) for k, v in self.term_times.items()},
            "slowest_s": {p: max(self.times[p]) for p in PHASES},
            "flush_subnormals": self.flush_subnormals,
            "random_weights": self.random_weights,
            "clock": self.clock,
        }


@torch.no_grad()
def calibrate_norms(student: nn.Module, teacher, batch, input_format: str) -> None:
    """Set the running statistics of every BatchNorm / FrozenBatchNorm of both backbones to the
    statistics of its own input on ``batch``, as a trained network has them.

    Randomly initialised ResNets with frozen norms (Detectron2's default) amplify their input
    layer after layer (features of ~1e7 for an R101) and training diverges at once; calibrated,
    they run with activations of trained networks' scale, which is what a timing needs.
    """
    norms = (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm)

    def calibrate(module, inputs):
        x = inputs[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    images = [x["image"].to(student.pixel_mean.device) for x in batch]
    images = [(x - student.pixel_mean) / student.pixel_std for x in images]
    student_images = ImageList.from_tensors(images, student.backbone.size_divisibility).tensor
    teacher_images = teacher.images(batch, input_format).tensor  # its format and statistics
    for model, images in ((student, student_images), (teacher.model, teacher_images)):
        handles = [m.register_forward_pre_hook(calibrate) for m in model.modules()
                   if isinstance(m, norms) and m.running_mean is not None]  # fmt: skip
        was_training = model.training
        model.eval()  # BatchNorm normalises with the statistics just set
        try:
            model.backbone(images)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)


def _optimizer(cfg, module: torch.nn.Module):
    if not any(p.requires_grad for p in module.parameters()):
        return None
    return build_optimizer(cfg, module)


def measurement_parser(doc: str, *, iters: int, iters_help: str, random_help: str):
    """The argument parser of a measuring tool (``tools/benchmark.py``, ``tools/loss_scale.py``;
    ``doc``: its docstring) with the options they share: ``--config-file``, ``--iters``,
    ``--device``, ``--json`` and ``--random-weights``."""
    import argparse

    parser = argparse.ArgumentParser(
        description=doc.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--iters", type=int, default=iters, help=f"{iters_help} (default {iters})")
    parser.add_argument("--device", default=None, help="MODEL.DEVICE, e.g. cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--random-weights", action="store_true", help=random_help)
    return parser


def is_lazy_config(cfg) -> bool:
    """Whether ``cfg`` is a LazyConfig (``model`` and ``dataloader`` nodes), not a yacs config."""
    return not isinstance(cfg, CfgNode) and "model" in cfg and "dataloader" in cfg


def prepare_distiller(cfg, *, batches: int, random_weights: bool, what: str):
    """The Distiller of ``cfg`` (a yacs config or a LazyConfig) in training mode, initialised as
    the trainer initialises a run (teacher and student weights loaded: ``MODEL.WEIGHTS`` or
    ``train.init_checkpoint``), or with random weights whose norm statistics are calibrated on
    the first batch (:func:`calibrate_norms`); and the first ``batches`` batches of the config's
    training loader. ``what`` names the caller in the error for a plain config."""
    lazy = is_lazy_config(cfg)
    if lazy:  # checked on the node: a model that is not a Distiller is not built
        distiller = is_distiller_node(cfg.model)
        target = lazy_target(cfg.model)
        given = f"the LazyConfig's model is a {getattr(target, '__name__', target)}"
    else:
        distiller = cfg.MODEL.META_ARCHITECTURE == "Distiller"
        given = f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}"
    if not distiller:
        raise ConfigError(
            f"{what} measures distillation, but {given}; pass a config with META_ARCHITECTURE "
            "'Distiller' (e.g. configs/Shapes-Detection/reviewkd_faster_rcnn_R18_from_R50_FPN_1x"
            ".yaml) or a LazyConfig whose model is a d2dist Distiller."
        )
    if lazy:
        from detectron2.config import instantiate

        model = instantiate(cfg.model).to(cfg.train.device)
        weights, key = cfg.train.get("init_checkpoint", ""), "train.init_checkpoint"
    else:
        model = build_model(cfg)  # the Distiller (Trainer.build_model: the student, for eval)
        weights, key = cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS"
    if not random_weights:  # as the trainer initialises a run
        model.load_teacher()
        with explained_load(StudentCheckpointer(model.student), weights, False):
            initialise_student(model, weights, key)
    model.train()
    if lazy:
        loader = iter(instantiate(cfg.dataloader.train))
    else:
        loader = iter(Trainer.build_train_loader(cfg))
    prefetched = [next(loader) for _ in range(batches)]
    del loader  # stops the data-loading workers
    if random_weights:
        calibrate_norms(model.student, model.teacher_wrapper, prefetched[0], model.input_format)
        model.teacher_wrapper.loaded = True  # random on purpose: measuring only, never trained
        logger.info("%s: random weights, norm statistics calibrated on the first batch", what)
    return model, prefetched


def benchmark(
    cfg, *, iters: int, warmup: int, progress: Callable = None, random_weights: bool = False
) -> BenchmarkResult:
    """Measure the four phases (see the module docstring) of ``cfg``'s Distiller.

    Args:
        cfg: a validated Distiller config (``MODEL.META_ARCHITECTURE: "Distiller"``).
        iters: measured iterations; warmup: unmeasured iterations before them.
        progress: optional callable, called once per iteration with its index.
        random_weights: time with random weights instead of loading ``TEACHER.WEIGHTS`` and
            ``MODEL.WEIGHTS``, their norm statistics calibrated on the first batch
            (:func:`calibrate_norms`): for timing configs whose checkpoints are not at hand.
            Otherwise the teacher and the student are initialised as the trainer does.
    """
    if iters < 1 or warmup < 0:
        raise ConfigError(f"--iters must be >= 1 and --warmup >= 0; got {iters} and {warmup}.")
    model, batches = prepare_distiller(
        cfg, batches=warmup + iters, random_weights=random_weights, what="the benchmark"
    )
    device = model.device
    full_opt = build_optimizer(cfg, model)
    student_opt = build_optimizer(cfg, model.student)
    method_opt = _optimizer(cfg, model.terms)
    # The step at which every term is on with weight factor 1 (after warm-up; the Distiller
    # refuses a schedule that stops before).
    iteration = model.warmup_iters

    memory = PeakMemory(device)
    result = BenchmarkResult(
        memory_per_phase=memory.per_region,
        flush_subnormals=subnormals_flushed() == 1.0 if device.type == "cpu" else None,
        random_weights=random_weights,
    )
    clock = Clock(device)
    result.clock = clock.name
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(phase: str, measure: bool, fn: Callable, *args):
        memory.reset()
        sync()
        start = clock.start()
        out = fn(*args)
        if measure:
            result.times[phase].append(clock.seconds_since(start))
            result.peak_mib[phase] = max(result.peak_mib[phase], memory.peak_mib())
        return out

    def train_step(module, optimizer, batch):
        loss = sum(module(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def method_step(targets: Targets, measure: bool):
        for term in model.terms:
            start = time.perf_counter()
            out = term(targets.for_term(term))
            loss = out.loss * term.weight
            for extra_value in out.extra.values():
                loss = loss + extra_value * term.weight
            loss.backward()
            sync()
            if measure:
                result.term_times.setdefault(term.CONFIG_KEY, []).append(
                    time.perf_counter() - start
                )
        if method_opt is not None:
            method_opt.step()
            method_opt.zero_grad()

    extractor = model.extractor
    with EventStorage(iteration) as storage:
        for i, batch in enumerate(batches):
            measure = i >= warmup
            storage.iter = iteration
            timed("student_step", measure, train_step, model.student, student_opt, batch)
            with torch.no_grad(), extractor.student_recorder() as recorder:
                model.student(batch)
            t_out = timed("teacher_forward", measure, extractor.teacher_forward, batch, recorder)
            targets = extractor.leaf(extractor.pair(batch, recorder, t_out))
            timed("method_step", measure, method_step, targets, measure)
            del targets, t_out, recorder  # free them before the full step
            timed("distill_step", measure, train_step, model, full_opt, batch)
            if progress is not None:
                progress(i)
    logger.info("benchmark done: %d warm-up and %d measured iterations", warmup, iters)
    return result


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> str:
    """One line naming the hardware and software the numbers were measured on."""
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{hw}; torch {torch.__version__}, Python {platform.python_version()}"
