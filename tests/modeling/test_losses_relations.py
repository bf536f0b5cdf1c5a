"""Relation and feature losses (docs/methods.md: DIST, DIST+, ReviewKD (HCL), PKD, CWD) against
naive float64 references written here: dist_loss, dist_feature_loss, pkd_loss, cwd_loss, hcl_loss.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from _reference import rows, softmax

from d2dist.modeling import terms
from d2dist.modeling.terms.cwd import cwd_loss
from d2dist.modeling.terms.dist import dist_loss
from d2dist.modeling.terms.dist_feature import dist_feature_loss
from d2dist.modeling.terms.pkd import pkd_loss
from d2dist.modeling.terms.reviewkd import hcl_loss

# --- naive references: explicit Python loops in float64 -------------------------------------


_rows, _softmax = rows, softmax


def _rho(u: list, v: list) -> float:
    """docs/methods.md: <u - mean(u), v - mean(v)> / (|u - mean(u)| * |v - mean(v)| + 1e-8)."""
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    cu, cv = [a - mu for a in u], [b - mv for b in v]
    dot = sum(a * b for a, b in zip(cu, cv))
    nu = math.sqrt(sum(a * a for a in cu))
    nv = math.sqrt(sum(b * b for b in cv))
    return dot / (nu * nv + 1e-8)


def _relation_ref(ps: list, pt: list, beta: float, gamma: float) -> float:
    """beta * (1 - mean_i rho(row i)) + gamma * (1 - mean_j rho(column j))."""
    n, c = len(ps), len(ps[0])
    inter = 1.0 - sum(_rho(ps[i], pt[i]) for i in range(n)) / n
    intra = 0.0
    for j in range(c):
        col_s = [ps[i][j] for i in range(n)]
        col_t = [pt[i][j] for i in range(n)]
        intra += _rho(col_s, col_t)
    intra = 1.0 - intra / c
    return beta * inter + gamma * intra


def _dist_ref(s, t, beta=1.0, gamma=1.0, tau=1.0) -> float:
    ps = [_softmax(r, tau) for r in _rows(s)]
    pt = [_softmax(r, tau) for r in _rows(t)]
    return tau**2 * _relation_ref(ps, pt, beta, gamma)


def _dist_feature_ref(s, t, beta=1.0, gamma=1.0, tau=1.0, normalize="none") -> float:
    rs, rt = _rows(s), _rows(t)  # rows = N*H*W positions, columns = channels
    if normalize == "none":
        return _relation_ref(rs, rt, beta, gamma)
    ps = [_softmax(r, tau) for r in rs]
    pt = [_softmax(r, tau) for r in rt]
    return tau**2 * _relation_ref(ps, pt, beta, gamma)


def _channel_values(x: torch.Tensor) -> list:
    """(N, C, H, W) -> C lists, each the N*H*W values of one channel."""
    n, c, h, w = x.shape
    return [
        [x[a, k, i, j].item() for a in range(n) for i in range(h) for j in range(w)]
        for k in range(c)
    ]


def _pkd_ref(s: torch.Tensor, t: torch.Tensor) -> float:
    s, t = s.double(), t.double()
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)

    def standardise(values: list) -> list:
        m = len(values)
        mean = sum(values) / m
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (m - 1))  # unbiased
        return [(v - mean) / (std + 1e-6) for v in values]

    total, count = 0.0, 0
    for cs, ct in zip(_channel_values(s), _channel_values(t)):
        for a, b in zip(standardise(cs), standardise(ct)):
            total += (a - b) ** 2
            count += 1
    return total / count / 2


def _cwd_ref(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    s, t = s.double(), t.double()
    n, c, h, w = s.shape
    total = 0.0
    for a in range(n):
        for k in range(c):
            ms = [s[a, k, i, j].item() for i in range(h) for j in range(w)]
            mt = [t[a, k, i, j].item() for i in range(h) for j in range(w)]
            p_s, p_t = _softmax(ms, tau), _softmax(mt, tau)
            total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return tau**2 * total / (n * c)


def _adaptive_avg_pool_ref(x: torch.Tensor, p: int) -> list:
    """Adaptive average pooling to p x p, bins [floor(i*H/p), ceil((i+1)*H/p)), as a flat list."""
    n, c, h, w = x.shape
    out = []
    for a in range(n):
        for k in range(c):
            for i in range(p):
                h0, h1 = (i * h) // p, -((-(i + 1) * h) // p)
                for j in range(p):
                    w0, w1 = (j * w) // p, -((-(j + 1) * w) // p)
                    cell = [x[a, k, y, z].item() for y in range(h0, h1) for z in range(w0, w1)]
                    out.append(sum(cell) / len(cell))
    return out


def _mse_ref(a: list, b: list) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def _pooled_mse(s: torch.Tensor, t: torch.Tensor, p: int) -> float:
    return _mse_ref(_adaptive_avg_pool_ref(s, p), _adaptive_avg_pool_ref(t, p))


def _hcl_ref(student_feats, teacher_feats) -> float:
    result = 0.0
    for fs, ft in zip(student_feats, teacher_feats):
        fs, ft = fs.double(), ft.double()
        h = fs.shape[2]
        loss = _mse_ref(fs.flatten().tolist(), ft.flatten().tolist())
        weight, total = 1.0, 1.0
        for p in (4, 2, 1):
            if p >= h:
                continue
            weight /= 2
            loss += weight * _pooled_mse(fs, ft, p)
            total += weight
        result += loss / total
    return result


def _close(value: torch.Tensor, ref: float, rel: float = 1e-5, abs_: float = 1e-6) -> None:
    assert value.item() == pytest.approx(ref, rel=rel, abs=abs_)


def _re_shape(shape) -> str:
    return r"\(" + ", ".join(str(v) for v in shape) + r"\)"


def _pair(*shape, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale, torch.randn(*shape, generator=g) * scale


# --- common contract -----------------------------------------------------------------------

# name -> (function, input shape); hcl_loss is called with one-level lists.
CASES = {
    "dist_loss": (dist_loss, (5, 4)),
    "dist_loss_4d": (dist_loss, (2, 3, 2, 2)),
    "dist_feature_loss": (dist_feature_loss, (2, 3, 2, 2)),
    "pkd_loss": (pkd_loss, (2, 3, 2, 2)),
    "cwd_loss": (cwd_loss, (2, 3, 2, 2)),
    "hcl_loss": (hcl_loss, (2, 3, 4, 4)),
}


def _call(name: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    fn = CASES[name][0]
    return fn([s], [t]) if fn is hcl_loss else fn(s, t)


def test_public_api_reexports_the_same_functions():
    for name in ("dist_loss", "dist_feature_loss", "pkd_loss", "cwd_loss", "hcl_loss"):
        assert getattr(terms, name) is globals()[name]  # the function of the term's own file
        assert name in terms.__all__


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_returns_0dim_float32(name, dtype):
    s, t = _pair(*CASES[name][1], seed=1)
    out = _call(name, s.to(dtype), t.to(dtype))
    assert out.dim() == 0
    assert out.dtype == torch.float32
    assert torch.isfinite(out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_to_student_only(name):
    s, t = _pair(*CASES[name][1], seed=2)
    s.requires_grad_(True)
    t.requires_grad_(True)
    _call(name, s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


# --- dist_loss -----------------------------------------------------------------------------


def test_dist_fixed_value():
    # Logits are logs of probabilities, so softmax gives them back (tau = 1).
    #   Ps = [(1/2, 1/4, 1/4), (1/4, 1/2, 1/4)],  Pt = [(1/4, 1/2, 1/4), (1/2, 1/4, 1/4)].
    # Inter, row 0: centred Ps = (1/6, -1/12, -1/12), Pt = (-1/12, 1/6, -1/12); dot = -1/48,
    #   both squared norms 1/24, so rho = -1/2; row 1 likewise. L_inter = 1 - (-1/2) = 3/2.
    # Intra, column 0: (1/2, 1/4) vs (1/4, 1/2) -> rho = -1; column 1 also -1; column 2:
    #   (1/4, 1/4) vs (1/4, 1/4) is constant -> rho = 0. L_intra = 1 - (-2/3) = 5/3.
    # L = 3/2 + 5/3 = 19/6 (the 1e-8 moves this by < 1e-6 relative).
    s = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]).log()
    t = torch.tensor([[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]]).log()
    _close(dist_loss(s, t), 19 / 6, rel=1e-6)
    _close(dist_loss(s, t, beta=1.0, gamma=0.0), 3 / 2, rel=1e-6)
    _close(dist_loss(s, t, beta=0.0, gamma=1.0), 5 / 3, rel=1e-6)
    _close(dist_loss(s, t, beta=2.0, gamma=0.5), 3.0 + 5 / 6, rel=1e-6)
    # Logits doubled with tau = 2: same probabilities, times tau^2 = 4.
    _close(dist_loss(2 * s, 2 * t, tau=2.0), 4 * 19 / 6, rel=1e-6)
    # Only row 0: L_inter = 3/2; every column holds one value -> rho = 0 -> L_intra = 1.
    _close(dist_loss(s[:1], t[:1]), 5 / 2, rel=1e-6)


@pytest.mark.parametrize("beta, gamma, tau", [(1.0, 1.0, 1.0), (2.0, 0.5, 1.0), (1.0, 3.0, 4.0)])
def test_dist_matches_naive_reference_2d(beta, gamma, tau):
    s, t = _pair(7, 5, seed=10)
    _close(dist_loss(s, t, beta, gamma, tau), _dist_ref(s, t, beta, gamma, tau))


@pytest.mark.parametrize("beta, gamma, tau", [(1.0, 1.0, 1.0), (0.5, 2.0, 2.0)])
def test_dist_matches_naive_reference_4d(beta, gamma, tau):
    # C, H, W all differ: any wrong flattening gives different rows (and a different intra).
    s, t = _pair(2, 3, 4, 5, seed=11)
    _close(dist_loss(s, t, beta, gamma, tau), _dist_ref(s, t, beta, gamma, tau))


def test_dist_defaults_are_one():
    s, t = _pair(6, 4, seed=12)
    _close(dist_loss(s, t), _dist_ref(s, t, 1.0, 1.0, 1.0))


def test_dist_terms_lie_in_0_2():
    for seed in range(4):
        s, t = _pair(6, 5, scale=3.0, seed=20 + seed)
        for beta, gamma in ((1.0, 0.0), (0.0, 1.0)):
            value = dist_loss(s, t, beta, gamma, 1.0).item()
            assert 0.0 <= value <= 2.0
    # Anti-correlated two-class predictions: every row and column has rho = -1, so each term
    # is at its upper end, 2 (less the epsilon's effect).
    s = torch.tensor([[0.0, 2.0], [1.0, -1.0], [0.5, 0.0]])
    t = -s
    for beta, gamma in ((1.0, 0.0), (0.0, 1.0)):
        value = dist_loss(s, t, beta, gamma, 1.0).item()
        assert 1.9999 < value <= 2.0 + 1e-6
    # Identical: each term at its lower end, 0.
    for beta, gamma in ((1.0, 0.0), (0.0, 1.0)):
        value = dist_loss(s, s.clone(), beta, gamma, 1.0).item()
        assert -1e-6 <= value < 1e-6


def test_dist_identical_inputs_give_zero():
    s, _ = _pair(6, 5, seed=21)
    assert abs(dist_loss(s, s.clone()).item()) < 1e-5
    s4, _ = _pair(2, 3, 2, 2, seed=22)
    assert abs(dist_loss(s4, s4.clone(), tau=2.0).item()) < 1e-5


def test_dist_invariant_to_per_row_constants():
    s, t = _pair(4, 6, seed=23)
    shift = torch.tensor([[5.0], [-3.0], [20.0], [0.5]])
    base = dist_loss(s, t, 1.0, 1.0, 2.0)
    torch.testing.assert_close(dist_loss(s + shift, t, 1.0, 1.0, 2.0), base, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dist_loss(s, t - shift, 1.0, 1.0, 2.0), base, rtol=1e-5, atol=1e-6)


def test_dist_changes_when_logits_are_scaled():
    s, t = _pair(5, 4, seed=24)
    base = dist_loss(s, t).item()
    assert dist_loss(3.0 * s, t).item() != pytest.approx(base, rel=1e-3)
    assert dist_loss(s, 0.3 * t).item() != pytest.approx(base, rel=1e-3)


def test_dist_tau_squared_factor():
    s, t = _pair(5, 4, seed=25)
    for tau in (2.0, 4.0):
        torch.testing.assert_close(
            dist_loss(tau * s, tau * t, tau=tau),
            tau**2 * dist_loss(s, t, tau=1.0),
            rtol=1e-5,
            atol=1e-6,
        )
    # At equal logits tau changes the value (softer distributions, other correlations).
    assert dist_loss(s, t, tau=4.0).item() != pytest.approx(16 * dist_loss(s, t).item(), rel=1e-3)


def test_dist_constant_row_contributes_exactly_one():
    # C = 4: softmax of a constant row is exactly 1/4 everywhere, its mean exactly 1/4, so the
    # centred row is exactly 0 and rho = 0 / (0 + 1e-8) = 0: the row contributes 1 - 0 = 1.
    s, _ = _pair(1, 4, seed=26)
    const = torch.full((1, 4), 1.7)
    assert dist_loss(s, const, beta=1.0, gamma=0.0).item() == 1.0
    assert dist_loss(const, s, beta=1.0, gamma=0.0).item() == 1.0
    # Two rows, row 0 with a constant teacher: L_inter = (1 + (1 - rho_1)) / 2, where rho_1
    # is row 1's correlation from the reference.
    s, t = _pair(2, 4, seed=27)
    t[0] = 3.0
    rho_1 = _rho(_softmax(s[1].tolist(), 1.0), _softmax(t[1].tolist(), 1.0))
    assert abs(rho_1) > 0.1  # row 1 is informative, so a wrong handling of row 0 would show
    _close(dist_loss(s, t, beta=1.0, gamma=0.0), (1.0 + (1.0 - rho_1)) / 2, rel=1e-6)


def test_dist_empty_batch_gives_zero_and_backward_works():
    s = torch.zeros(0, 5, requires_grad=True)
    out = dist_loss(s, torch.zeros(0, 5))
    assert out.dim() == 0 and out.dtype == torch.float32
    assert out.item() == 0.0
    out.backward()
    assert s.grad is not None and s.grad.shape == s.shape


def test_dist_single_row():
    s, t = _pair(1, 5, seed=28)
    s.requires_grad_(True)
    # Each column holds one value: centred to 0, rho = 0, so L_intra is exactly 1.
    assert dist_loss(s, t, beta=0.0, gamma=1.0).item() == 1.0
    out = dist_loss(s, t)
    assert torch.isfinite(out)
    _close(out, _dist_ref(s.detach(), t))
    out.backward()
    assert torch.isfinite(s.grad).all()


def test_dist_finite_for_huge_logits():
    s, t = _pair(4, 5, scale=1e4, seed=29)
    s.requires_grad_(True)
    out = dist_loss(s, t)
    assert torch.isfinite(out)
    _close(out, _dist_ref(s.detach(), t))
    out.backward()
    assert torch.isfinite(s.grad).all()


def test_dist_bf16_gives_float32():
    s, t = _pair(6, 5, seed=30)
    s, t = s.bfloat16(), t.bfloat16()
    out = dist_loss(s, t, tau=2.0)
    assert out.dtype == torch.float32 and out.dim() == 0
    # The reference sees exactly the rounded bf16 values.
    _close(out, _dist_ref(s, t, tau=2.0))


def test_dist_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"dist_loss: student \(2, 3\) and teacher \(2, 4\)"):
        dist_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# --- dist_feature_loss ---------------------------------------------------------------------


def test_dist_feature_fixed_value():
    # (N=1, C=3, H=1, W=2): two positions, rows are the channel vectors.
    #   position 0: s = (2, -1, -1), t = (-1, 2, -1) (both centred): dot -3, norms sqrt6 each
    #               -> rho = -1/2;
    #   position 1: s = (0, 0, 3), t = (1, 1, 4): both centre to (-1, -1, 2) -> rho = 1.
    #   L_inter = 1 - (-1/2 + 1)/2 = 3/4.
    # Channels over the two positions: c0 s = (2, 0), t = (-1, 1) -> -1; c1 s = (-1, 0),
    #   t = (2, 1) -> -1; c2 s = (-1, 3), t = (-1, 4) -> +1. L_intra = 1 - (-1/3) = 4/3.
    # normalize="none": no tau^2 factor. L = 3/4 + 4/3 = 25/12.
    s = torch.tensor([[[[2.0, 0.0]], [[-1.0, 0.0]], [[-1.0, 3.0]]]])
    t = torch.tensor([[[[-1.0, 1.0]], [[2.0, 1.0]], [[-1.0, 4.0]]]])
    assert s.shape == (1, 3, 1, 2)
    _close(dist_feature_loss(s, t), 25 / 12, rel=1e-6)
    _close(dist_feature_loss(s, t, beta=1.0, gamma=0.0), 3 / 4, rel=1e-6)
    _close(dist_feature_loss(s, t, beta=0.0, gamma=1.0), 4 / 3, rel=1e-6)
    # tau has no effect without the softmax.
    _close(dist_feature_loss(s, t, tau=3.0), 25 / 12, rel=1e-6)


@pytest.mark.parametrize("beta, gamma", [(1.0, 1.0), (2.0, 0.5)])
def test_dist_feature_matches_naive_reference_none(beta, gamma):
    s, t = _pair(2, 3, 4, 5, seed=40)
    out = dist_feature_loss(s, t, beta, gamma, normalize="none")
    _close(out, _dist_feature_ref(s, t, beta, gamma, normalize="none"))


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_dist_feature_matches_naive_reference_softmax(tau):
    s, t = _pair(2, 3, 4, 5, seed=41)
    out = dist_feature_loss(s, t, 1.0, 1.5, tau, normalize="softmax")
    _close(out, _dist_feature_ref(s, t, 1.0, 1.5, tau, normalize="softmax"))
    # softmax mode equals dist_loss on the same tensors (rows = positions, softmax over C).
    torch.testing.assert_close(out, dist_loss(s, t, 1.0, 1.5, tau), rtol=1e-6, atol=1e-7)


def test_dist_feature_identical_inputs_give_zero():
    s, _ = _pair(2, 3, 2, 4, seed=42)
    assert abs(dist_feature_loss(s, s.clone()).item()) < 1e-5
    assert abs(dist_feature_loss(s, s.clone(), tau=2.0, normalize="softmax").item()) < 1e-5


def test_dist_feature_inter_invariant_to_per_position_affine():
    # rho over channels at one position is unchanged by x -> a x + b with a > 0 of that
    # position's channel vector (a, b per (n, h, w), shared over channels).
    s, t = _pair(2, 3, 4, 5, seed=43)
    g = torch.Generator().manual_seed(44)
    a = torch.rand(2, 1, 4, 5, generator=g) * 3 + 0.5
    b = torch.randn(2, 1, 4, 5, generator=g) * 2
    base = dist_feature_loss(s, t, beta=1.0, gamma=0.0)
    torch.testing.assert_close(
        dist_feature_loss(a * s + b, t, beta=1.0, gamma=0.0), base, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        dist_feature_loss(s, a * t + b, beta=1.0, gamma=0.0), base, rtol=1e-5, atol=1e-5
    )
    # The intra term is not invariant to this map, so the two terms are really separate.
    intra = dist_feature_loss(s, t, beta=0.0, gamma=1.0).item()
    assert dist_feature_loss(a * s + b, t, beta=0.0, gamma=1.0).item() != pytest.approx(
        intra, rel=1e-3
    )


def test_dist_feature_intra_invariant_to_per_channel_affine():
    # rho of one channel over all N*H*W positions is unchanged by x -> a_c x + b_c, a_c > 0.
    s, t = _pair(2, 3, 4, 5, seed=45)
    a = torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1)
    b = torch.tensor([3.0, -1.0, 0.25]).view(1, 3, 1, 1)
    base = dist_feature_loss(s, t, beta=0.0, gamma=1.0)
    torch.testing.assert_close(
        dist_feature_loss(a * s + b, t, beta=0.0, gamma=1.0), base, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        dist_feature_loss(s, a * t + b, beta=0.0, gamma=1.0), base, rtol=1e-5, atol=1e-5
    )
    inter = dist_feature_loss(s, t, beta=1.0, gamma=0.0).item()
    assert dist_feature_loss(a * s + b, t, beta=1.0, gamma=0.0).item() != pytest.approx(
        inter, rel=1e-3
    )


def test_epsilon_is_added_to_the_product_of_the_norms():
    # rho(u, u) = |u_c|^2 / (|u_c|^2 + 1e-8): with |u_c|^2 = 1e-8 it is exactly 1/2 (an
    # epsilon added to each norm, (|u_c| + 1e-8)^2, would give ~1 instead).
    # Feature (1, C=2, 1, 1) = (a, -a), a = 1e-4 / sqrt2: centred it is itself, |u|^2 = 2a^2
    # = 1e-8. One position: L_inter = 1 - 1/2; each channel holds one value: L_intra = 1.
    a = 1e-4 / math.sqrt(2.0)
    x = torch.tensor([a, -a]).view(1, 2, 1, 1)
    _close(dist_feature_loss(x, x.clone()), 1.5, rel=1e-5)
    _close(dist_feature_loss(x, x.clone(), beta=1.0, gamma=0.0), 0.5, rel=1e-5)
    # dist_loss: logits (d, 0) give p = (1/2 + d/4, 1/2 - d/4) to first order, centred norm^2
    # d^2/8 = 1e-8 for d = sqrt(8e-8); float32 resolves p to ~1e-3 relative here.
    d = math.sqrt(8e-8)
    z = torch.tensor([[d, 0.0]])
    _close(dist_loss(z, z.clone(), beta=1.0, gamma=0.0), 0.5, rel=2e-3)


def test_dist_feature_bad_normalize_is_rejected():
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"normalize='l2'; use 'none' or 'softmax'"):
        dist_feature_loss(x, x, normalize="l2")


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4)])
def test_dist_feature_non_4d_is_rejected(shape):
    x = torch.zeros(*shape)
    with pytest.raises(ValueError, match=r"must be \(N, C, H, W\), got " + _re_shape(shape)):
        dist_feature_loss(x, x.clone())


def test_dist_feature_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"student \(1, 2, 2, 2\) and teacher \(1, 3, 2, 2\)"):
        dist_feature_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))


# --- pkd_loss ------------------------------------------------------------------------------


def test_pkd_fixed_value():
    # One channel, N*H*W = 3 positions. s = (0, 1, 2): mean 1, unbiased std
    # sqrt((1 + 0 + 1)/2) = 1, s_hat = (-1, 0, 1). t = (0, 0, 3): mean 1, deviations
    # (-1, -1, 2), unbiased std sqrt(6/2) = sqrt3, t_hat = (-1, -1, 2)/sqrt3.
    # |s_hat|^2 = |t_hat|^2 = 2 and <s_hat, t_hat> = (1 + 0 + 2)/sqrt3 = sqrt3, so
    # sum (s_hat - t_hat)^2 = 4 - 2 sqrt3; the mean over 3 elements, halved: (2 - sqrt3)/3.
    s = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 1, 3)
    t = torch.tensor([0.0, 0.0, 3.0]).view(1, 1, 1, 3)
    expected = (2 - math.sqrt(3.0)) / 3
    assert expected == pytest.approx(0.0893164, abs=1e-7)
    _close(pkd_loss(s, t), expected, rel=1e-5)
    # Anti-correlated: t = -s gives sum (2 s_hat)^2 = 8 -> 8/3/2 = 4/3.
    _close(pkd_loss(s, -s), 4 / 3, rel=1e-5)


def test_pkd_matches_naive_reference():
    s, t = _pair(2, 3, 4, 5, seed=50)
    _close(pkd_loss(s, t), _pkd_ref(s, t))


def test_pkd_uses_all_positions_of_the_batch_per_channel():
    # Channels with very different scales and offsets, two images: a per-image or a global
    # standardisation would differ from the reference.
    s, t = _pair(2, 3, 3, 4, seed=51)
    scale = torch.tensor([0.1, 1.0, 10.0]).view(1, 3, 1, 1)
    offset = torch.tensor([[5.0], [-5.0]]).view(2, 1, 1, 1)
    s, t = s * scale + offset, t * scale.flip(1) - offset
    _close(pkd_loss(s, t), _pkd_ref(s, t))


def test_pkd_invariant_to_positive_affine_teacher():
    s, t = _pair(2, 3, 4, 5, seed=52)
    base = pkd_loss(s, t)
    # Global and per-channel a > 0 and b; the 1e-6 on the std breaks exact invariance only
    # by ~1e-6 relative.
    torch.testing.assert_close(pkd_loss(s, 2.5 * t + 3.0), base, rtol=1e-5, atol=1e-5)
    a = torch.tensor([0.5, 2.0, 4.0]).view(1, 3, 1, 1)
    b = torch.tensor([-5.0, 1.0, 5.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(pkd_loss(s, a * t + b), base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pkd_loss(a * s + b, t), base, rtol=1e-5, atol=1e-5)
    # A negative scale flips each correlation, so it does change the value.
    assert pkd_loss(s, -t).item() != pytest.approx(base.item(), rel=1e-3)


def test_pkd_identical_inputs_give_zero():
    s, _ = _pair(2, 3, 4, 5, seed=53)
    assert abs(pkd_loss(s, s.clone()).item()) < 1e-6


@pytest.mark.parametrize("s_size", [(3, 5), (8, 10)])
def test_pkd_resizes_student_bilinearly(s_size):
    g = torch.Generator().manual_seed(54)
    s = torch.randn(2, 3, *s_size, generator=g)
    t = torch.randn(2, 3, 6, 4, generator=g)
    s.requires_grad_(True)
    out = pkd_loss(s, t)
    _close(out, _pkd_ref(s.detach(), t))
    out.backward()
    assert s.grad.shape == s.shape and torch.isfinite(s.grad).all()


def test_pkd_channel_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"pkd_loss.*student \(1, 2, 3, 3\) and teacher \(1, 4"):
        pkd_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, 3))


@pytest.mark.parametrize("s_shape, t_shape", [((2, 3), (2, 3)), ((1, 2, 3, 3), (2, 3, 3))])
def test_pkd_non_4d_is_rejected(s_shape, t_shape):
    with pytest.raises(ValueError, match=r"pkd_loss: features must be \(N, C, H, W\)"):
        pkd_loss(torch.zeros(*s_shape), torch.zeros(*t_shape))


# --- cwd_loss ------------------------------------------------------------------------------


def test_cwd_fixed_value():
    # One (n, c) map of two positions: s = (0, 0) -> p_s = (1/2, 1/2); t = (0, ln 3) ->
    # p_t = (1/4, 3/4). KL(p_t || p_s) = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln 3 - ln 2
    # = 0.1308120...; tau^2 / (N*C) = 1.
    ln3 = math.log(3.0)
    expected = 0.75 * ln3 - math.log(2.0)
    s = torch.tensor([0.0, 0.0]).view(1, 1, 1, 2)
    t = torch.tensor([0.0, ln3]).view(1, 1, 1, 2)
    _close(cwd_loss(s, t), expected, rel=1e-6)
    # A second, identical channel adds 0 to the sum and doubles N*C: half the value.
    s2 = torch.tensor([[[[0.0, 0.0]], [[1.0, 2.0]]]])
    t2 = torch.tensor([[[[0.0, ln3]], [[1.0, 2.0]]]])
    _close(cwd_loss(s2, t2), expected / 2, rel=1e-6)
    # The same for a second image (N = 2 instead of C = 2).
    _close(cwd_loss(s2.view(2, 1, 1, 2), t2.view(2, 1, 1, 2)), expected / 2, rel=1e-6)
    # Doubled maps with tau = 2: same distributions, times tau^2 = 4.
    _close(cwd_loss(2 * s, 2 * t, tau=2.0), 4 * expected, rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_matches_naive_reference(tau):
    s, t = _pair(2, 3, 4, 5, seed=60)
    _close(cwd_loss(s, t, tau), _cwd_ref(s, t, tau))


def test_cwd_softmax_is_over_positions_not_channels():
    # Adding a per-(n, c) constant leaves each spatial softmax unchanged; a per-position
    # constant (shared by all channels) does not.
    s, t = _pair(2, 3, 4, 5, seed=61)
    base = cwd_loss(s, t)
    per_map = torch.randn(2, 3, 1, 1) * 5
    torch.testing.assert_close(cwd_loss(s + per_map, t), base, rtol=1e-5, atol=1e-6)
    per_position = torch.randn(1, 1, 4, 5) * 5
    assert cwd_loss(s + per_position, t).item() != pytest.approx(base.item(), rel=1e-3)


def test_cwd_identical_inputs_give_zero():
    # A KL, not a cross-entropy: the entropy of p_t is not left over.
    s, _ = _pair(2, 3, 4, 5, seed=62)
    assert abs(cwd_loss(s, s.clone()).item()) < 1e-6
    assert abs(cwd_loss(s, s.clone(), tau=4.0).item()) < 1e-5


def test_cwd_non_negative():
    for seed in range(4):
        s, t = _pair(2, 3, 3, 3, scale=3.0, seed=63 + seed)
        assert cwd_loss(s, t, 1.0).item() >= 0.0
        assert cwd_loss(s, t, 4.0).item() >= 0.0
    s, _ = _pair(2, 3, 3, 3, seed=70)
    assert cwd_loss(s, s + 1e-4).item() >= -1e-7


def test_cwd_changes_with_tau():
    s, t = _pair(2, 3, 4, 5, seed=71)
    values = [cwd_loss(s, t, tau).item() for tau in (1.0, 2.0, 4.0)]
    assert values[0] != pytest.approx(values[1], rel=1e-3)
    assert values[1] != pytest.approx(values[2], rel=1e-3)


def test_cwd_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"cwd_loss: student \(1, 2, 3, 3\) and teacher"):
        cwd_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))


def test_cwd_non_4d_is_rejected():
    with pytest.raises(ValueError, match=r"cwd_loss: maps must be \(N, C, H, W\), got \(2, 3\)"):
        cwd_loss(torch.zeros(2, 3), torch.zeros(2, 3))


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_cwd_non_positive_temperature_is_rejected(tau):
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=f"cwd_loss: the temperature tau must be > 0, got {tau}"):
        cwd_loss(x, x, tau=tau)


@pytest.mark.parametrize("fn", [dist_loss, dist_feature_loss])
def test_dist_non_positive_temperature_is_rejected(fn):
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"temperature tau must be > 0, got 0.0"):
        fn(x, x, tau=0.0)


# --- hcl_loss ------------------------------------------------------------------------------


def test_hcl_fixed_value():
    # Level 0, 4x4 (h = 4): s = 16 at (0, 0) and 0 elsewhere, t = 0.
    #   mse = 16^2 / 16 = 16; p = 4 is skipped (4 >= h); p = 2: the top-left 2x2 cell
    #   averages 4, the others 0 -> mse 16/4 = 4, weight 1/2; p = 1: mean 1 -> mse 1,
    #   weight 1/4. Level = (16 + 2 + 1/4) / (1 + 1/2 + 1/4) = 18.25 / 1.75 = 73/7.
    #   (Not skipping the 4x4 pooling would give (16 + 8 + 1 + 1/8) / 1.875 = 13.4.)
    # Level 1, 2x2: s = [[0, 0], [0, 4]], t = 0: mse 16/4 = 4; only p = 1: mean 1 -> mse 1,
    #   weight 1/2. Level = 4.5 / 1.5 = 3.
    # Level 2, 1x1: s = 3, t = 1: plain mse = 4.
    # Levels are summed: 73/7 + 3 + 4 = 122/7.
    s0 = torch.zeros(1, 1, 4, 4)
    s0[0, 0, 0, 0] = 16.0
    s1 = torch.tensor([[0.0, 0.0], [0.0, 4.0]]).view(1, 1, 2, 2)
    s2, t2 = torch.full((1, 1, 1, 1), 3.0), torch.full((1, 1, 1, 1), 1.0)
    _close(hcl_loss([s0], [torch.zeros_like(s0)]), 73 / 7, rel=1e-6)
    _close(hcl_loss([s1], [torch.zeros_like(s1)]), 3.0, rel=1e-6)
    _close(hcl_loss([s2], [t2]), 4.0, rel=1e-6)
    feats_s, feats_t = [s0, s1, s2], [torch.zeros_like(s0), torch.zeros_like(s1), t2]
    _close(hcl_loss(feats_s, feats_t), 122 / 7, rel=1e-6)
    # Tuples work as well as lists.
    _close(hcl_loss(tuple(feats_s), tuple(feats_t)), 122 / 7, rel=1e-6)


def test_hcl_matches_naive_reference():
    g = torch.Generator().manual_seed(80)
    shapes = [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2), (2, 3, 1, 1), (2, 3, 3, 7), (2, 3, 6, 2)]
    feats_s = [torch.randn(*shape, generator=g) for shape in shapes]
    feats_t = [torch.randn(*shape, generator=g) for shape in shapes]
    _close(hcl_loss(feats_s, feats_t), _hcl_ref(feats_s, feats_t))
    for fs, ft in zip(feats_s, feats_t):
        _close(hcl_loss([fs], [ft]), _hcl_ref([fs], [ft]))


def test_hcl_h4_skips_4x4_pooling():
    # At h = 4 the level is (mse + 1/2 mse_2x2 + 1/4 mse_1x1) / 1.75.
    s, t = _pair(2, 3, 4, 4, seed=81)
    s64, t64 = s.double(), t.double()
    full = _mse_ref(s64.flatten().tolist(), t64.flatten().tolist())
    m2, m1 = _pooled_mse(s64, t64, 2), _pooled_mse(s64, t64, 1)
    _close(hcl_loss([s], [t]), (full + m2 / 2 + m1 / 4) / 1.75)


def test_hcl_h1_is_plain_mse():
    s, t = _pair(2, 3, 1, 5, seed=82)
    _close(hcl_loss([s], [t]), _mse_ref(s.flatten().tolist(), t.flatten().tolist()))


def test_hcl_uses_the_height_not_the_width():
    # 3x7: h = 3 skips p = 4 although the width is 7; 6x2: h = 6 keeps p = 4 although the
    # width is 2 (adaptive pooling then repeats columns).
    s, t = _pair(1, 2, 3, 7, seed=83)
    s64, t64 = s.double(), t.double()
    full = _mse_ref(s64.flatten().tolist(), t64.flatten().tolist())
    m = {p: _pooled_mse(s64, t64, p) for p in (2, 1)}
    _close(hcl_loss([s], [t]), (full + m[2] / 2 + m[1] / 4) / 1.75)
    s, t = _pair(1, 2, 6, 2, seed=84)
    s64, t64 = s.double(), t.double()
    full = _mse_ref(s64.flatten().tolist(), t64.flatten().tolist())
    m = {p: _pooled_mse(s64, t64, p) for p in (4, 2, 1)}
    _close(hcl_loss([s], [t]), (full + m[4] / 2 + m[2] / 4 + m[1] / 8) / 1.875)


def test_hcl_identical_inputs_give_zero():
    feats = [_pair(2, 3, h, h, seed=85 + h)[0] for h in (8, 4, 2, 1)]
    assert hcl_loss(feats, [f.clone() for f in feats]).item() == 0.0


def test_hcl_gradient_reaches_every_level():
    feats_s = [_pair(1, 2, h, h, seed=90 + h)[0].requires_grad_(True) for h in (8, 2, 1)]
    feats_t = [_pair(1, 2, h, h, seed=95 + h)[1].requires_grad_(True) for h in (8, 2, 1)]
    hcl_loss(feats_s, feats_t).backward()
    for fs, ft in zip(feats_s, feats_t):
        assert ft.grad is None
        assert fs.grad is not None and torch.isfinite(fs.grad).all() and fs.grad.abs().sum() > 0


@pytest.mark.parametrize("n_s, n_t", [(2, 1), (1, 2), (0, 0)])
def test_hcl_level_count_mismatch_is_rejected(n_s, n_t):
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=f"hcl_loss: {n_s} student and {n_t} teacher levels"):
        hcl_loss([x] * n_s, [x] * n_t)


def test_hcl_level_shape_mismatch_is_rejected():
    a, b = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)
    with pytest.raises(
        ValueError, match=r"hcl_loss level 1: student \(1, 2, 2, 2\) and teacher \(1, 3, 2, 2\)"
    ):
        hcl_loss([a, b], [a, torch.zeros(1, 3, 2, 2)])


def test_hcl_non_4d_level_is_rejected():
    with pytest.raises(ValueError, match=r"hcl_loss: level 0 must be \(N, C, H, W\), got \(2, 3\)"):
        hcl_loss([torch.zeros(2, 3)], [torch.zeros(2, 3)])


@pytest.mark.parametrize("fn", [pkd_loss, cwd_loss])
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4)])
def test_empty_batch_gives_zero(fn, shape):
    s = torch.zeros(shape, requires_grad=True)
    loss = fn(s, torch.zeros(shape))
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()


def test_every_loss_is_float32_under_autocast_and_finite_on_1x1_levels():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    one = torch.randn(1, 8, 1, 1, generator=g), torch.randn(1, 8, 1, 1, generator=g)  # a 1x1 level
    calls = {
        "kd_loss": lambda: terms.kd_loss(*logits),
        "dist_loss": lambda: dist_loss(*logits),
        "dist_feature_loss": lambda: dist_feature_loss(*one),
        "pkd_loss": lambda: pkd_loss(*one),
        "cwd_loss": lambda: cwd_loss(*one),
        "hcl_loss": lambda: hcl_loss([one[0]], [one[1]]),
        "mimic_loss": lambda: terms.mimic_loss(*one),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name, call in calls.items():
            value = call()
            assert value.dtype == torch.float32 and value.dim() == 0, name
            assert torch.isfinite(value), name


def test_relation_loss_keeps_the_public_contract():
    """float32, the teacher side detached (unless asked otherwise), checked shapes."""
    from d2dist.modeling.terms import relation_loss

    torch.manual_seed(0)
    s = torch.rand(6, 4, requires_grad=True)
    t = torch.rand(6, 4, requires_grad=True)
    loss = relation_loss(s.bfloat16(), t.bfloat16())
    assert loss.dtype == torch.float32 and loss.dim() == 0
    relation_loss(s, t).backward()
    assert s.grad is not None and t.grad is None
    relation_loss(s, t, detach_teacher=False).backward()
    assert t.grad is not None  # for a trainable teacher-side map (acclimation)
    with pytest.raises(ValueError, match="must have equal shapes"):
        relation_loss(s, t[:, :3])
    with pytest.raises(ValueError, match=r"must be \(rows, columns\)"):
        relation_loss(s[None], t[None])
