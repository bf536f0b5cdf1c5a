"""Pure loss functions (docs/methods.md: KD, feature mimicking) against naive references written
here."""

import math

import pytest
import torch
from _reference import rows, softmax

from d2dist.modeling import terms
from d2dist.modeling.terms import kd, mimic
from d2dist.modeling.terms.kd import binary_kd_loss, kd_loss
from d2dist.modeling.terms.mimic import mimic_loss

LOSSES = [kd_loss, binary_kd_loss, mimic_loss]


# --- naive references: explicit Python loops in float64 -------------------------------------


_rows, _softmax = rows, softmax


def _kd_ref(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    losses = []
    for rs, rt in zip(_rows(s), _rows(t)):
        p_s, p_t = _softmax(rs, tau), _softmax(rt, tau)
        kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
        losses.append(tau**2 * kl)
    return sum(losses) / len(losses)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _binary_kd_ref(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    losses = []
    for rs, rt in zip(_rows(s), _rows(t)):
        row = 0.0
        for vs, vt in zip(rs, rt):
            p, q = _sigmoid(vt / tau), _sigmoid(vs / tau)
            row += tau**2 * (p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
        losses.append(row)
    return sum(losses) / len(losses)


def _mimic_ref(s: torch.Tensor, t: torch.Tensor) -> float:
    a, b = s.double().flatten().tolist(), t.double().flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def _close(value: torch.Tensor, ref: float, rel: float = 1e-5, abs_: float = 1e-6) -> None:
    assert value.item() == pytest.approx(ref, rel=rel, abs=abs_)


def _pair(*shape, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale, torch.randn(*shape, generator=g) * scale


# --- common contract -----------------------------------------------------------------------


def test_public_api_reexports_the_same_functions():
    assert terms.kd_loss is kd.kd_loss
    assert terms.binary_kd_loss is kd.binary_kd_loss
    assert terms.mimic_loss is mimic.mimic_loss


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_returns_0dim_float32(loss, shape, dtype):
    s, t = _pair(*shape)
    out = loss(s.to(dtype), t.to(dtype))
    assert out.dim() == 0
    assert out.dtype == torch.float32
    assert torch.isfinite(out)


@pytest.mark.parametrize("loss", LOSSES)
def test_identical_inputs_give_zero(loss):
    s, _ = _pair(5, 7)
    assert abs(loss(s, s.clone()).item()) < 1e-6
    s4, _ = _pair(2, 3, 2, 2)
    assert abs(loss(s4, s4.clone()).item()) < 1e-6


@pytest.mark.parametrize("loss", LOSSES)
def test_teacher_gets_no_gradient(loss):
    s, t = _pair(4, 5)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", LOSSES)
def test_shape_mismatch_names_both_shapes(loss):
    s, t = torch.zeros(2, 3), torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"student \(2, 3\) and teacher \(2, 4\)"):
        loss(s, t)


@pytest.mark.parametrize("loss", [kd_loss, binary_kd_loss])
def test_three_dim_logits_raise(loss):
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, H, W\).*\(2, 3, 4\)"):
        loss(x, x.clone())


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", [(0, 5), (0, 3, 2, 2)])
def test_empty_batch_gives_zero_and_backward_works(loss, shape):
    s = torch.zeros(*shape, requires_grad=True)
    t = torch.zeros(*shape)
    out = loss(s, t)
    assert out.dim() == 0 and out.dtype == torch.float32
    assert out.item() == 0.0
    out.backward()
    assert s.grad is not None and s.grad.shape == s.shape


# --- kd_loss -------------------------------------------------------------------------------


def test_kd_fixed_value():
    # s = [0, ln 3], t = [ln 3, 0], tau = 1:
    #   p_t = softmax(t) = (3/4, 1/4), p_s = softmax(s) = (1/4, 3/4)
    #   KL(p_t || p_s) = 3/4 ln((3/4)/(1/4)) + 1/4 ln((1/4)/(3/4)) = 3/4 ln 3 - 1/4 ln 3
    #                  = 0.5 ln 3 = 0.5493061...
    ln3 = math.log(3.0)
    s, t = torch.tensor([[0.0, ln3]]), torch.tensor([[ln3, 0.0]])
    _close(kd_loss(s, t, tau=1.0), 0.5 * ln3)
    assert 0.5 * ln3 == pytest.approx(0.549306, abs=1e-6)
    # Default tau is 1.
    _close(kd_loss(s, t), 0.5 * ln3)
    # Logits doubled with tau = 2 give the same distributions, times tau^2 = 4: 2 ln 3.
    _close(kd_loss(2 * s, 2 * t, tau=2.0), 2.0 * ln3)
    # A second, identical row contributes 0, so the row mean halves the value: 0.25 ln 3.
    s2 = torch.tensor([[0.0, ln3], [1.0, 2.0]])
    t2 = torch.tensor([[ln3, 0.0], [1.0, 2.0]])
    _close(kd_loss(s2, t2), 0.25 * ln3)


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_kd_matches_naive_reference_2d(tau):
    s, t = _pair(6, 5, seed=1)
    _close(kd_loss(s, t, tau), _kd_ref(s, t, tau))


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_kd_matches_naive_reference_4d(tau):
    # C, H, W all differ so that any wrong flattening gives different rows.
    s, t = _pair(2, 3, 4, 5, seed=2)
    _close(kd_loss(s, t, tau), _kd_ref(s, t, tau))


def test_kd_gradient_matches_closed_form():
    # d/ds_ic of tau^2/N * sum_i KL(p_t,i || p_s,i) = tau/N * (p_s,ic - p_t,ic).
    tau = 2.0
    s, t = _pair(3, 4, seed=3)
    s.requires_grad_(True)
    kd_loss(s, t, tau).backward()
    expected = tau / 3 * (torch.softmax(s.detach() / tau, 1) - torch.softmax(t / tau, 1))
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-6)


def test_kd_invariant_to_per_row_constants():
    s, t = _pair(4, 6, seed=4)
    shift = torch.tensor([[5.0], [-3.0], [100.0], [0.5]])
    base = kd_loss(s, t, 2.0)
    torch.testing.assert_close(kd_loss(s + shift, t, 2.0), base, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kd_loss(s, t - shift, 2.0), base, rtol=1e-5, atol=1e-6)


def test_kd_non_negative():
    for seed in range(5):
        s, t = _pair(8, 5, scale=3.0, seed=seed)
        assert kd_loss(s, t, 1.0).item() >= 0.0
        assert kd_loss(s, t, 4.0).item() >= 0.0
    # Nearly identical inputs: a value that must be ~0 must not come out negative.
    s, _ = _pair(8, 5, seed=9)
    assert kd_loss(s, s + 1e-4, 1.0).item() >= -1e-7


def test_kd_changes_with_tau():
    s, t = _pair(5, 4, seed=5)
    values = [kd_loss(s, t, tau).item() for tau in (1.0, 2.0, 4.0)]
    assert values[0] != pytest.approx(values[1], rel=1e-3)
    assert values[1] != pytest.approx(values[2], rel=1e-3)


def test_kd_finite_for_huge_logits():
    s, t = _pair(4, 5, scale=1e4, seed=6)
    s.requires_grad_(True)
    out = kd_loss(s, t, 1.0)
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(s.grad).all()
    # Analytic: s = [1e4, 0], t = [0, 1e4]: p_t = (0, 1) to float precision, and
    # KL = -log p_s[1] = log(1 + e^1e4) = 1e4 (+ e^-1e4).
    out = kd_loss(torch.tensor([[1e4, 0.0]]), torch.tensor([[0.0, 1e4]]))
    _close(out, 1e4, rel=1e-6)


def test_kd_constant_rows():
    s = torch.zeros(3, 4)
    t = torch.full((3, 4), 7.0)
    assert abs(kd_loss(s, t).item()) < 1e-6  # both uniform
    _, t = _pair(3, 4, seed=7)
    out = kd_loss(s, t, 2.0)
    assert torch.isfinite(out)
    _close(out, _kd_ref(s, t, 2.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kd_low_precision_inputs(dtype):
    s, t = _pair(4, 6, seed=8)
    s, t = s.to(dtype), t.to(dtype)
    out = kd_loss(s, t, 2.0)
    assert out.dtype == torch.float32
    # The reference sees exactly the rounded low-precision values.
    _close(out, _kd_ref(s, t, 2.0), rel=1e-5)


# --- binary_kd_loss ------------------------------------------------------------------------


def test_binary_kd_fixed_value():
    # One logit, s = 0, t = ln 3, tau = 1: p = sigmoid(ln 3) = 3/4, q = sigmoid(0) = 1/2.
    #   KL = 3/4 ln((3/4)/(1/2)) + 1/4 ln((1/4)/(1/2)) = 3/4 ln(3/2) - 1/4 ln 2
    #      = 3/4 ln 3 - ln 2 = 0.1308120...
    ln3 = math.log(3.0)
    expected = 0.75 * ln3 - math.log(2.0)
    assert expected == pytest.approx(0.130812, abs=1e-6)
    _close(binary_kd_loss(torch.tensor([[0.0]]), torch.tensor([[ln3]]), tau=1.0), expected)
    # Channels are summed: two such channels in one row give twice the value.
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[ln3, ln3]])
    _close(binary_kd_loss(s, t), 2 * expected)
    # Rows are averaged: adding an identical (zero-loss) row halves it.
    s, t = torch.tensor([[0.0], [1.0]]), torch.tensor([[ln3], [1.0]])
    _close(binary_kd_loss(s, t), expected / 2)
    # Doubled logits with tau = 2: same probabilities, times tau^2 = 4.
    _close(binary_kd_loss(torch.tensor([[0.0]]), torch.tensor([[2 * ln3]]), 2.0), 4 * expected)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_binary_kd_matches_naive_reference_2d(tau):
    s, t = _pair(5, 6, seed=10)
    _close(binary_kd_loss(s, t, tau), _binary_kd_ref(s, t, tau))


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_binary_kd_matches_naive_reference_4d(tau):
    s, t = _pair(2, 3, 4, 5, seed=11)
    _close(binary_kd_loss(s, t, tau), _binary_kd_ref(s, t, tau))


def test_binary_kd_gradient_matches_closed_form():
    # d/ds_ic of tau^2/N * sum KL(Ber(p) || Ber(q)), q = sigmoid(s/tau): tau/N * (q - p).
    tau = 2.0
    s, t = _pair(3, 4, seed=12)
    s.requires_grad_(True)
    binary_kd_loss(s, t, tau).backward()
    expected = tau / 3 * (torch.sigmoid(s.detach() / tau) - torch.sigmoid(t / tau))
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-6)


