"""Recorder: forward hooks on ``named_modules()`` paths, removed on exit, with early stopping."""

import pytest
import torch
from torch import nn

from d2dist.modeling.recorder import Recorder, RecorderError, StopForward


class _Counting(nn.Module):
    """Adds ``delta`` to its input and counts its calls."""

    def __init__(self, delta: float):
        super().__init__()
        self.delta = delta
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + self.delta


class _Net(nn.Module):
    """``a.b`` and ``a.c`` run in order, then ``d`` twice, then ``e``; ``unused`` never runs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential()
        self.a.add_module("b", _Counting(1.0))
        self.a.add_module("c", _Counting(10.0))
        self.d = _Counting(100.0)
        self.e = _Counting(1000.0)
        self.unused = _Counting(-1.0)

    def forward(self, x):
        x = self.a(x)
        x = self.d(x)
        x = self.d(x)
        return self.e(x)


def _all_modules_hook_free(model: nn.Module) -> bool:
    return all(
        len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in model.modules()
    )


def test_records_outputs_and_inputs_of_nested_paths():
    model = _Net()
    x = torch.zeros(2, 3)
    with Recorder(model, outputs=["a.b", "a"], inputs=["a.c", "e"]) as rec:
        y = rec.run(model, x)
    # a.b: 0 + 1 = 1; a.c: 1 + 10 = 11 (= a's output); d twice: 111, 211; e: 1211.
    assert torch.equal(y, torch.full((2, 3), 1211.0))
    assert torch.equal(rec.output("a.b"), torch.full((2, 3), 1.0))
    assert torch.equal(rec.output("a"), torch.full((2, 3), 11.0))
    # Inputs are the positional argument tuple.
    inp_c = rec.input("a.c")
    assert isinstance(inp_c, tuple) and len(inp_c) == 1
    assert torch.equal(inp_c[0], torch.full((2, 3), 1.0))
    assert torch.equal(rec.input("e")[0], torch.full((2, 3), 211.0))


def test_one_entry_per_call_in_call_order():
    model = _Net()
    x = torch.zeros(1, 2)
    with Recorder(model, outputs=["d"], inputs=["d"]) as rec:
        rec.run(model, x)
    outs = rec.all_outputs("d")
    assert len(outs) == 2
    assert torch.equal(outs[0], torch.full((1, 2), 111.0))
    assert torch.equal(outs[1], torch.full((1, 2), 211.0))
    assert torch.equal(rec.output("d", 0), outs[0])
    assert torch.equal(rec.output("d", 1), outs[1])
    assert torch.equal(rec.output("d"), outs[1])  # default: the last call
    ins = rec.all_inputs("d")
    assert [i[0][0, 0].item() for i in ins] == [11.0, 111.0]
    assert torch.equal(rec.input("d", 0)[0], ins[0][0])
    assert torch.equal(rec.input("d")[0], ins[1][0])


def test_duplicate_paths_record_once_per_call():
    model = _Net()
    with Recorder(model, outputs=["a.b", "a.b"]) as rec:
        rec.run(model, torch.zeros(1))
    assert len(rec.all_outputs("a.b")) == 1


def test_hooks_present_inside_and_removed_on_exit():
    model = _Net()
    assert _all_modules_hook_free(model)
    with Recorder(model, outputs=["a.b", "d"], inputs=["e"]):
        assert len(model.a.b._forward_hooks) == 1
        assert len(model.d._forward_hooks) == 1
        assert len(model.e._forward_pre_hooks) == 1
    assert _all_modules_hook_free(model)
    # After exit nothing more is recorded.
    with Recorder(model, outputs=["a.b"]) as rec:
        pass
    model(torch.zeros(1))
    with pytest.raises(RecorderError, match="did not run"):
        rec.output("a.b")


def test_hooks_removed_when_body_raises():
    model = _Net()
    with pytest.raises(KeyError, match="boom"):
        with Recorder(model, outputs=["a.b", "d"], inputs=["a.c"]) as rec:
            rec.run(model, torch.zeros(1))
            raise KeyError("boom")
    assert _all_modules_hook_free(model)


def test_hooks_removed_when_forward_raises():
    class _Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.ok = nn.Identity()

        def forward(self, x):
            self.ok(x)
            raise RuntimeError("forward failed")

    model = _Fails()
    with pytest.raises(RuntimeError, match="forward failed"):
        with Recorder(model, outputs=["ok"], inputs=["ok"]) as rec:
            rec.run(model, torch.zeros(1))
    assert _all_modules_hook_free(model)


def test_missing_path_raises_at_construction_listing_submodules():
    model = _Net()
    with pytest.raises(RecorderError, match=r"_Net has no submodule \['a\.x'\]") as info:
        Recorder(model, outputs=["a.x"])
    msg = str(info.value)
    for name in ("'a'", "'a.b'", "'a.c'", "'d'", "'e'"):
        assert name in msg
    with pytest.raises(RecorderError, match=r"no submodule \['nope'\]"):
        Recorder(model, inputs=["nope"])
    assert _all_modules_hook_free(model)


def test_source_that_never_fired_raises_did_not_run():
    model = _Net()
    with Recorder(model, outputs=["unused"], inputs=["unused"]) as rec:
        rec.run(model, torch.zeros(1))
    with pytest.raises(RecorderError, match=r"_Net\.unused did not run"):
        rec.output("unused")
    with pytest.raises(RecorderError, match="did not run"):
        rec.input("unused")
    with pytest.raises(RecorderError, match="did not run"):
        rec.all_outputs("unused")


def test_reading_unrequested_path_raises():
    model = _Net()
    with Recorder(model, outputs=["a.b"], inputs=["e"]) as rec:
        rec.run(model, torch.zeros(1))
    with pytest.raises(RecorderError, match="'d' was not recorded"):
        rec.output("d")
    # Requested as an input only, read as an output (and vice versa).
    with pytest.raises(RecorderError, match="'e' was not recorded"):
        rec.output("e")
    with pytest.raises(RecorderError, match="'a.b' was not recorded"):
        rec.input("a.b")


def test_stop_after_ends_forward_after_that_module():
    model = _Net()
    with Recorder(model, outputs=["a.c"], stop_after="a.c") as rec:
        result = rec.run(model, torch.zeros(1, 2))
    assert result is None
    assert torch.equal(rec.output("a.c"), torch.full((1, 2), 11.0))
    assert (model.a.b.calls, model.a.c.calls, model.d.calls, model.e.calls) == (1, 1, 0, 0)
    assert _all_modules_hook_free(model)


def test_stop_after_at_first_call_of_repeated_module():
    model = _Net()
    with Recorder(model, outputs=["d", "a.b"], stop_after="d") as rec:
        assert rec.run(model, torch.zeros(1)) is None
    assert model.d.calls == 1 and model.e.calls == 0
    assert len(rec.all_outputs("d")) == 1
    assert rec.output("d").item() == 111.0
    assert rec.output("a.b").item() == 1.0


def test_stop_after_never_reached_returns_result():
    model = _Net()
    with Recorder(model, outputs=["unused"], stop_after="unused") as rec:
        y = rec.run(model, torch.zeros(1))
    assert y.item() == 1211.0
    assert model.e.calls == 1


def test_stop_forward_outside_run_propagates_and_hooks_are_removed():
    model = _Net()
    with pytest.raises(StopForward):
        with Recorder(model, outputs=["a.b"], stop_after="a.b"):
            model(torch.zeros(1))
    assert model.a.c.calls == 0
    assert _all_modules_hook_free(model)


def test_run_passes_args_and_kwargs():
    model = _Net()
    with Recorder(model, outputs=["e"]) as rec:
        y = rec.run(lambda x, scale: model(x) * scale, torch.zeros(1), scale=2.0)
    assert y.item() == 2422.0


def test_stop_after_must_be_an_output():
    model = _Net()
    with pytest.raises(ValueError, match=r"stop_after='d' must be one of outputs=\('a\.b',\)"):
        Recorder(model, outputs=["a.b"], inputs=["d"], stop_after="d")
    assert _all_modules_hook_free(model)
