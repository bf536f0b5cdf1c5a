"""tools/study.py and tools/demo.py: run planning, reading runs, aggregation, the report, --quick."""

import json
import math
import os

import pytest
from _tools import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", "('d2dist_shapes_tiny_train',)",
    "DATASETS.TEST", "('d2dist_shapes_tiny_val',)",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
]  # fmt: skip


def _load(name):
    return load_tool(name)


@pytest.fixture(scope="module")
def study():
    return _load("study")


# ---- reading a run's files while it writes them ----------------------------------------------
def test_max_iter_is_none_until_config_is_written(study, tmp_path):
    assert study._max_iter(str(tmp_path)) is None  # no file yet
    (tmp_path / "config.yaml").write_text("")  # truncated, about to be written
    assert study._max_iter(str(tmp_path)) is None
    (tmp_path / "config.yaml").write_text("SOLVER:\n  MAX_IT")  # half written
    assert study._max_iter(str(tmp_path)) is None
    (tmp_path / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 1000\n")
    assert study._max_iter(str(tmp_path)) == 1000


def test_metrics_reader_stops_at_a_line_being_written(study, tmp_path):
    (tmp_path / "metrics.json").write_text('{"iteration": 19}\n{"iteration": 39}\n{"itera')
    assert study._read_metrics(str(tmp_path)) == [{"iteration": 19}, {"iteration": 39}]


def test_training_minutes_add_up_every_start_of_a_run(study, tmp_path):
    assert study._training_minutes(str(tmp_path)) == 0.0
    (tmp_path / "log.txt").write_text(
        "[11/22 03:46:11] d2.engine.hooks INFO: Total training time: 0:07:36 (0:00:00 on hooks)\n"
        "[11/22 03:58:14] d2.engine.hooks INFO: Total training time: 1:00:30 (0:00:00 on hooks)\n"
    )
    assert abs(study._training_minutes(str(tmp_path)) - (7.6 + 60.5)) < 1e-9


def test_loss_curves_split_student_and_distillation_losses(study, tmp_path):
    records = [
        {"iteration": 19, "loss_cls": 1.0, "loss_box_reg": 0.5, "loss_distill_dist": 0.25},
        {"iteration": 39, "loss_cls": 0.5, "loss_box_reg": 0.25, "loss_distill_dist": 0.125},
        {"bbox/AP": 3.0},
    ]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    curves = study.loss_curves(str(tmp_path))
    assert curves == {"detection": [(19, 1.5), (39, 0.75)], "distill": [(19, 0.25), (39, 0.125)]}


# ---- planning -----------------------------------------------------------------------------------
def test_every_method_names_an_existing_config(study):
    assert list(study.METHODS)[0] == "baseline"
    expected = {"baseline", "kd", "mimic", "reviewkd", "dist", "distplus", "distplus_acclim",
                "pkd", "cwd"}  # fmt: skip
    assert set(study.METHODS) == expected
    for m in [*study.METHODS.values()]:
        assert os.path.isfile(os.path.join(REPO, m.config)), m.config
    assert os.path.isfile(os.path.join(REPO, study.TEACHER_CONFIG))


def test_plan_trains_the_teacher_once_then_every_method_per_seed(study, tmp_path):
    jobs = study.plan(["baseline", "dist", "pkd"], [1, 2, 3], str(tmp_path), False, ["A", "1"])
    assert [j.name for j in jobs] == ["teacher"] + [
        f"{m}/seed{s}" for s in (1, 2, 3) for m in ("baseline", "dist", "pkd")
    ]
    teacher, *runs = jobs
    assert teacher.method is None and teacher.opts == ["A", "1"]
    weights = os.path.join(str(tmp_path), "teacher", "model_final.pth")
    for job in runs:
        assert job.opts[:4] == ["A", "1", "SEED", str(job.seed)]
        distilled = job.method.name != "baseline"
        assert job.needs_teacher == distilled
        assert ("MODEL.DISTILL.TEACHER.WEIGHTS" in job.opts) == distilled
        if distilled:
            assert job.opts[-1] == weights
    # Runs differ by seed; a retrained (other) teacher changes every distilled run.
    assert len({j.fingerprint for j in jobs}) == len(jobs)
    other = study.plan(["baseline", "dist"], [1], str(tmp_path), False, ["A", "2"])
    assert other[2].fingerprint != jobs[2].fingerprint
    again = study.plan(["baseline", "dist"], [1], str(tmp_path), False, ["A", "1"])
    assert again[2].fingerprint == jobs[2].fingerprint


def test_plan_without_distillation_has_no_teacher_and_quick_shortens(study, tmp_path):
    jobs = study.plan(["baseline"], [5], str(tmp_path), True, [])
    assert [j.name for j in jobs] == ["baseline/seed5"]
    opts = dict(zip(jobs[0].opts[::2], jobs[0].opts[1::2]))
    assert opts["SOLVER.MAX_ITER"] == str(study.QUICK_ITERS["student"])
    assert opts["SEED"] == "5"


def test_quick_runs_never_share_the_study_directory(study):
    assert study.default_output_dir(False).endswith(os.path.join("output", "study"))
    assert study.default_output_dir(True) != study.default_output_dir(False)


def test_plan_rejects_unknown_methods_and_no_seeds(study, tmp_path):
    with pytest.raises(SystemExit, match=r"unknown method\(s\) \['dsit'\]"):
        study.plan(["dsit"], [1], str(tmp_path), False, [])
    with pytest.raises(SystemExit, match="--seeds is empty"):
        study.plan(["baseline"], [], str(tmp_path), False, [])


def test_demo_is_the_study_with_one_seed_and_the_main_methods(study):
    assert study.DEMO_METHODS == ("baseline", "reviewkd", "dist", "distplus")


# ---- aggregation and report ---------------------------------------------------------------------
def _job(study, method, seed, ap):
    job = study.Job(f"{method}/seed{seed}", study.METHODS[method].config, [], study.METHODS[method],
                    seed)  # fmt: skip
    job.results = {"time_min": 2.0, **{f"bbox/{m}": ap for m in study.METRICS}}
    return job


def test_aggregate_means_stds_gains_and_honest_verdicts(study):
    jobs = [
        *(_job(study, "baseline", s, ap) for s, ap in [(1, 10.0), (2, 11.0), (3, 12.0)]),
        *(_job(study, "dist", s, ap) for s, ap in [(1, 14.0), (2, 15.0), (3, 16.0)]),
        *(_job(study, "kd", s, ap) for s, ap in [(1, 9.0), (2, 12.0), (3, 13.0)]),
        *(_job(study, "pkd", s, ap) for s, ap in [(1, 5.0), (2, 6.0), (3, 7.0)]),
    ]
    rows = {r["method"]: r for r in study.aggregate(jobs)}
    assert rows["baseline"]["mean"] == pytest.approx(11.0)
    assert rows["baseline"]["std"] == pytest.approx(1.0)
    assert "gain" not in rows["baseline"]
    assert rows["dist"]["gain"] == pytest.approx(4.0)
    assert rows["dist"]["verdict"] == "helps"  # 4 > 2 * sqrt(1/3 + 1/3)
    assert rows["kd"]["gain"] == pytest.approx(1 / 3)
    assert rows["kd"]["verdict"] == "within noise"
    assert rows["pkd"]["verdict"] == "hurts"
    assert rows["dist"]["ap"] == [14.0, 15.0, 16.0] and rows["dist"]["seeds"] == [1, 2, 3]
    tiny_loss = study.aggregate([_job(study, "baseline", 1, 10.0), _job(study, "kd", 1, 9.96)])
    assert "| +0.0 " in study.table(tiny_loss)  # no "-0.0"
    one = study.aggregate([_job(study, "baseline", 1, 10.0), _job(study, "dist", 1, 12.0)])
    assert one[1]["verdict"] == "one seed" and math.isnan(one[1]["std"])


def test_report_has_the_table_the_charts_and_the_commands(study, tmp_path):
    out = tmp_path / "runs"
    teacher = study.Job("teacher", study.TEACHER_CONFIG, [])
    teacher.results = {"time_min": 5.0, "bbox/AP": 20.0}
    jobs = [teacher] + [
        _job(study, m, s, ap)
        for m, aps in [("baseline", (10.0, 12.0)), ("reviewkd", (15.0, 15.5))]
        for s, ap in zip((1, 2), aps)
    ]
    for job in jobs[1:]:  # loss curves of the runs
        os.makedirs(out / job.name)
        (out / job.name / "metrics.json").write_text(
            json.dumps({"iteration": 19, "loss_cls": 1.0, "loss_distill_reviewkd": 0.5}) + "\n"
        )
    (out / "baseline/seed1" / "config.yaml").write_text(
        "SOLVER:\n  MAX_ITER: 600\n  IMS_PER_BATCH: 4\n  BASE_LR: 0.02\n  STEPS: [480, 570]\n"
    )
    path = study.write_report(jobs, str(out), str(tmp_path / "report"), prefix="results",
                              invocation="python tools/study.py --seeds 1 2", wall_min=3.0,
                              parallel=2)  # fmt: skip
    text = open(path).read()
    assert "box AP **20.0**" in text  # the teacher
    assert "unknown (no readable config.yaml)" in text  # the teacher's run has no config.yaml
    assert "600 iterations of 4 images, SGD lr 0.02 (x0.1 at 480, 570)" in text
    assert "| ReviewKD" in text and "+4.2" in text and "15.0 / 15.5" in text
    assert "python tools/study.py --seeds 1 2" in text
    assert "python tools/train_net.py --config-file configs/Shapes-Detection/" in text
    assert "report rewritten" not in text  # a timed run
    for png in ("results_ap.png", "results_loss_curves.png"):
        assert f"]({png})" in text
        with open(tmp_path / "report" / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ---- --quick, end to end (real runs of two iterations) ------------------------------------------
def test_quick_study_trains_the_teacher_then_the_runs_and_writes_the_report(study, tmp_path):
    out, report = tmp_path / "runs", tmp_path / "report"
    jobs = study.main(["--quick", "--seeds", "4", "5", "--methods", "baseline", "dist", "--jobs",
                       "2", "--output-dir", str(out), "--report", str(report), *TINY])  # fmt: skip
    assert [j.name for j in jobs] == ["teacher", "baseline/seed4", "dist/seed4"]  # one seed
    for job in jobs:
        assert "bbox/AP" in job.results, job.name
        assert os.path.isfile(out / job.name / "model_final.pth")
    first = {j.name: j.results["bbox/AP"] for j in jobs}
    text = (report / "results_quick.md").read_text()
    assert "| student baseline" in text and "| DIST (RoI logits)" in text
    assert (report / "results_quick_ap.png").is_file()
    # A second study reuses the finished runs: it only re-evaluates them.
    mtime = os.path.getmtime(out / "dist/seed4" / "model_final.pth")
    again = study.main(["--quick", "--seeds", "4", "--methods", "baseline", "dist", "--output-dir",
                        str(out), "--report", str(report), *TINY])  # fmt: skip
    assert {j.name: j.results["bbox/AP"] for j in again} == first
    assert os.path.getmtime(out / "dist/seed4" / "model_final.pth") == mtime
    # --report-only reads the finished runs and trains nothing; unfinished runs are named.
    args = ["--quick", "--output-dir", str(out), "--report", str(report / "again"), *TINY]
    jobs = study.main(["--methods", "baseline", "dist", "--seeds", "4", "--report-only", *args])
    assert {j.name: j.results["bbox/AP"] for j in jobs} == first
    assert (
        "rewritten from them by `--report-only`" in (report / "again/results_quick.md").read_text()
    )
    with pytest.raises(SystemExit, match=r"have not finished .*\['kd/seed1'\]"):
        study.main(["--methods", "kd", "--seeds", "1", "--report-only", *args])