def test_binary_kd_non_negative():
    for seed in range(5):
        s, t = _pair(6, 4, scale=3.0, seed=20 + seed)
        assert binary_kd_loss(s, t, 1.0).item() >= 0.0
        assert binary_kd_loss(s, t, 2.0).item() >= 0.0
    s, _ = _pair(6, 4, scale=3.0, seed=30)
    assert binary_kd_loss(s, s + 1e-4).item() >= -1e-7


@pytest.mark.parametrize("s, t", [(20.0, 19.0), (17.5, 17.0), (-20.0, -19.0), (-17.5, -17.0)])
def test_binary_kd_accurate_for_saturated_logits(s, t):
    # Near-saturated logits, where sigmoid(t) rounds to 1 in float32 for t > ~17. The KL is
    # tiny but positive (for s = 20, t = 19 it is ~2.06e-9) and the same for (s, t) and
    # (-s, -t), since KL(Ber(p) || Ber(q)) = KL(Ber(1-p) || Ber(1-q)); the float64 reference
    # is exact to ~1e-8 relative here. A KL computed in float32 from log-sigmoids achieves
    # ~1e-6 relative, so 1e-3 is a loose bound. A loss must never come out negative.
    out = binary_kd_loss(torch.tensor([[s]]), torch.tensor([[t]]))
    ref = _binary_kd_ref(torch.tensor([[s]]), torch.tensor([[t]]), 1.0)
    assert ref > 0
    assert out.item() >= 0.0
    assert out.item() == pytest.approx(ref, rel=1e-3, abs=1e-12)


