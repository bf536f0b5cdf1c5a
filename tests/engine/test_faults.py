"""Faults injected into real training runs (subprocesses of tools/train_net.py): SIGTERM, two runs
into one directory, a truncated image in the middle of a dataset, a changed config on --resume,
and the pieces behind them (the run lock, the checked mapper, leftovers of interrupted saves)."""

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from PIL import Image

from d2dist.checkpoint import remove_partials
from d2dist.config import get_cfg
from d2dist.engine.faults import CheckedMapper, PreemptionHook
from d2dist.engine.runlock import LOCK_NAME, OutputDirLock
from d2dist.errors import ConfigError, DataError, RunFault

# Runs that are killed, locked, resumed or stopped by bad data, as subprocesses.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
DISTILL_CFG = os.path.join(SHAPES, "mimic_faster_rcnn_R18_from_R50_FPN_1x.yaml")
TEACHER_CFG = os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml")
TEACHER_OPTS = SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    cfg = get_cfg()
    cfg.merge_from_file(TEACHER_CFG)
    cfg.merge_from_list(TEACHER_OPTS)
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def _argv(teacher, out, *extra, flags=()):
    return [
        sys.executable, TRAIN_NET, *flags, "--config-file", DISTILL_CFG, *SHAPES_TINY_DATA,
        *SHAPES_STUDENT_TINY, "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.BASE_LR", "0.002", "DATASETS.TEST", "()", "MODEL.DISTILL.MIMIC.WEIGHT", "0.01",
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher, "MODEL.DISTILL.TEACHER.OPTS", str(TEACHER_OPTS),
        "OUTPUT_DIR", out, *extra,
    ]  # fmt: skip


def _iterations(out):
    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line)["iteration"] for line in f if '"total_loss"' in line]


