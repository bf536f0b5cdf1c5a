"""Running the study's jobs: side by side on the CPU cores, each a ``tools/train_net.py`` process
with a progress bar; finished runs are read from their stored results, unfinished ones resumed."""

import os
import statistics
import subprocess
import time
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from ..file_io import project_dir
from .planning import Job, StudyError, command, run_dir
from .runs import (
    RESULTS_FILE,
    final_results,
    max_iter,
    read_metrics,
    store_results,
    stored_results,
)

__all__ = [
    "Progress",
    "cores",
    "describe_threads",
    "read_finished",
    "run_jobs",
    "thread_env",
    "threads_per_run",
]

POLL_S = 1.0  # how often the bars move and finished processes are collected
WRITER_PERIOD = 20  # Detectron2's DefaultTrainer writes metrics.json every 20 iterations
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_run(parallel: int) -> Tuple[int, int]:
    """Threads of each run (PyTorch's, OpenMP's, MKL's): ``(side by side, alone)``: the cores
    split between the ``parallel`` runs side by side, so that they do not oversubscribe them
    (on a shared machine PyTorch's default, one thread per core in every process, can make a step
    ten times slower), and every core for a run alone (a teacher)."""
    n = cores()
    return max(1, n // max(1, parallel)), n


def thread_env(threads: int) -> Dict[str, str]:
    """The environment of a run with ``threads`` threads: ``OMP_NUM_THREADS`` (which PyTorch's
    intra-op pool follows) and ``MKL_NUM_THREADS``, unless the user set ``OMP_NUM_THREADS``:
    then the environment is passed as it is."""
    if "OMP_NUM_THREADS" in os.environ:
        return dict(os.environ)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.setdefault("MKL_NUM_THREADS", str(threads))
    return env


def describe_threads(parallel: int) -> str:
    """One sentence on the threads of the runs (printed, and in the report's header)."""
    given = os.environ.get("OMP_NUM_THREADS")
    if given is not None:
        return f"every run with OMP_NUM_THREADS={given}, as set in the environment"
    side, alone = threads_per_run(parallel)
    return (
        f"{side} thread(s) per run side by side ({alone} cores / {parallel} run(s); "
        f"OMP_NUM_THREADS={side} in each run's environment; set OMP_NUM_THREADS to choose), "
        f"a teacher, training alone, with {alone}"
    )


class Progress:
    """Where a training run is, between the records of its ``metrics.json``.

    Detectron2 writes a record every 20 iterations (with ``time``, the median step time of those
    iterations). The estimate moves on from the last record at the run's pace, the median of the
    recent records' step times (the wall clock between records when they have none), never past
    the next record nor backwards; the time left is the iterations left at that pace, so it
    neither swings when a record arrives nor counts the run's start-up (building the model,
    loading the data) as training time.

    Args:
        total: the run's ``SOLVER.MAX_ITER`` (None until its config.yaml is written).
        earlier: how many records ``metrics.json`` held before this process started (a resumed
            run's): they place the bar but do not start the clock.
    """

    def __init__(self, total: Optional[int] = None, earlier: int = 0):
        self.total, self.earlier = total, earlier
        self.iteration: Optional[int] = None  # last recorded iteration of this process
        self.seen_at = 0.0
        self.period = WRITER_PERIOD
        self.paces: List[float] = []
        self.first: Optional[Tuple[int, float]] = None  # (iteration, time) first seen
        self.n = 0.0

    def observe(self, records: List[dict], now: float) -> None:
        """Take in ``metrics.json``'s records (:func:`~.runs.read_metrics`) read at ``now``."""
        old = [r["iteration"] for r in records[: self.earlier] if "iteration" in r]
        new = [r for r in records[self.earlier :] if "iteration" in r]
        if old:
            self.n = max(self.n, old[-1] + 1)  # where a resumed run starts
        if not new or new[-1]["iteration"] == self.iteration:
            return
        self.iteration, self.seen_at = new[-1]["iteration"], now
        if len(new) > 1:
            self.period = max(1, new[-1]["iteration"] - new[-2]["iteration"])
        self.first = self.first or (self.iteration, now)
        self.paces = [r["time"] for r in new[-50:] if isinstance(r.get("time"), (int, float))]

    def pace(self) -> Optional[float]:
        """Seconds per iteration, None until known."""
        if self.paces:
            return statistics.median(self.paces)
        if self.first is not None and self.iteration > self.first[0]:
            return (self.seen_at - self.first[1]) / (self.iteration - self.first[0])
        return None

    def estimate(self, now: float) -> Tuple[int, str]:
        """``(iterations done, what to show after the bar)`` at ``now``."""
        if self.iteration is None:  # a finished run, resumed, only evaluates
            finished = bool(self.total) and self.n >= self.total
            return int(self.n), "evaluating" if finished else "starting"
        done, pace = self.iteration + 1, self.pace()
        if self.total and done >= self.total:
            self.n = self.total
            return self.total, "evaluating"
        n = float(done)
        if pace:
            n = min(done + (now - self.seen_at) / pace, done + self.period - 1)
        if self.total:
            n = min(n, self.total - 1)
        self.n = max(self.n, n)
        if not pace or not self.total:
            return int(self.n), ""
        left = tqdm.format_interval((self.total - self.n) * pace)
        return int(self.n), f"{left} left, {pace:.2f} s/it"


def _stamp(out: str) -> str:
    return os.path.join(out, "study_fingerprint.txt")


def holds_same_run(job: Job, out: str) -> bool:
    """Whether ``out`` holds a run of exactly this job (its fingerprint stamp matches)."""
    stamp = _stamp(out)
    if not os.path.isfile(stamp):
        return False
    with open(stamp) as f:
        return f.read().strip() == job.fingerprint


def _prepare(job: Job, out_root: str, fresh: bool) -> bool:
    """Make the job's directory; True when it holds an earlier run of the same job to resume.
    A directory holding another run (another config, code, seed or teacher) is moved aside."""
    out = run_dir(job, out_root)
    resume = False
    if os.path.isdir(out):
        if holds_same_run(job, out) and not fresh:
            resume = True
        else:
            aside = f"{out}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(out, aside)
            tqdm.write(f"[{job.name}] earlier run moved aside to {aside}")
    os.makedirs(out, exist_ok=True)
    with open(_stamp(out), "w") as f:
        f.write(job.fingerprint + "\n")
    return resume


def _stored(job: Job, out_root: str) -> Optional[Dict[str, float]]:
    """The job's stored results, when its directory holds this very run, finished, with the
    config and final checkpoint they were computed from."""
    out = run_dir(job, out_root)
    return stored_results(out, job.fingerprint) if holds_same_run(job, out) else None


class _Running:
    def __init__(self, job: Job, out_root: str, fresh: bool, threads: int, slot: int):
        self.job, self.out, self.slot = job, run_dir(job, out_root), slot
        resume = _prepare(job, out_root, fresh)
        self.cmd = command(job, out_root, resume)
        self.log_path = os.path.join(self.out, "stdout.txt")
        self.progress = Progress(earlier=len(read_metrics(self.out)))
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=project_dir(),
            env=thread_env(threads),
        )
        self.bar = tqdm(desc=f"{job.name:>30}", unit="it", position=slot, leave=True,
                        bar_format=BAR_FORMAT)  # fmt: skip

    def update(self) -> None:
        now = time.monotonic()
        self.bar.total = self.progress.total = self.bar.total or max_iter(self.out)
        self.progress.observe(read_metrics(self.out), now)
        n, note = self.progress.estimate(now)
        self.bar.n = n
        self.bar.set_postfix_str(note, refresh=False)
        self.bar.refresh()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        self.log.close()
        self.bar.close()


