"""``GeometryCallback``: the geometry monitor inside a Hugging Face ``transformers.Trainer``.

DESIGN.md "Monitor": a ``TrainerCallback`` wraps :class:`paramgeom.GeometryMonitor`. At the
end of every optimiser step it calls ``monitor.step(state.global_step)``; on a recording step
it asks the Trainer to log and adds the figures (``geometry/unchanged_fraction``,
``geometry/stable_rank``, ``geometry/sim_k``, ... from :func:`paramgeom.monitor.log_items`)
to that log entry, so they land in ``trainer.state.log_history`` and reach the reporting
callbacks (W&B, TensorBoard) through ``on_log``.

Callback order matters for the reporters: the Trainer calls ``on_log`` of its callbacks in
list order and puts the ``report_to`` reporters first, so a callback passed in
``callbacks=[...]`` adds its figures after W&B/TensorBoard have already read the entry
(``log_history`` still gets them). :meth:`GeometryCallback.attach` puts the callback first::

    monitor = GeometryMonitor(model, every=100)
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    GeometryCallback(monitor).attach(trainer)
    trainer.train()

Checkpoints: at each Trainer save the monitor's state (:meth:`GeometryMonitor.state_dict`:
history, lock state, subspaces, the bf16 reference) is written into the checkpoint folder as
``paramgeom_monitor.pt``; a run resumed from that checkpoint
(``trainer.train(resume_from_checkpoint=...)``) loads it at ``on_train_begin``, so the
history and lock detection continue where they stopped and ``W_0`` stays the original base.

``on_lock="stop"`` ends training through ``control.should_training_stop``; when the monitor
has no ``total_steps`` the callback takes the Trainer's ``max_steps`` (the over-locking
guardrail needs it). Importing this module needs ``transformers``; ``import paramgeom`` does
not.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "paramgeom.integrations.hf needs transformers (pip install transformers)"
    ) from None

from paramgeom.monitor import GeometryMonitor, log_items

__all__ = ["STATE_FILE", "GeometryCallback"]

STATE_FILE = "paramgeom_monitor.pt"


def _state_path(args, folder: str) -> str:
    """The monitor state file of this process in checkpoint ``folder``: ``STATE_FILE`` in a
    one-process run, ``paramgeom_monitor.rank<R>.pt`` per process otherwise."""
    if args.world_size > 1:
        return os.path.join(folder, f"paramgeom_monitor.rank{args.process_index}.pt")
    return os.path.join(folder, STATE_FILE)


class GeometryCallback(TrainerCallback):
    """Runs ``monitor.step`` from ``on_step_end`` and logs its figures with the Trainer's.

    Parameters
    ----------
    monitor : GeometryMonitor
        Built on the model the Trainer trains (the same parameter objects).
    prefix : str
        Prefix of the logged keys (``"geometry/"``: a W&B / TensorBoard section).
    """

    def __init__(self, monitor: GeometryMonitor, prefix: str = "geometry/") -> None:
        if not isinstance(monitor, GeometryMonitor):
            raise TypeError(f"monitor must be a GeometryMonitor, got {type(monitor).__name__}")
        self.monitor = monitor
        self.prefix = prefix
        self._pending: dict[str, Any] = {}

    def attach(self, trainer) -> GeometryCallback:
        """Add this callback to ``trainer`` first in its list, so the reporters' ``on_log``
        sees the figures; returns ``self``."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0 and not self.monitor.records:
            self._resume(args, state)
        if self.monitor.total_steps is None and state.max_steps and state.max_steps > 0:
            self.monitor.total_steps = int(state.max_steps)

    def _resume(self, args, state) -> None:
        """A run resumed at ``global_step``: load the monitor state its checkpoint holds."""
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        path = _state_path(args, folder)
        if not os.path.isfile(path):  # an unsharded monitor's one file, written by rank 0
            path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            warnings.warn(
                f"paramgeom: resumed at step {state.global_step} without {path}: the "
                "monitor's history and lock detection start over, and W_0 is the resumed "
                "weights",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self.monitor.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        # One file per process when several train: a sharded monitor's W_0 rows differ per
        # rank (and an unsharded one's state is the same on every rank).
        if os.path.isdir(folder) and (args.world_size == 1 or self._sharded or
                                      args.process_index == 0):  # fmt: skip
            path = _state_path(args, folder) if self._sharded else os.path.join(folder, STATE_FILE)
            tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp")
            torch.save(self.monitor.state_dict(), tmp)
            os.replace(tmp, path)

    @property
    def _sharded(self) -> bool:
        return any(w.group is not None for w in self.monitor._watched)

    def on_step_end(self, args, state, control, **kwargs):
        rec = self.monitor.step(state.global_step)
        if rec is not None:
            self._pending = log_items(rec, self.prefix)
            control.should_log = True  # a log entry at this step carries the figures
        if self.monitor.should_stop:
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending:
            return
        if logs is not None:
            logs.update(self._pending)  # what the reporters after this callback read
        # The Trainer appended a copy of ``logs`` to log_history just before on_log.
        hist = state.log_history
        if hist and hist[-1].get("step") == state.global_step:
            hist[-1].update(self._pending)
        self._pending = {}
