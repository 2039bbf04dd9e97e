"""Seconds per AdamW update of SmolLM2-135M-sized fp32 parameters (B3): torch's default foreach kernel against
the fused one that lmtune's trainer uses on CPU and CUDA.

    .venv/bin/python bench/adamw_step.py          # 2 threads, 3 timed steps each after one warm-up step
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # The tied 49,152 x 576 embedding, then 30 layers' attention (4 x 576^2 less k/v sharing, about 2 per layer)
    # and MLP (3 x 576 x 1536) matrices: 127.5 M parameters, like SmolLM2-135M's big tensors.
    params = [torch.nn.Parameter(torch.randn(n)) for n in [49152 * 576] + [576 * 576] * 60 + [576 * 1536] * 90]
    for q in params:
        q.grad = torch.randn_like(q)
    print(f"{sum(q.numel() for q in params) / 1e6:.1f} M parameters, {args.threads} threads")
    for kind in ("foreach", "fused"):
        opt = torch.optim.AdamW(params, lr=1e-4, **{kind: True})
        opt.step()  # allocates the state
        start = time.perf_counter()
        for _ in range(args.steps):
            opt.step()
        print(f"{kind}: {(time.perf_counter() - start) / args.steps:.3f} s per step")


if __name__ == "__main__":
    main()
