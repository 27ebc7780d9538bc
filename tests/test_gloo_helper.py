"""``gloo.run_ranks``: a writer fixture gets one more try (with a fresh store) after a failed
run; a script that runs our code does not."""

from __future__ import annotations

import pytest
from gloo import run_ranks

FAILS_FIRST = "import sys\nsys.exit(1 if sys.argv[1].endswith('store') else 0)\n"


def test_writer_is_retried_once_with_a_fresh_store(tmp_path):
    run_ranks(FAILS_FIRST, tmp_path, writer=True)


def test_code_under_test_is_not_retried(tmp_path):
    with pytest.raises(AssertionError):
        run_ranks(FAILS_FIRST, tmp_path)


def test_a_writer_failing_twice_fails(tmp_path):
    with pytest.raises(AssertionError):
        run_ranks("import sys\nsys.exit(3)\n", tmp_path, writer=True)
