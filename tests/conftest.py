"""Shared test setup: deterministic seeds, hypothesis profiles, the Triton interpreter."""

from __future__ import annotations

import os

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. This must be
# set before triton is first imported anywhere in the test session.
try:
    import torch as _torch

    _has_cuda = _torch.cuda.is_available()
except Exception:  # pragma: no cover - torch is a hard dependency
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci",
        max_examples=60,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("dev", max_examples=300, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is in the [test] extra; property tests skip without it
    pass


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# One torch CPU thread (training and monitor figures are compared bit for bit; the thread
# count changes float summation order). The module-scoped one also covers module fixtures.
one_thread = pytest.fixture(_single_thread, name="one_thread")
one_thread_module = pytest.fixture(_single_thread, scope="module", name="one_thread_module")
