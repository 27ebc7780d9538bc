"""Overhead of ``GeometryMonitor`` as a fraction of training step time (DESIGN.md "Monitor":
"its overhead is measured and stated"; issue 6 target: < 1% at ``every=100``).

Method: a Llama-style causal LM trains with AdamW (fp32 master weights, as the drivers do)
on random tokens; ``step_s`` is the median of ``--steps`` timed optimiser steps (after one
warm-up step), ``record_s`` the median of ``--records`` monitor records taken on the
trained weights (nonzero ``dW``, so the SVD path runs; the first record has no Sim_K
partner, the later ones do). The overhead at ``every = N`` is
``record_s / (N * step_s)``: a record happens once per N steps and costs ``record_s``;
``monitor.step`` on the other steps is one modulo. Step time grows with tokens per step
and the record does not, so the figure is stated with the tokens per step used.

Models: ``small`` is the drivers' embedded ``small`` size (hidden 256, 6 layers, MLP 768,
the drivers' 15-token vocabulary, SFT-like batch of 128 sequences of 16 tokens);
``large`` is a synthetic Llama (hidden 1024, 4 layers, MLP 2816, vocabulary 256, 8 x 64
tokens per step). With the monitor's defaults (K = 16, ``exact_threshold`` 64) every
matrix of both takes ``randomized_svd``'s fixed depth: block Krylov of q + 1 = 3 blocks of
K + p = 26 columns (before 2026-12: q = 2 power iterations).

Sharded (``--ranks R``, R > 1): R gloo processes on the CPU, one thread each (R x 1 threads
against the one-process run's ``--threads``), every decoder layer and the model wrapped by
FSDP2 ``fully_shard`` (the watched weights become row-sharded DTensors, measured by the
sharded monitor: local products, all-reduced counts and small matrices); the global batch
is split over the ranks (data parallel); the figures are rank 0's, every rank records.

``python benchmarks/bench_monitor.py [--models small large] [--every 100] [--threads 2]
[--ranks 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from harness import machine, quantile

from paramgeom.monitor import GeometryMonitor, default_modules

MODELS = {
    # name: (hidden, layers, heads, intermediate, vocab, batch, seq)
    "small": (256, 6, 4, 768, 15, 128, 16),
    "large": (1024, 4, 8, 2816, 256, 8, 64),
}


@dataclass
class Row:
    model: str
    device: str
    ranks: int
    watched_params: int
    reference_mib: float
    tokens_per_step: int
    step_s: float
    record_s: float
    record_s_p20: float
    record_s_p80: float
    every: int
    overhead_pct: float


def build(name: str, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, inter, vocab, batch, seq = MODELS[name]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=heads, max_position_embeddings=max(128, seq),
                      tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    return model, tokens


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(
    name: str, device: torch.device, every: int, steps: int, records: int, ranks: int = 1
) -> Row:
    model, tokens = build(name, device)
    watched = sum(m.weight.numel() for n, m in model.named_modules() if default_modules(n, m))
    if ranks > 1:  # inside a spawned rank: FSDP2 shards, this rank's share of the batch
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (ranks,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        tokens = tokens.chunk(ranks)[dist.get_rank()]
    mon = GeometryMonitor(model, every=every)  # reference = the starting weights
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        out = model(input_ids=tokens, labels=tokens)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    train_step()  # warm-up (allocator, kernels)
    step_times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        train_step()
        sync(device)
        step_times.append(time.perf_counter() - t0)
    rec_times = []
    for i in range(records):
        sync(device)
        t0 = time.perf_counter()
        mon.record(i + 1)
        sync(device)
        rec_times.append(time.perf_counter() - t0)
    step_s = statistics.median(step_times)
    rec_s = statistics.median(rec_times)
    return Row(
        model=name,
        device=str(device),
        ranks=ranks,
        watched_params=watched,
        reference_mib=round(mon.reference_bytes / 2**20, 2),
        tokens_per_step=tokens.numel() * ranks,
        step_s=round(step_s, 4),
        record_s=round(rec_s, 4),
        record_s_p20=round(quantile(rec_times, 0.2), 4),
        record_s_p80=round(quantile(rec_times, 0.8), 4),
        every=every,
        overhead_pct=round(100 * rec_s / (every * step_s), 3),
    )


def _rank_main(rank: int, args, device: torch.device, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=args.ranks)  # fmt: skip
    rows = [bench(m, device, args.every, args.steps, args.records, args.ranks)
            for m in args.models]  # fmt: skip
    if rank == 0:
        with open(out, "w") as f:
            json.dump([asdict(r) for r in rows], f)
    dist.destroy_process_group()


def _spawn(args, device: torch.device) -> list[Row]:
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        mp.spawn(_rank_main, args=(args, device, os.path.join(tmp, "store"), out),
                 nprocs=args.ranks)  # fmt: skip
        with open(out) as f:
            return [Row(**r) for r in json.load(f)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (5)")
    ap.add_argument("--records", type=int, default=5, help="timed monitor records (5)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ranks", type=int, default=1, help="gloo ranks, FSDP2-sharded (1)")
    ap.add_argument("--json", default=None, help="also write rows and machine info here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine()
    if not info["git"]:  # machine() asks the installed package's folder; ask this checkout
        git = ["git", "rev-parse", "--short", "HEAD"]
        run = subprocess.run(git, capture_output=True, text=True, cwd=Path(__file__).parent)
        info["git"] = run.stdout.strip()
    info["loadavg_before"] = os.getloadavg()
    if args.ranks > 1:
        rows = _spawn(args, device)
    else:
        rows = [bench(m, device, args.every, args.steps, args.records) for m in args.models]
    info["loadavg_after"] = os.getloadavg()
    head = ("model", "device", "ranks", "watched", "ref MiB", "tok/step", "step s", "record s",
            "p20-p80", "every", "overhead")  # fmt: skip
    print(" | ".join(head))
    for r in rows:
        print(f"{r.model} | {r.device} | {r.ranks} | {r.watched_params / 1e6:.1f}M | "
              f"{r.reference_mib} | "
              f"{r.tokens_per_step} | {r.step_s:.4f} | {r.record_s:.4f} | "
              f"{r.record_s_p20:.4f}-{r.record_s_p80:.4f} | {r.every} | "
              f"{r.overhead_pct:.3f}%")  # fmt: skip
    print(f"# threads {info['threads']}, load average before {info['loadavg_before']}, "
          f"after {info['loadavg_after']}, torch {info['torch']}, git {info['git']}, "
          f"gpu {info['gpu']}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": [asdict(r) for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
