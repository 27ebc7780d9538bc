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

``on_lock="stop"`` ends training through ``control.should_training_stop``; when the monitor
has no ``total_steps`` the callback takes the Trainer's ``max_steps`` (the over-locking
guardrail needs it). Importing this module needs ``transformers``; ``import paramgeom`` does
not.
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "paramgeom.integrations.hf needs transformers (pip install transformers)"
    ) from None

from paramgeom.monitor import GeometryMonitor, log_items

__all__ = ["GeometryCallback"]


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
        if self.monitor.total_steps is None and state.max_steps and state.max_steps > 0:
            self.monitor.total_steps = int(state.max_steps)

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
