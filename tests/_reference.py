"""Naive float64 references shared by the loss tests: explicit Python loops, no vectorisation."""

import math

import torch


def rows(x: torch.Tensor) -> list:
    """(N, C) -> N rows; (N, C, H, W) -> N*H*W rows, each the C values at one location."""
    x = x.double()
    if x.dim() == 2:
        return [[x[i, c].item() for c in range(x.shape[1])] for i in range(x.shape[0])]
    n, c, h, w = x.shape
    return [
        [x[a, k, i, j].item() for k in range(c)]
        for a in range(n)
        for i in range(h)
        for j in range(w)
    ]


def softmax(row: list, tau: float) -> list:
    z = [v / tau for v in row]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    total = sum(e)
    return [v / total for v in e]
