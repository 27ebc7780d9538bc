"""Inert stand-ins for the classes a checkpoint's pickle names, so that reading it runs no
code of its choosing (:mod:`paramgeom.checkpoints.dcp`, :mod:`paramgeom.checkpoints.verl`).

A restricted unpickler maps each admitted class to a :class:`Record` subclass of the same
name: building one only stores the pickled arguments and state; the reader then checks the
fields it needs. No class of torch, the trainer or the project is constructed.
"""

from __future__ import annotations

__all__ = ["Record", "record_class", "state_fields"]


class Record:
    """Stand-in for one pickled object: remembers its arguments and state, runs nothing.
    ``kind`` is the name of the class it stands for."""

    kind = "?"
    state: object = None

    def __new__(cls, *args: object) -> Record:  # NEWOBJ (no __init__) and REDUCE both
        obj = super().__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        self.state = state

    def fields(self) -> dict[str, object]:
        """The pickled attributes (:func:`state_fields` of the state)."""
        return state_fields(self.state)


def state_fields(state: object) -> dict[str, object]:
    """The attributes a pickled state sets: a dict state, or the merged halves of a
    (dict or None, slots dict) pair; {} for anything else."""
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        merged = dict(state[0]) if isinstance(state[0], dict) else {}
        merged.update(state[1])
        return merged
    return dict(state) if isinstance(state, dict) else {}


def record_class(name: str) -> type[Record]:
    """A :class:`Record` subclass standing for class ``name``."""
    return type(name, (Record,), {"kind": name})
