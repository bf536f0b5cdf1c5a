"""tools/demo.py's pieces that do not train: reading a run's files while it writes them."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "tools", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_max_iter_is_none_until_config_is_written(tmp_path):
    demo = _demo()
    assert demo._max_iter(str(tmp_path)) is None  # no file yet
    (tmp_path / "config.yaml").write_text("")  # truncated, about to be written
    assert demo._max_iter(str(tmp_path)) is None
    (tmp_path / "config.yaml").write_text("SOLVER:\n  MAX_IT")  # half written
    assert demo._max_iter(str(tmp_path)) is None
    (tmp_path / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 1000\n")
    assert demo._max_iter(str(tmp_path)) == 1000


def test_metrics_reader_stops_at_a_line_being_written(tmp_path):
    demo = _demo()
    (tmp_path / "metrics.json").write_text('{"iteration": 19}\n{"iteration": 39}\n{"itera')
    assert demo._read_metrics(str(tmp_path)) == [{"iteration": 19}, {"iteration": 39}]


def test_every_demo_run_names_an_existing_config():
    demo = _demo()
    assert [r.name for r in demo.RUNS][:2] == ["teacher", "student"]
    for run in demo.RUNS:
        assert os.path.isfile(os.path.join(REPO, run.config)), run.config


def test_training_minutes_add_up_every_start_of_a_run(tmp_path):
    demo = _demo()
    assert demo._training_minutes(str(tmp_path)) == 0.0
    (tmp_path / "log.txt").write_text(
        "[11/22 03:46:11] d2.engine.hooks INFO: Total training time: 0:07:36 (0:00:00 on hooks)\n"
        "[11/22 03:58:14] d2.engine.hooks INFO: Total training time: 1:00:30 (0:00:00 on hooks)\n"
    )
    assert abs(demo._training_minutes(str(tmp_path)) - (7.6 + 60.5)) < 1e-9