def _wait(predicate, proc, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_sigterm_saves_the_current_iteration_and_resume_continues_there(teacher, tmp_path):
    out = str(tmp_path / "run")
    # checkpoints far apart: only the signal can have saved one (metrics every 20 iterations)
    argv = _argv(teacher, out, "SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "1000")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait(lambda: any(i >= 19 for i in _iterations(out)), proc), "no progress in time"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    with open(os.path.join(out, "log.txt")) as f:
        assert "Received SIGTERM at iteration" in f.read()
    with open(os.path.join(out, "last_checkpoint")) as f:
        name = f.read().strip()
    saved = torch.load(os.path.join(out, name), weights_only=False)
    stopped = saved["iteration"]
    assert name == f"model_{stopped:07d}.pth" and stopped >= 19
    assert not [f for f in os.listdir(out) if ".partial" in f]
    # --resume continues at the next iteration (and ends at the new MAX_ITER)
    done = subprocess.run(
        _argv(teacher, out, "SOLVER.MAX_ITER", str(stopped + 3), "SOLVER.CHECKPOINT_PERIOD",
              "1000", flags=["--resume"]),  # fmt: skip
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(out, "log.txt")) as f:
        assert f"Starting training from iteration {stopped + 1}" in f.read()
    assert max(_iterations(out)) == stopped + 2
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert final["iteration"] == stopped + 2


def test_a_second_run_into_a_directory_in_use_is_refused(teacher, tmp_path):
    out = str(tmp_path / "run")
    first = subprocess.Popen(_argv(teacher, out, "SOLVER.MAX_ITER", "400"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    lock = os.path.join(out, LOCK_NAME)
    try:
        assert _wait(lambda: os.path.isfile(lock) and os.path.getsize(lock) > 0, first)
        second = subprocess.run(_argv(teacher, out, "SOLVER.MAX_ITER", "2"), capture_output=True,
                                text=True)  # fmt: skip
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"OUTPUT_DIR '{out}' is in use by another run (process {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()
    # a killed run leaves no lock behind: the directory can be resumed at once
    with OutputDirLock(out):
        pass


def test_the_lock_is_per_process_and_names_its_owner(tmp_path):
    out = str(tmp_path)
    script = (
        "import sys, time; from d2dist.engine.runlock import OutputDirLock; "
        f"OutputDirLock({out!r}).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"in use by another run \(process {holder.pid} on"):
            OutputDirLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    outer = OutputDirLock(out)
    outer.acquire()  # released by the end of its process
    with OutputDirLock(out):  # again in this process (the trainer's): nothing to do
        pass
    assert outer._fd is not None  # the inner one released nothing
    outer.release()
    probe = subprocess.run([sys.executable, "-c", script.replace("time.sleep(60)", "")],
                           capture_output=True, text=True)  # fmt: skip
    assert probe.returncode == 0 and "locked" in probe.stdout, probe.stderr[-2000:]


def _write_jpeg(path, size=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path, "JPEG")


@pytest.fixture
def coco_with_a_truncated_image(tmp_path):
    """A COCO-format dataset of 24 images, one of them (the 20th) truncated half-way."""
    images, annotations = [], []
    root = tmp_path / "images"
    root.mkdir()
    for i in range(24):
        name = f"{i:03d}.jpg"
        _write_jpeg(root / name, seed=i)
        images.append({"id": i, "file_name": name, "height": 64, "width": 64})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 30, 24],
                            "area": 720, "iscrowd": 0})  # fmt: skip
    data = (root / "019.jpg").read_bytes()
    (root / "019.jpg").write_bytes(data[: len(data) // 2])
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [{"id": 1, "name": "thing"}]}))  # fmt: skip
    return str(ann), str(root), str(root / "019.jpg")


def test_a_truncated_image_stops_the_run_naming_it_after_saving(
    teacher, tmp_path, coco_with_a_truncated_image
):
    ann, root, bad = coco_with_a_truncated_image
    out = str(tmp_path / "run")
    argv = _argv(teacher, out, "SOLVER.MAX_ITER", "200", "SOLVER.CHECKPOINT_PERIOD", "1000",
                 "DATASETS.TRAIN", "('faulty',)", "SEED", "3")  # fmt: skip
    argv[2:2] = ["--coco-dataset", "faulty", ann, root]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"train_net.py: error: training image {bad} of dataset 'faulty' cannot be used" in (
        done.stderr
    )
    assert "image file is truncated" in done.stderr and "--resume" in done.stderr
    assert "Traceback" not in done.stderr
    # the state of the last complete iteration was saved, where the run met the image
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    met = re.search(r"The run stopped at iteration (\d+): saved (model_\d+)\.pth", log)
    assert met, "the image came first (nothing to save yet): choose another SEED for this test"
    stopped_at, name = int(met.group(1)), met.group(2)
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == f"{name}.pth"
    saved = torch.load(os.path.join(out, f"{name}.pth"), weights_only=False)
    assert saved["iteration"] == stopped_at - 1 >= 0


def test_the_checked_mapper_names_each_kind_of_bad_image(tmp_path, coco_with_a_truncated_image):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    ann, root, bad = coco_with_a_truncated_image
    if "checked_mapper_set" not in DatasetCatalog.list():
        register_coco_instances("checked_mapper_set", {}, ann, root)
    assert MetadataCatalog.get("checked_mapper_set").image_root == root

    def read(d):
        image = read_image(d["file_name"], "BGR")
        if image.shape[:2] != (d["height"], d["width"]):
            from detectron2.data.detection_utils import SizeMismatchError

            raise SizeMismatchError(f"{image.shape[:2]} vs {(d['height'], d['width'])}")
        return image

    mapper = CheckedMapper(read, ["other", "checked_mapper_set"])
    good = os.path.join(root, "000.jpg")
    assert mapper({"file_name": good, "height": 64, "width": 64}).shape == (64, 64, 3)
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    _write_jpeg(os.path.join(root, "small.jpg"), size=(32, 32))
    cases = [
        (bad, "image file is truncated", "'checked_mapper_set'"),
        (os.path.join(root, "gone.jpg"), "No such file", "'checked_mapper_set'"),
        (os.path.join(root, "small.jpg"), "SizeMismatchError", "'checked_mapper_set'"),
        (str(tmp_path / "junk.jpg"), "UnidentifiedImageError", "one of ['other', 'checked"),
    ]
    for path, what, dataset in cases:
        with pytest.raises(DataError, match="cannot be used") as e:
            mapper({"file_name": path, "height": 64, "width": 64})
        message = str(e.value)
        assert path in message and what in message and f"of dataset {dataset}" in message


def test_resume_with_a_changed_config_lists_the_changes(teacher, tmp_path):
    out = str(tmp_path / "run")
    first = subprocess.run(_argv(teacher, out, "SOLVER.MAX_ITER", "2"), capture_output=True,
                           text=True)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    changed = [
        "MODEL.DISTILL.MIMIC.WEIGHT",
        "0.5",
        "MODEL.DISTILL.MIMIC.IN_FEATURES",
        "['p2', 'p3']",
    ]
    argv = _argv(teacher, out, "SOLVER.MAX_ITER", "4", *changed, flags=["--resume"])
    refused = subprocess.run(argv, capture_output=True, text=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    err = refused.stderr
    assert "--resume would continue" in err and "with another configuration" in err
    assert "MODEL.DISTILL.MIMIC.WEIGHT: 0.01 -> 0.5" in err
    assert "MODEL.DISTILL.MIMIC.IN_FEATURES:" in err and "SOLVER.MAX_ITER" not in err
    assert "The checkpoint is valid" in err and "delete" not in err
    assert max(_iterations(out)) == 1  # nothing trained
    # ... unless asked: it then continues with the new config (a structure it can load)
    argv = _argv(teacher, out, "SOLVER.MAX_ITER", "4", *changed[:2],
                 flags=["--resume", "--allow-config-change"])  # fmt: skip
    allowed = subprocess.run(argv, capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert max(_iterations(out)) == 3
    # another structure (fewer levels: no adapters for p4-p6) cannot continue the run
    argv = _argv(teacher, out, "SOLVER.MAX_ITER", "6", *changed,
                 flags=["--resume", "--allow-config-change"])  # fmt: skip
    other = subprocess.run(argv, capture_output=True, text=True)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert (
        "does not fit the model of this config (not in the model: ['terms.0.adapters.p4"
        in (other.stderr)
        or "does not fit the model and optimizer" in other.stderr
    ), other.stderr[-2000:]
    assert "delete" not in other.stderr
    # a changed teacher file (its contents) is a change too
    other_teacher = str(tmp_path / "other_teacher.pth")
    state = torch.load(teacher, weights_only=False)
    next(iter(state["model"].values())).add_(1.0)
    torch.save(state, other_teacher)
    swapped = _argv(other_teacher, out, "SOLVER.MAX_ITER", "6", *changed[:2], flags=["--resume"])
    refused = subprocess.run(swapped, capture_output=True, text=True)
    assert refused.returncode == 2 and "teacher weights (contents)" in refused.stderr


def test_leftovers_of_interrupted_saves_are_removed(tmp_path):
    (tmp_path / "model_0000009.partial.pth").write_bytes(b"half")
    (tmp_path / "last_checkpoint.partial").write_text("model_0000009.partial.pth")
    (tmp_path / "model_0000004.pth").write_bytes(b"a complete one")
    removed = remove_partials(str(tmp_path))
    assert sorted(removed) == ["last_checkpoint.partial", "model_0000009.partial.pth"]
    assert sorted(os.listdir(tmp_path)) == ["model_0000004.pth"]


def test_the_preemption_handler_leaves_forked_processes_their_sigterm():
    """While training, SIGTERM only marks the run for a checkpoint; a process forked meanwhile (a
    data-loading worker, the process pool of Cityscapes' loader) must still end on it, or its
    parent's terminate() / join() hangs. The handlers are restored afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    hook = PreemptionHook(checkpointer=None)
    hook.before_train()
    try:
        fork = multiprocessing.get_context("fork")
        ready = fork.Event()

        def sleeper():
            ready.set()
            time.sleep(60)

        child = fork.Process(target=sleeper)
        child.start()
        assert ready.wait(20)  # running: a signal just at the fork would be Python's own race
        child.terminate()
        child.join(timeout=20)
        assert child.exitcode == -signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # this process: noted, not ended
        time.sleep(0.1)
        assert hook._signal == signal.SIGTERM
    finally:
        hook.after_train()
        hook.after_train()  # idempotent: the trainers call it again when their loop ends
        hook.restore_sigchld()  # stopping_on_signals' last step, once a signal came
    assert signal.getsignal(signal.SIGTERM) is previous


class _FailingSIGCHLD(Exception):
    pass


def test_a_worker_ending_while_the_preemption_checkpoint_is_saved_does_not_fail_the_save():
    """CI saw it: SIGTERM to the process group stopped the run between two steps; the trainer's
    loop ran ``after_train`` on its way out (which restored PyTorch's SIGCHLD handler), then a
    data-loading worker died of the signal while stopping_on_signals saved, and PyTorch's handler
    raised in the save. The expected end of the workers is absorbed until the save is done."""
    from d2dist.engine.faults import Preempted, stopping_on_signals

    def pytorch_like(signum, frame):  # PyTorch's: raises that a worker was killed
        raise _FailingSIGCHLD("DataLoader worker is killed by signal: Terminated.")

    class Checkpointer:
        save_dir = "nowhere"
        saved = []

        def save(self, name, **kwargs):
            os.kill(os.getpid(), signal.SIGCHLD)  # a worker ends now
            time.sleep(0.05)
            self.saved.append(name)

    class Trainer:
        iter, max_iter = 7, 100

    hook = PreemptionHook(checkpointer=Checkpointer())
    previous = signal.signal(signal.SIGCHLD, pytorch_like)
    try:
        hook.before_train()
        hook.interruptible = True
        with pytest.raises(Preempted) as stopped:
            with stopping_on_signals(Trainer(), hook):
                try:  # the loop, between two steps: the signal comes
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(1)
                finally:
                    hook.after_train()  # as TrainerBase.train's own finally
        assert stopped.value.code == 128 + signal.SIGTERM
        assert Checkpointer.saved == ["model_0000007"]
        assert signal.getsignal(signal.SIGCHLD) is pytorch_like  # given back after the save
    finally:
        signal.signal(signal.SIGCHLD, previous)


def test_a_process_forked_during_training_has_the_process_s_own_handlers():
    """Restored at the fork (os.register_at_fork), with SIGTERM blocked across it: a signal that
    came between the fork and CPython's reinitialisation of the child is not lost."""
    signals = PreemptionHook.SIGNALS
    own = [repr(signal.getsignal(s)) for s in signals]  # pytest's, or a test worker's
    hook = PreemptionHook(checkpointer=None)
    hook.before_train()
    try:
        fork = multiprocessing.get_context("fork")
        queue = fork.SimpleQueue()

        def report():
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            queue.put(([repr(signal.getsignal(s)) for s in signals],
                       [s in blocked for s in signals]))  # fmt: skip

        child = fork.Process(target=report)
        child.start()
        assert queue.get() == (own, [False, False])
        child.join(timeout=20)
        assert signal.getsignal(signal.SIGTERM) == hook._note  # this process: the hook's
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        hook.after_train()


_POOL = """
import multiprocessing, sys
from d2dist.engine.faults import PreemptionHook
hook = PreemptionHook(checkpointer=None)
hook.before_train()
for _ in range(20):
    pool = multiprocessing.get_context("fork").Pool(4)  # as Detectron2's Cityscapes loader does
    assert pool.map(abs, range(-40, 0), chunksize=4) == list(range(40, 0, -1))
    pool.close()
    del pool  # its finaliser terminates its processes, racing the workers it still starts
hook.after_train()
print("done")
"""


def test_a_process_pool_made_during_training_ends():
    """Seen in CI: the pool's finaliser terminated a worker it had just forked; the signal came
    before the child was set up, was caught by the inherited handler and dropped, and the pool
    waited for that worker forever (every run hung at the first pool before the fix)."""
    proc = subprocess.run([sys.executable, "-c", _POOL], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]


def test_the_run_record_of_a_lazy_config_is_the_same_in_every_process():
    """A LazyConfig holds functions and classes (its _target_s): the record names them, so that a
    resumed run in a new process compares equal (a repr would hold their memory addresses)."""
    from detectron2.config import LazyConfig

    from d2dist.checkpoint.record import run_record

    config = os.path.join(SHAPES, "mask_rcnn_R18_FPN_1x.py")
    here = run_record(LazyConfig.load(config))["config"]
    code = (
        "import json, sys; from detectron2.config import LazyConfig; "
        "from d2dist.checkpoint.record import run_record; "
        "print(json.dumps(run_record(LazyConfig.load(sys.argv[1]))['config']))"
    )
    done = subprocess.run([sys.executable, "-c", code, config], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert here == there
    assert " at 0x" not in json.dumps(here)
    targets = [v for k, v in here.items() if k.endswith("_target_")]
    assert "detectron2.data.build.build_detection_train_loader" in targets


# ---- preemption edges (issue 22): whatever the run is doing, and the whole process group -------
LONG_EVALUATION = [  # one evaluation after each iteration, 60 passes over the tiny test set
    "DATASETS.TEST", "(" + "'d2dist_shapes_tiny_val', " * 60 + ")", "TEST.EVAL_PERIOD", "1",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
]  # fmt: skip


def _log(out):
    path = os.path.join(out, "log.txt")
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        return f.read()


def test_sigterm_during_an_evaluation_stops_it_at_once_with_a_checkpoint(teacher, tmp_path):
    """An evaluation (here about a minute: 60 passes) is stopped within seconds: a cluster's grace
    period would kill the run before a whole evaluation ends. The iteration before it was complete
    and is saved; --resume continues after it."""
    out = str(tmp_path / "run")
    argv = _argv(teacher, out, "SOLVER.MAX_ITER", "50", "SOLVER.CHECKPOINT_PERIOD", "1000")
    argv += LONG_EVALUATION  # after _argv's DATASETS.TEST (): the later value counts
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait(lambda: _log(out).count("Start inference on") >= 2, proc), "no evaluation"
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    took = time.time() - started
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert took < 15, f"the evaluation was not stopped: the run ended {took:.0f} s after SIGTERM"
    passes = _log(out).count("Start inference on")
    assert passes < 60, f"the evaluation was not stopped: all {passes} passes ran"
    assert "Traceback" not in err
    assert "Received SIGTERM at iteration 0 (after its training step: what ran after it, an " in (
        _log(out)
    )
    assert "was stopped): saved model_0000000.pth" in _log(out)
    saved = torch.load(os.path.join(out, "model_0000000.pth"), weights_only=False)
    assert saved["iteration"] == 0
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000000.pth"


def test_sigterm_to_the_process_group_with_data_loading_workers(teacher, tmp_path):
    """Schedulers send SIGTERM to every process of the job: the data-loading workers die of it.
    The run still ends as preempted (status 143, a checkpoint, no traceback)."""
    out = str(tmp_path / "run")
    argv = _argv(teacher, out, "SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "1000",
                 "DATALOADER.NUM_WORKERS", "2")  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    assert _wait(lambda: any(i >= 19 for i in _iterations(out)), proc), "no progress in time"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "is killed by signal" not in err, err[-3000:]
    with open(os.path.join(out, "last_checkpoint")) as f:
        name = f.read().strip()
    assert torch.load(os.path.join(out, name), weights_only=False)["iteration"] >= 19


# ---- the environment (issue 22): a checkpoint that cannot be written, a lock of another user ----
def _file_size_limit(limit):
    def limited():  # in the child: writing past `limit` bytes fails with EFBIG (File too large)
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limited


def test_a_checkpoint_that_cannot_be_written_stops_the_run_keeping_the_last(teacher, tmp_path):
    """Writing a checkpoint fails (the file-size limit: the same path as a full disk): the run
    stops with one message naming the file, the cause and the checkpoint kept, which is intact."""
    out = str(tmp_path / "run")
    first = subprocess.run(_argv(teacher, out, "SOLVER.MAX_ITER", "2"), capture_output=True,
                           text=True)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    size = os.path.getsize(os.path.join(out, "model_final.pth"))
    argv = _argv(teacher, out, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1",
                 flags=["--resume"])  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True,
                          preexec_fn=_file_size_limit(4 << 20))  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    message = done.stderr.strip().splitlines()[-1]
    assert re.search(
        r"train_net.py: error: could not write the checkpoint .*run/model_0000002.pth: the file is "
        r"larger than this process may write .*File too large.*The run stopped; the last complete "
        r"checkpoint, .*run/model_final.pth, is as it was",
        message,
    ), message
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    assert os.path.getsize(os.path.join(out, "model_final.pth")) == size
    assert not [f for f in os.listdir(out) if ".partial" in f]


def test_a_lock_file_of_another_user_is_a_clear_error(teacher, tmp_path, monkeypatch):
    """OUTPUT_DIR holds the lock file of another user's run, which this user may not open. Run as
    a user (a real subprocess), the file's permissions refuse it; run as root, whom no permission
    refuses, the refusal is injected where the file is opened."""
    out = str(tmp_path / "theirs")
    os.makedirs(out)
    lock = os.path.join(out, LOCK_NAME)
    with open(lock, "w") as f:
        f.write('{"pid": 1, "host": "elsewhere", "started": "earlier", "command": "theirs"}')
    expected = (
        rf"could not open the run lock '{re.escape(lock)}' of OUTPUT_DIR '.*': permission denied "
        r".*names the run that created it \(process 1 on elsewhere, started earlier: theirs\)"
    )
    if os.geteuid() != 0:
        os.chmod(lock, 0)
        done = subprocess.run(_argv(teacher, out, "SOLVER.MAX_ITER", "1"), capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert re.search(expected, done.stderr), done.stderr[-2000:]
        return
    import errno

    import d2dist.engine.runlock as runlock

    opened = os.open

    def refused(path, *args, **kwargs):
        if path == lock:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(runlock.os, "open", refused)
    with pytest.raises(RunFault, match=expected):
        runlock.OutputDirLock(out).acquire()


# ---- nothing written before is lost (issue 22) --------------------------------------------------
def _digests(out):
    import hashlib

    return {
        name: hashlib.sha256(open(os.path.join(out, name), "rb").read()).hexdigest()
        for name in sorted(os.listdir(out))
        if name.endswith((".pth", ".yaml"))
    }


def test_no_earlier_checkpoint_or_export_is_overwritten(teacher, tmp_path):
    """Real processes: a run whose last_checkpoint was lost is neither overwritten by a new run
    nor resumed by a guess; an export never replaces an earlier one unless asked to."""
    out = str(tmp_path / "run")
    done = subprocess.run(_argv(teacher, out, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD",
                                "1"), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    os.remove(os.path.join(out, "last_checkpoint"))
    before = _digests(out)
    assert {"model_0000000.pth", "model_final.pth", "config.yaml"} <= set(before)
    for flags, message in (
        ((), r"holds checkpoints of an earlier run \(model_0000000.pth, .*model_final.pth\), "
             r"without a last_checkpoint"),
        (("--resume",), r"--resume: OUTPUT_DIR .* holds checkpoints \(model_0000000.pth, "
                        r".*model_final.pth\) but no last_checkpoint naming the one to continue"),
    ):  # fmt: skip
        again = subprocess.run(_argv(teacher, out, "SOLVER.MAX_ITER", "4", flags=flags),
                               capture_output=True, text=True)  # fmt: skip
        assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-3000:]
        assert re.search(message, again.stderr), again.stderr[-2000:]
        assert _digests(out) == before
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_final.pth")
    export = [sys.executable, os.path.join(REPO, "tools", "export_student.py"), "--run-dir", out]
    first = subprocess.run(export, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    exported = _digests(out)
    os.utime(os.path.join(out, "student.pth"), (0, 0))
    second = subprocess.run(export, capture_output=True, text=True)
    assert second.returncode == 2 and "exist already" in second.stderr, second.stderr[-2000:]
    assert _digests(out) == exported and os.path.getmtime(os.path.join(out, "student.pth")) == 0
    third = subprocess.run(export + ["--overwrite"], capture_output=True, text=True)
    assert third.returncode == 0 and os.path.getmtime(os.path.join(out, "student.pth")) > 0
