"""OPD / SFT / RLVR training drivers (``paramgeom.drivers``).

DESIGN.md "Drivers" and arXiv 2606.07082: three post-training objectives on one shared
loop, producing bf16 checkpoint trajectories for ``paramgeom diff`` and ``trajectory``::

    python -m paramgeom.drivers.sft  --out runs/sft  --steps 300 --save-every 30
    python -m paramgeom.drivers.opd  --out runs/opd  --steps 300 --save-every 30
    python -m paramgeom.drivers.rlvr --out runs/rlvr --steps 300 --save-every 30

The embedded default needs no download: the addition task (:mod:`.task`), small Llama-style
models (:mod:`.models`), and a teacher plus weaker student base trained on the task and
cached (:mod:`.teacher`). ``--model PATH`` / ``--teacher PATH`` take any Hugging Face causal
LM folders instead. Modules: :mod:`.objectives` (losses and advantages, with references),
:mod:`.rollout` (sampling), :mod:`.steps` (one step per objective), :mod:`.loop` (the
loop, checkpoints, metrics), :mod:`.projection` (functional sufficiency test), :mod:`.cli`.
Needs ``transformers`` (the ``train`` extra); importing this package does not.
"""