def run_jobs(jobs: List[Job], out_root: str, *, parallel: int, fresh: bool) -> None:
    """Run the jobs, ``parallel`` at a time (a task's distilled runs wait for its teacher, which
    trains alone on all cores); fills each job's ``results``. A job whose run finished earlier
    with the same code, config.yaml and final checkpoint is not run again: its stored results
    (``study_results.json``) are read (unless ``fresh``). A failed run stops the others and
    raises :class:`StudyError` with its command and the tail of its log."""
    side, alone_threads = threads_per_run(parallel)
    done = set()
    for job in [] if fresh else jobs:
        results = _stored(job, out_root)
        if results:
            job.results = results
            done.add(job.name)
    if done:
        tqdm.write(
            f"{len(done)} of {len(jobs)} run(s) finished earlier with this code, config and "
            f"checkpoint: their stored results are read ({RESULTS_FILE} in each run directory), "
            "nothing is evaluated again (--fresh retrains them)."
        )
    pending = [j for j in jobs if j.name not in done]
    running: List[_Running] = []
    try:
        while pending or running:
            for job in list(pending):
                alone = job.method is None  # a teacher: every distilled run of its task waits
                if len(running) >= parallel or (running and alone):
                    break
                if any(r.job.method is None for r in running):
                    break
                if job.needs_teacher and job.teacher_name not in done:
                    continue
                pending.remove(job)
                free = min(set(range(parallel)) - {r.slot for r in running})
                threads = alone_threads if alone else side
                running.append(_Running(job, out_root, fresh, threads, free))
            time.sleep(POLL_S)
            for r in list(running):
                r.update()
                if r.proc.poll() is None:
                    continue
                running.remove(r)
                r.stop()
                if r.proc.returncode != 0:
                    with open(r.log_path) as f:
                        tail = f.read().splitlines()[-30:]
                    raise StudyError(
                        f"run {r.job.name!r} failed (exit {r.proc.returncode}); command:\n"
                        f"  {' '.join(r.cmd)}\nlast lines of {r.log_path}:\n" + "\n".join(tail)
                    )
                r.job.results = final_results(r.out)
                if not r.job.results:
                    raise StudyError(f"run {r.job.name!r} ended without COCO results in {r.out}")
                store_results(r.out, r.job.fingerprint, r.job.results)
                done.add(r.job.name)
    finally:  # never leave a training run behind (Ctrl-C, or an error here)
        for r in running:
            r.stop()


def read_finished(jobs: List[Job], out_root: str) -> None:
    """Fill each job's ``results`` from its finished run (its stored results, else its last
    evaluation in metrics.json); raise naming the runs that are not."""
    missing = []
    for job in jobs:
        out = run_dir(job, out_root)
        same = holds_same_run(job, out)
        job.results = (_stored(job, out_root) or final_results(out)) if same else {}
        if not job.results:
            missing.append(job.name)
    if missing:
        raise StudyError(
            f"--report-only, but these runs have not finished (with this code, config, seed and "
            f"teacher) in {out_root}: {missing}. Run the study without --report-only first."
        )
