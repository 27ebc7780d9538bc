"""Batched spectra and rotations over an expert axis, against float64 numpy oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramgeom import linalg


def _stack(B, m, n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, m, n, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 5, 9), (1, 6, 6), (4, 1, 3)])
def test_batched_svdvals_matches_numpy(shape):
    x = _stack(*shape)
    got = linalg.batched_svdvals(x)
    want = np.linalg.svd(x.numpy(), compute_uv=False)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_batched_svdvals_bf16_input_and_empty():
    x = _stack(2, 8, 4, dtype=torch.bfloat16)
    want = np.linalg.svd(x.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(linalg.batched_svdvals(x).numpy(), want, rtol=1e-10)
    assert linalg.batched_svdvals(torch.zeros(0, 3, 2)).shape == (0, 2)


def _oracle_angles(a, b):
    """Principal angles (radians, ascending) by the sine/cosine split in float64 numpy."""
    m = a.T @ b
    cos = np.clip(np.linalg.svd(m, compute_uv=False), 0, 1)
    sin = np.clip(np.linalg.svd(b - a @ m, compute_uv=False), 0, 1)[::-1]
    ang = np.where(cos**2 >= 0.5, np.arcsin(sin), np.arccos(cos))
    return np.sort(ang)


def test_batched_principal_angles_known_rotation():
    # Rotate a 2-D subspace of R^6 by known angles in two orthogonal planes.
    angles = np.array([1e-7, 0.3])
    a = np.zeros((6, 2))
    a[0, 0] = a[1, 1] = 1
    b = np.zeros((6, 2))
    b[0, 0], b[2, 0] = np.cos(angles[0]), np.sin(angles[0])
    b[1, 1], b[3, 1] = np.cos(angles[1]), np.sin(angles[1])
    got = linalg.batched_principal_angles(torch.tensor(a)[None], torch.tensor(b)[None])
    np.testing.assert_allclose(got[0].numpy(), angles, rtol=1e-8)


def test_batched_rotation_matches_per_matrix_oracle():
    B, m, n, k = 3, 12, 9, 4
    w0 = _stack(B, m, n, seed=1)
    w1 = w0 + 1e-3 * _stack(B, m, n, seed=2)
    rot = linalg.batched_rotation(w0, w1, k)
    for i in range(B):
        u0, s0, v0t = np.linalg.svd(w0[i].numpy())
        u1, s1, v1t = np.linalg.svd(w1[i].numpy())
        left = _oracle_angles(u0[:, :k], u1[:, :k])
        right = _oracle_angles(v0t[:k].T, v1t[:k].T)
        np.testing.assert_allclose(rot.left[i].numpy(), left, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(rot.right[i].numpy(), right, rtol=1e-6, atol=1e-12)
        drift = np.linalg.norm(s1[:k] - s0[:k]) / np.linalg.norm(s0[:k])
        assert float(rot.spectral_drift()[i]) == pytest.approx(drift, rel=1e-8)
    lmax, lmean = rot.degrees("left")
    assert torch.allclose(lmax, torch.rad2deg(rot.left).max(dim=-1).values)


def test_batched_rotation_rejects_bad_k():
    w = _stack(1, 4, 3)
    with pytest.raises(ValueError, match="k must be"):
        linalg.batched_rotation(w, w, 4)
    with pytest.raises(ValueError, match="3-D"):
        linalg.batched_rotation(w[0], w[0], 1)
