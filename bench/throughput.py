"""B3: training throughput of lmtune's Trainer against Hugging Face `transformers.Trainer`.

Both train the built-in tiny Llama (fp32, CPU) on the same encoded built-in training data with the same
micro-batch size, optimizer (torch AdamW), LR schedule (linear, no warm-up), gradient clipping and number of
optimizer steps. Throughput is non-padding tokens (attention_mask sum) per second of the training loop:

- lmtune: `TrainResult.tokens / TrainResult.train_seconds` (model loading and the one evaluation at the end
  are outside that time).
- HF: non-padding tokens counted by the Trainer (`include_num_input_tokens_seen="non_padding"`) over the wall
  time of `trainer.train()` (model loading and Trainer construction are outside it).

Runs alternate (lmtune, HF, [lmtune packed,] lmtune, HF, ...); the table gives the median of --repeats runs.

    .venv/bin/python bench/throughput.py               # default: 150 steps, batch 32, 2 threads, 3 repeats
    .venv/bin/python bench/throughput.py --packing     # adds a row for lmtune with data.packing=true
    .venv/bin/python bench/throughput.py --model builtin:smollm2-135m-instruct --lora --n-train 256 \
        --max-length 256 --batch-size 8 --steps 6 --repeats 3 --packing   # the real model (B3, SmolLM2)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from _hf_data import Collator, EncodedDataset  # bench/ is on sys.path when run as a script
from transformers import PrinterCallback, TrainingArguments
from transformers import Trainer as HFTrainer
from transformers.utils import logging as hf_logging

from lmtune.config import ExperimentConfig, validate_config
from lmtune.train.model import load_model, load_tokenizer
from lmtune.train.trainer import PreparedData
from lmtune.train.trainer import Trainer as LmtuneTrainer


@dataclass
class Run:
    name: str
    steps: int
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def make_config(args: argparse.Namespace, packing: bool = False) -> ExperimentConfig:
    data: dict[str, Any] = {"packing": packing}
    if args.n_train:
        data.update(builtin={"n_train": args.n_train, "n_validation": 8, "n_test": 8}, max_length=args.max_length)
    return validate_config({
        "model": {"name_or_path": args.model},
        "data": data,
        "train": {
            "use_lora": args.lora,
            "learning_rate": args.lr,
            "per_device_train_batch_size": args.batch_size,
            "max_steps": args.steps,
            "optim": "adamw",
            "lr_scheduler_type": "linear",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "torch_num_threads": args.threads,
            "device": "cpu",
            "seed": args.seed,
            # Evaluate only once, after the last step; that evaluation is not in train_seconds, and it is kept
            # small so the benchmark spends its time training.
            "eval_steps": args.steps + 1,
            "eval_max_samples": 8,
            "max_new_tokens": 4,
        },
    })


def run_lmtune(cfg: ExperimentConfig, prepared: PreparedData, tokenizer: Any, name: str) -> Run:
    trainer = LmtuneTrainer(cfg.model, cfg.data, cfg.train, prepared=prepared, tokenizer=tokenizer).setup()
    result = trainer.train()
    return Run(name, result.steps, result.tokens, result.train_seconds)


def run_hf(cfg: ExperimentConfig, prepared: PreparedData, tokenizer: Any, args: argparse.Namespace) -> Run:
    t = cfg.train
    torch.set_num_threads(args.threads)
    torch.manual_seed(t.seed)
    model = load_model(cfg.model, t)
    with tempfile.TemporaryDirectory(prefix="lmtune-bench-") as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=t.per_device_train_batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            max_steps=t.max_steps,
            learning_rate=t.learning_rate,
            lr_scheduler_type=t.lr_scheduler_type,
            warmup_steps=0,
            optim=args.hf_optim,
            weight_decay=t.weight_decay,
            adam_beta1=t.adam_beta1,
            adam_beta2=t.adam_beta2,
            adam_epsilon=t.adam_epsilon,
            max_grad_norm=t.max_grad_norm,
            seed=t.seed,
            use_cpu=True,
            bf16=False,
            fp16=False,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            include_num_input_tokens_seen="non_padding",
        )
        trainer = HFTrainer(model=model, args=targs, data_collator=Collator(tokenizer.pad_token_id),
                            train_dataset=EncodedDataset(prepared.train))
        trainer.remove_callback(PrinterCallback)  # with disable_tqdm it would print the final metrics dict
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return Run("hf", trainer.state.global_step, int(trainer.state.num_input_tokens_seen), seconds)


def packed_steps(args: argparse.Namespace, prepared: PreparedData, packed: PreparedData) -> int:
    """Steps for the packed run to see about as many tokens as the padded run (packed batches are bigger)."""
    per_example = sum(len(e.input_ids) for e in prepared.train) / len(prepared.train)
    blocks = packed.training_set(make_config(args, packing=True).train)
    per_block = sum(len(e.input_ids) for e in blocks) / len(blocks)
    return max(1, math.ceil(args.steps * per_example / per_block))


class OtherLoad:
    """CPUs other processes kept busy between start() and stop(): busy CPU time in /proc/stat minus ours."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.t0: tuple[float, float, float] | None = None

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                values = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = (sum(values) - values[3] - values[4]) / self.tick  # all but idle and iowait, in seconds
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def start(self) -> OtherLoad:
        self.t0 = self._sample()
        return self

    def stop(self) -> float | None:
        t1 = self._sample()
        if self.t0 is None or t1 is None:
            return None
        wall, busy, own = (b - a for a, b in zip(self.t0, t1, strict=True))
        return max(0.0, (busy - own) / max(wall, 1e-9))


def machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per run (default 150)")
    p.add_argument("--batch-size", type=int, default=32, help="micro-batch size (default 32)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each trainer, alternating (default 3)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--packing", action="store_true",
                   help="add a row for lmtune with data.packing=true (steps scaled to a similar token count)")
    p.add_argument("--model", default="builtin:tiny", help="model.name_or_path (e.g. builtin:smollm2-135m-instruct)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (lmtune's defaults) instead of all "
                   "weights")
    p.add_argument("--n-train", type=int, default=0, help="built-in training rows (default: the config default)")
    p.add_argument("--max-length", type=int, default=256, help="data.max_length, with --n-train")
    p.add_argument("--hf-optim", default="adamw_torch",
                   help="HF optim name; adamw_torch is torch.optim.AdamW as lmtune uses (HF's own default on "
                        "torch>=2.8 is adamw_torch_fused)")
    args = p.parse_args()

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    cfg = make_config(args)
    tokenizer = load_tokenizer(cfg.model)
    prepared = PreparedData.build(cfg.data, tokenizer)
    plan: list[tuple[str, ExperimentConfig, PreparedData]] = [("lmtune", cfg, prepared),
                                                              ("hf", cfg, prepared)]
    if args.packing:
        pcfg = make_config(args, packing=True)
        packed = PreparedData.build(pcfg.data, tokenizer)
        pcfg.train.max_steps = packed_steps(args, prepared, packed)
        pcfg.train.eval_steps = pcfg.train.max_steps + 1
        plan.append(("lmtune packed", pcfg, packed))

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {machine()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
    load = OtherLoad().start()
    time.sleep(1.0)
    busy = load.stop()
    if busy is not None and busy > 0.3:
        print(f"warning: other processes keep {busy:.1f} CPUs busy; with every core given to torch threads "
              "that slows both trainers several-fold and makes the numbers noisy")
    print(f"{args.model}{' LoRA' if args.lora else ''} fp32 CPU, {len(prepared.train)} training examples, "
          f"batch {args.batch_size}, "
          f"{args.steps} steps, lr {args.lr}, adamw + linear schedule, HF optim {args.hf_optim}")
    runs: dict[str, list[Run]] = {name: [] for name, _, _ in plan}
    for rep in range(args.repeats):
        for name, c, data in plan:
            load = OtherLoad().start()
            run = run_hf(c, data, tokenizer, args) if name == "hf" else run_lmtune(c, data, tokenizer, name)
            busy = load.stop()
            note = f"  (other processes used {busy:.1f} CPUs)" if busy is not None and busy > 0.2 else ""
            runs[name].append(run)
            print(f"  repeat {rep + 1}  {name:<14} {run.steps:>5} steps {run.tokens:>9,} tokens "
                  f"{run.seconds:>7.2f} s {run.tokens_per_second:>9,.0f} tokens/s{note}", flush=True)

    median = {name: statistics.median(r.tokens_per_second for r in rs) for name, rs in runs.items()}
    hf = median["hf"]
    print()
    print(f"| trainer | steps | tokens/run | seconds (median) | tokens/s (median of {args.repeats}) "
          "| vs HF |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        tokens, seconds = statistics.median(r.tokens for r in rs), statistics.median(r.seconds for r in rs)
        print(f"| {name} | {rs[0].steps} | {tokens:,.0f} | {seconds:.2f} | {median[name]:,.0f} "
              f"| {median[name] / hf:.2f}x |")
    print()
    print(f"ratio lmtune/HF tokens/s: {median['lmtune'] / hf:.2f}")
    if args.packing:
        print(f"ratio lmtune packed/HF tokens/s: {median['lmtune packed'] / hf:.2f}")


if __name__ == "__main__":
    main()
