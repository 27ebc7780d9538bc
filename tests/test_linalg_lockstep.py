"""``paramgeom.linalg.lockstep.Lockstep`` in one process: its turn-taking and rounds under
any pattern of sums, failures and dtypes, with the all-reduce replaced by a stand-in that
doubles (two ranks holding the same values) and records each call. The real all-reduce on
gloo ranks: tests/test_linalg_distributed.py."""

from __future__ import annotations

import contextlib
import threading
from unittest import mock

import pytest
import torch

from paramgeom.linalg import lockstep

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

DTYPES = (torch.float32, torch.float64, torch.int64)


@contextlib.contextmanager
def _doubling():
    """The stand-in all-reduce (doubles ``x`` in place) while inside; yields each call's
    dtype and size."""
    calls: list[tuple[torch.dtype, int]] = []

    def doubled(x: torch.Tensor, group) -> torch.Tensor:
        assert group == "group"
        calls.append((x.dtype, x.numel()))
        x.mul_(2)
        return x

    with mock.patch.object(lockstep, "all_reduce_sum", doubled):
        yield calls


def _computation(i: int, asks: int, fail_at: int | None, dtype: torch.dtype, order: list):
    """Asks ``asks`` sums (the ``j``-th: ``j + 1`` values), raising before sum ``fail_at``;
    returns the answers. Records ``(i, j)`` in ``order`` as it asks."""

    def run(sum_ranks):
        got = []
        for j in range(asks):
            if j == fail_at:
                raise ValueError(f"computation {i} stops at {j}")
            order.append((i, j))
            x = torch.arange(j + 1, dtype=dtype) + 100 * i
            y = sum_ranks(x)
            assert y.dtype == dtype and y.shape == x.shape
            got.append(y.tolist())
        return got

    return run


@hypothesis.given(
    st.lists(
        st.tuples(
            st.integers(0, 5),  # sums asked
            st.one_of(st.none(), st.integers(0, 5)),  # raises before this sum
            st.sampled_from(DTYPES),
        ),
        max_size=7,
    )
)
def test_rounds_answers_and_failures_for_any_pattern(specs):
    order: list[tuple[int, int]] = []
    lock = lockstep.Lockstep("group")
    comps = [_computation(i, a, f, d, order) for i, (a, f, d) in enumerate(specs)]
    with _doubling() as reduces:
        results = lock.run(comps)
    made = [a if f is None or f >= a else f for a, f, _ in specs]  # sums each one made
    for i, ((asks, fail_at, dtype), got) in enumerate(zip(specs, results, strict=True)):
        if fail_at is not None and fail_at < asks:
            assert isinstance(got, ValueError) and f"{i} stops at {fail_at}" in str(got)
        else:
            want = [(2 * (torch.arange(j + 1, dtype=dtype) + 100 * i)).tolist()
                    for j in range(asks)]  # fmt: skip
            assert got == want
    # Rounds in order, and within a round the computations in index order.
    rounds = max(made, default=0)
    assert order == [(i, j) for j in range(rounds) for i in range(len(specs)) if made[i] > j]
    # One all-reduce per dtype present in a round, of that round's values of that dtype.
    want_calls = []
    for j in range(rounds):
        in_round = [i for i in range(len(specs)) if made[i] > j]
        for dtype in dict.fromkeys(specs[i][2] for i in in_round):
            size = sum(j + 1 for i in in_round if specs[i][2] == dtype)
            want_calls.append((dtype, size))
    assert reduces == want_calls and lock.collectives == len(want_calls)


def test_a_failed_all_reduce_fails_the_round_and_every_later_sum(monkeypatch):
    def broken(x, group):
        raise RuntimeError("connection reset")

    monkeypatch.setattr(lockstep, "all_reduce_sum", broken)
    order: list = []
    results = lockstep.Lockstep("group").run(
        [
            _computation(0, 2, None, torch.float64, order),
            _computation(1, 3, None, torch.float32, order),
        ]
    )
    assert all(isinstance(r, RuntimeError) and "connection reset" in str(r) for r in results)
    assert order == [(0, 0), (1, 0)]  # nobody went on past the failed round


def test_threads_take_the_callers_grad_mode_and_end():
    before = threading.active_count()
    with _doubling() as reduces:
        with torch.no_grad():
            got = lockstep.Lockstep("group").run([lambda s: torch.is_grad_enabled()] * 3)
        assert got == [False, False, False]
        got = lockstep.Lockstep("group").run([lambda s: torch.is_grad_enabled()])
        assert got == [True] and threading.active_count() == before
        assert lockstep.Lockstep("group").run([]) == [] and reduces == []
