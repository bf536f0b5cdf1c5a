"""Planning the study: its jobs (each task's teacher once, then every method per seed), their
fingerprints, and the command of each run."""

import functools
import hashlib
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import yaml

from ..errors import ConfigError
from ..file_io import CHECKOUT, PREFIX, local_path, project_dir
from .tasks import TASKS, Method

__all__ = [
    "Job",
    "QUICK_ITERS",
    "StudyError",
    "code_fingerprint",
    "command",
    "config_path",
    "default_output_dir",
    "fingerprint",
    "plan",
    "run_dir",
    "shell_command",
]

TRAIN_NET = os.path.join(CHECKOUT, "tools", "train_net.py")  # in a checkout
QUICK_ITERS = {"teacher": 100, "student": 50}  # --quick schedules (iterations)


class StudyError(RuntimeError):
    """A run of the study failed, or its results are missing (the message says which)."""


def default_output_dir(quick: bool) -> str:
    """Where the runs go: a --quick smoke check never displaces (moves aside) the study's runs."""
    return os.path.join(project_dir(), "output", "study-quick" if quick else "study")


def config_path(config: str) -> str:
    """The file of a shipped config named as in :mod:`.tasks` (``configs/...``): the checkout's,
    or an installed d2dist's copy inside its package (what ``d2dist://configs/...`` names)."""
    return local_path(PREFIX + config)


def _train_net() -> List[str]:
    """How a run starts: the checkout's tools/train_net.py, or an installed d2dist's module."""
    if os.path.isfile(TRAIN_NET):
        return [sys.executable, TRAIN_NET]
    return [sys.executable, "-m", "d2dist.cli.train_net"]


def _schedule_opts(max_iter: int) -> List[str]:
    """A shortened schedule: LR steps at 80% and 95%, as in the configs' own schedules."""
    steps = f"({int(max_iter * 0.8)},{int(max_iter * 0.95)})"
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", steps, "SOLVER.WARMUP_ITERS", "10"]


@dataclass
class Job:
    """One training run: a task's teacher, or a method of a task at a seed."""

    name: str  # directory under the output dir, e.g. "faster_rcnn/reviewkd/seed1"
    task: str
    config: str  # relative to the checkout
    opts: List[str]
    method: Optional[Method] = None  # None for the teacher
    seed: Optional[int] = None
    needs_teacher: bool = False
    fingerprint: str = ""
    results: Dict[str, float] = field(default_factory=dict)
    args: List[str] = field(default_factory=list)  # train_net options, e.g. --coco-dataset ...

    @property
    def teacher_name(self) -> str:
        return f"{self.task}/teacher"


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """A hash of the code that trains: every Python file of the d2dist package (and d2dist's
    tools/train_net.py), and the versions of PyTorch and Detectron2."""
    import detectron2
    import torch

    h = hashlib.sha256(f"{torch.__version__}\0{detectron2.__version__}".encode())
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tools = [("tools/train_net.py", TRAIN_NET)] if os.path.isfile(TRAIN_NET) else []
    files = tools + sorted(
        (os.path.relpath(os.path.join(root, f), package), os.path.join(root, f))
        for root, _, names in os.walk(package)
        for f in names
        if f.endswith(".py")
    )
    for name, path in files:
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _config_text(path: str) -> str:
    """The config file and its _BASE_ chain, as text (what the fingerprint covers)."""
    with open(path) as f:
        text = f.read()
    base = (yaml.safe_load(text) or {}).get("_BASE_")
    if base:
        base = (
            local_path(base)
            if base.startswith(PREFIX)
            else os.path.join(os.path.dirname(path), base)
        )
        text = _config_text(base) + text
    return text


def fingerprint(config: str, opts: Sequence[str], teacher: str = "") -> str:
    """What makes a run what it is: the code that trains (:func:`code_fingerprint`), its config
    file with its _BASE_ chain, its overrides and its teacher's fingerprint."""
    payload = [code_fingerprint(), _config_text(config_path(config)), *opts, teacher]
    return hashlib.sha256("\0".join(payload).encode()).hexdigest()[:16]


def plan(
    tasks: Sequence[str],
    methods: Optional[Sequence[str]],
    seeds: Sequence[int],
    out_root: str,
    quick: bool,
    opts: Sequence[str],
) -> List[Job]:
    """The jobs of a study: per task, its teacher (when a method needs it), then each of
    ``methods`` that the task has (None: all of its methods), per seed."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    if not tasks:
        raise ConfigError("--tasks is empty; name at least one, e.g. --tasks faster_rcnn")
    offered = {m for t in tasks for m in TASKS[t].by_name}
    unknown = [m for m in methods or () if m not in offered]
    if unknown:
        raise ConfigError(
            f"unknown method(s) {unknown} for task(s) {list(tasks)}; choose from "
            f"{sorted(offered)}"
        )
    if not seeds:
        raise ConfigError("--seeds is empty; give at least one seed, e.g. --seeds 1")
    teacher_opts = (_schedule_opts(QUICK_ITERS["teacher"]) if quick else []) + list(opts)
    student_opts = (_schedule_opts(QUICK_ITERS["student"]) if quick else []) + list(opts)
    jobs: List[Job] = []
    for name in tasks:
        task = TASKS[name]
        chosen = (
            list(task.methods)
            if methods is None
            else [task.by_name[m] for m in methods if m in task.by_name]
        )
        teacher_fp = ""
        if any(m.distill for m in chosen):
            teacher = Job(f"{name}/teacher", name, task.teacher, teacher_opts)
            teacher.fingerprint = teacher_fp = fingerprint(task.teacher, teacher_opts)
            jobs.append(teacher)
        weights = os.path.join(out_root, name, "teacher", "model_final.pth")
        for seed in seeds:
            for m in chosen:
                run_opts = [*student_opts, "SEED", str(seed)]
                if m.distill:
                    run_opts += ["MODEL.DISTILL.TEACHER.WEIGHTS", weights]
                job = Job(f"{name}/{m.name}/seed{seed}", name, m.config, run_opts, m, seed,
                          needs_teacher=m.distill)  # fmt: skip
                job.fingerprint = fingerprint(m.config, run_opts, teacher_fp if m.distill else "")
                jobs.append(job)
    return jobs


def run_dir(job: Job, out_root: str) -> str:
    return os.path.join(out_root, job.name)


def command(job: Job, out_root: str, resume: bool = False) -> List[str]:
    """The job's ``tools/train_net.py`` command line (as an argument list)."""
    cmd = _train_net() + ["--config-file", config_path(job.config), *job.args]
    out = run_dir(job, out_root)
    return cmd + (["--resume"] if resume else []) + [*job.opts, "OUTPUT_DIR", out]


def shell_command(job: Job, out_root: str) -> str:
    """The job's command as one line that pastes into a shell as it is, from the checkout: paths
    inside it relative, every argument quoted where the shell needs it (tuples, lists, spaces)."""

    base = project_dir()

    def rel(arg: str) -> str:
        inside = os.path.isabs(arg) and arg.startswith(base + os.sep)
        return os.path.relpath(arg, base) if inside else arg

    args = ["python"] + [rel(a) for a in command(job, out_root)[1:]]
    return shlex.join(args)
