"""Assertions of the reliability contract shared by the bad-input tests: one line naming
the file (and tensor), exit status 2, never a traceback."""

from __future__ import annotations

import pytest

from paramgeom.checkpoints.errors import CheckpointError


def one_line_error(code: int, err: str, *must_name) -> str:
    """Exit 2, one line on stderr, no traceback, naming each of ``must_name``; the line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for what in must_name:
        assert str(what) in lines[0], (what, lines[0])
    return lines[0]


def expect_error(match: str, *names: object):
    """pytest.raises(CheckpointError) whose one-line message contains ``match`` and every
    name in ``names``."""

    class _Ctx:
        def __enter__(self):
            self._cm = pytest.raises(CheckpointError, match=match)
            self.info = self._cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            ok = self._cm.__exit__(*exc)
            msg = str(self.info.value)
            assert "\n" not in msg
            for n in names:
                assert str(n) in msg, f"{n!r} not named in {msg!r}"
            return ok

    return _Ctx()
