"""Bad input to diff_stats: one clear error naming what is wrong."""

from __future__ import annotations

import pytest
import torch

import paramgeom


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"w0 has shape \(3, 4\), w1 has shape \(4, 3\)"):
        paramgeom.diff_stats(torch.zeros(3, 4), torch.zeros(4, 3))


def test_dtype_mismatch_names_both_dtypes():
    with pytest.raises(TypeError, match="w0 is torch.float32, w1 is torch.bfloat16"):
        paramgeom.diff_stats(torch.zeros(3), torch.zeros(3, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.bool, torch.complex64])
def test_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match=f"unsupported dtype {dtype}"):
        paramgeom.diff_stats(torch.zeros(3, dtype=dtype), torch.zeros(3, dtype=dtype))


def test_device_mismatch(monkeypatch):
    """Two devices (a CPU-only machine has one: the meta device stands for the other, with
    the API's no-data check taken out of the way)."""
    import paramgeom.api.diff_stats as api

    monkeypatch.setattr(api, "check_tensor", lambda name, t: t)
    with pytest.raises(ValueError, match="device mismatch: w0 is on cpu, w1 is on meta"):
        paramgeom.diff_stats(torch.zeros(3), torch.zeros(3, device="meta"))


def test_meta_tensor_is_refused():
    with pytest.raises(TypeError, match="w1 is on the meta device: it holds no data"):
        paramgeom.diff_stats(torch.zeros(3), torch.zeros(3, device="meta"))


def test_sparse_input():
    sparse = torch.zeros(3).to_sparse()
    with pytest.raises(TypeError, match="w0 has layout torch.sparse_coo"):
        paramgeom.diff_stats(sparse, sparse)


def test_parameters_and_grad_tensors_are_read_as_is():
    p = torch.nn.Parameter(torch.randn(4, 4))
    assert paramgeom.diff_stats(p, p.detach().clone()).n_equal == 16


def test_not_a_tensor():
    with pytest.raises(TypeError, match="w1 must be a torch.Tensor, got list"):
        paramgeom.diff_stats(torch.zeros(3), [0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"rel_tols": (1e-3,) * 9}, ValueError, "at most 8"),
        ({"abs_tols": (-1.0,)}, ValueError, "finite and >= 0"),
        ({"rel_tols": (float("nan"),)}, ValueError, "finite and >= 0"),
        ({"rel_tols": 1e-3}, TypeError, "sequence of floats"),
        ({"cast": "fp16"}, ValueError, "cast must be None or 'bf16'"),
        ({"backend": "opencl"}, ValueError, "unknown backend 'opencl'"),
        ({"backend": "cuda"}, ValueError, "runs on cuda tensors, got cpu"),
    ],
)
def test_bad_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        paramgeom.diff_stats(torch.zeros(3), torch.zeros(3), **kwargs)


def test_triton_backend_on_cpu_tensors_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="runs on cuda tensors"):
        paramgeom.diff_stats(torch.zeros(3), torch.zeros(3), backend="triton")