def test_binary_kd_not_invariant_to_shifts():
    # Unlike softmax KD, a shared shift changes every sigmoid, so the loss changes.
    s, t = _pair(4, 3, seed=31)
    assert binary_kd_loss(s + 2.0, t + 2.0).item() != pytest.approx(
        binary_kd_loss(s, t).item(), rel=1e-3
    )


def test_binary_kd_finite_for_huge_logits():
    s, t = _pair(4, 5, scale=1e4, seed=32)
    s.requires_grad_(True)
    out = binary_kd_loss(s, t)
    assert torch.isfinite(out) and out.item() >= 0.0
    out.backward()
    assert torch.isfinite(s.grad).all()
    # Analytic: s = 1e4, t = -1e4: p = 0, q = 1 to float precision, and
    # KL = (1 - p) ln((1 - p)/(1 - q)) = -ln sigmoid(-1e4) = ln(1 + e^1e4) = 1e4 (+ e^-1e4).
    _close(binary_kd_loss(torch.tensor([[1e4]]), torch.tensor([[-1e4]])), 1e4, rel=1e-6)
    # Saturated and equal: 0.
    big = torch.tensor([[1e4, -1e4]])
    assert abs(binary_kd_loss(big, big.clone()).item()) < 1e-6


# --- mimic_loss ----------------------------------------------------------------------------


def test_mimic_fixed_value():
    # Differences (0, 2, 3, 0) -> squares (0, 4, 9, 0) -> mean 13/4 = 3.25.
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    assert mimic_loss(s, t).item() == 3.25


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4, 5), (7,)])
def test_mimic_matches_naive_reference(shape):
    s, t = _pair(*shape, seed=40)
    _close(mimic_loss(s, t), _mimic_ref(s, t))
    torch.testing.assert_close(mimic_loss(s, t), ((s - t) ** 2).mean())


def test_mimic_gradient_and_detached_teacher():
    s, t = _pair(2, 3, 2, 2, seed=41)
    s.requires_grad_(True)
    t.requires_grad_(True)
    mimic_loss(s, t).backward()
    assert t.grad is None
    torch.testing.assert_close(s.grad, 2 * (s.detach() - t.detach()) / s.numel())


def test_mimic_bf16_gives_float32():
    s, t = _pair(2, 4, 3, 3, seed=42)
    s, t = s.bfloat16(), t.bfloat16()
    out = mimic_loss(s, t)
    assert out.dtype == torch.float32 and out.dim() == 0
    _close(out, _mimic_ref(s, t))


@pytest.mark.parametrize("fn", [kd_loss, binary_kd_loss])
@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_non_positive_temperature_is_rejected(fn, tau):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=f"temperature tau must be > 0, got {tau}"):
        fn(x, x, tau=tau)
