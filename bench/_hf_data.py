"""lmtune's encoded examples in the form HF `Trainer` takes, padded exactly as lmtune's trainer pads them,
so benchmarks compare the two trainers on identical batches."""

from __future__ import annotations

import torch

from lmtune.train.data import Encoded, collate


class EncodedDataset(torch.utils.data.Dataset):
    """lmtune's encoded examples as the {input_ids, labels} dicts a HF Trainer expects."""

    def __init__(self, examples: list[Encoded]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        e = self.examples[i]
        return {"input_ids": e.input_ids, "labels": e.labels}


class Collator:
    """Right-pads exactly like lmtune's trainer, by calling `lmtune.train.data.collate`."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return collate([Encoded(f["input_ids"], f["labels"]) for f in features], self.pad_id)
