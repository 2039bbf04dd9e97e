"""Instruction datasets: reading rows, rendering prompts, masking the loss to responses, splits, packing.

Every row becomes a list of chat messages, whatever its file format, so one rendering path serves Alpaca rows,
chat rows and the built-in tasks. The loss is taken on assistant tokens only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmtune.config import DataConfig
from lmtune.errors import DataError

ALPACA_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
ROLES = ("system", "user", "assistant")
IGNORE = -100


@dataclass
class Example:
    messages: list[dict[str, str]]
    task: str | None = None
    row: dict[str, Any] | None = None  # as read from the file: what a user's augmentation function receives

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int] = field(default_factory=list)  # everything before the last answer, for generation
    answer: str = ""
    task: str | None = None


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]


# ---------------------------------------------------------------------------------------------------- reading
def read_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs from a JSONL file or a JSON list; errors name the file and line."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"data file {str(p)!r} is a directory; give the JSONL or JSON file inside it")
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist; check data.path (relative paths are relative "
                        "to the config file)")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{p}, line {line}, column {column}: byte 0x{raw[e.start]:02x} is not UTF-8; save the "
                        "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        return [(i + 1, r) for i, r in enumerate(rows)]
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}, line {lineno}: not valid JSON ({e.msg} at column {e.colno}); each line of a "
                            "JSONL file must be one JSON object") from None
    if not out:
        raise DataError(f"{p}: the file has no rows")
    return out


def to_example(row: Any, where: str) -> Example:
    """Alpaca (`instruction`, `input`, `output`) or chat (`messages`) row -> Example."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    task = row.get("task") if isinstance(row.get("task"), str) else None
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: messages[{i}] must be an object with role in {list(ROLES)} and a "
                                f"string content, got {m!r}")
            clean.append({"role": m["role"], "content": m["content"]})
        if clean[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message must have role 'assistant' (the answer to learn)")
        return Example(clean, task, row)
    for key in ("instruction", "output"):
        if key not in row:
            raise DataError(f"{where}: missing field {key!r}; rows need 'instruction' and 'output' (Alpaca, "
                            "optional 'input') or 'messages' (chat)")
        if not isinstance(row[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
    inp = row.get("input") or ""
    if not isinstance(inp, str):
        raise DataError(f"{where}: field 'input' must be a string, got {type(inp).__name__}")
    if not row["output"].strip():
        raise DataError(f"{where}: field 'output' is empty; there is nothing to learn from this row")
    prompt = f"{row['instruction']}\n{inp}" if inp else row["instruction"]
    return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}], task,
                   row)


def read_examples(path: str | Path) -> list[Example]:
    return [to_example(row, f"{path}, line {lineno}") for lineno, row in read_rows(path)]


def load_splits(cfg: DataConfig) -> Splits:
    """Train/validation/test from the built-in tasks, separate files, or fractions of one file."""
    if cfg.path is None:
        from lmtune.builtin.tasks import splits

        b = cfg.builtin
        raw = splits(b.n_train, b.n_validation, b.n_test, b.seed, b.tasks)
        conv = {k: [to_example(r, f"builtin {k} row {i}") for i, r in enumerate(rows)] for k, rows in raw.items()}
        return Splits(conv["train"][: cfg.max_train_samples], conv["validation"], conv["test"])
    rows = read_examples(cfg.path)
    rng = random.Random(cfg.split_seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    val = read_examples(cfg.validation_path) if cfg.validation_path else None
    test = read_examples(cfg.test_path) if cfg.test_path else None
    n_val = 0 if val is not None else max(1, round(cfg.validation_fraction * len(rows)))
    n_test = 0 if test is not None or cfg.test_fraction == 0 else max(1, round(cfg.test_fraction * len(rows)))
    if len(rows) - n_val - n_test < 1:
        raise DataError(f"{cfg.path}: {len(rows)} rows are too few to split off validation and test data; "
                        "add rows or give data.validation_path / data.test_path")
    picked = [rows[i] for i in order]
    return Splits(
        train=picked[n_val + n_test:][: cfg.max_train_samples],
        validation=val if val is not None else picked[:n_val],
        test=test if test is not None else picked[n_val:n_val + n_test],
    )


# ---------------------------------------------------------------------------------------------------- encoding
class PromptRenderer:
    """Renders messages to token ids with labels on assistant tokens only, by chat template or by string."""

    def __init__(self, tokenizer: Any, template: str = "auto", max_length: int = 256):
        self.tok = tokenizer
        self.max_length = max_length
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if template == "chat" and not has_chat:
            raise DataError("data.prompt_template is 'chat' but the tokenizer has no chat template; use 'alpaca' "
                            "or a custom string with {prompt}")
        self.use_chat = template == "chat" or (template == "auto" and has_chat)
        self.text_template = ALPACA_TEMPLATE if template in ("auto", "alpaca", "chat") else template
        if tokenizer.eos_token_id is None:
            raise DataError("the tokenizer has no eos_token; set one so the model can learn where answers end")

    def _chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        ids = self.tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                           return_dict=False)
        return list(ids)

    def _answer_labels(self, answer: list[int]) -> list[int]:
        """Labels for one rendered assistant turn: up to and including its end-of-turn (EOS) token.

        Templates such as ChatML append a separator after the EOS (`<|im_end|>\\n`); generation stops at the
        EOS, so the model is never asked to produce what follows it, and those tokens are not trained on.
        """
        eos = self.tok.eos_token_id
        if eos in answer:
            end = answer.index(eos) + 1
            return answer[:end] + [IGNORE] * (len(answer) - end)
        return list(answer)

    def _text_pieces(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        pieces: list[tuple[str, bool]] = []
        system = ""
        for m in messages:
            if m["role"] == "system":
                system += m["content"] + "\n\n"
            elif m["role"] == "user":
                pieces.append((system + self.text_template.format(prompt=m["content"]), False))
                system = ""
            else:
                pieces.append((m["content"], True))
        return pieces

    def encode(self, ex: Example) -> Encoded | None:
        """Token ids and labels; None when no answer token fits in max_length."""
        ids: list[int] = []
        labels: list[int] = []
        if self.use_chat:
            for i, m in enumerate(ex.messages):
                if m["role"] != "assistant":
                    continue
                prefix = self._chat(ex.messages[:i], generation_prompt=True)
                upto = self._chat(ex.messages[: i + 1], generation_prompt=False)
                if upto[: len(prefix)] != prefix or len(prefix) < len(ids):
                    raise DataError("the tokenizer's chat template renders a conversation prefix differently "
                                    "from the whole conversation, so answers cannot be masked; set "
                                    "data.prompt_template to 'alpaca' or a custom string")
                labels += [IGNORE] * (len(prefix) - len(ids)) + self._answer_labels(upto[len(prefix):])
                ids = upto
            prompt_ids = self._chat(ex.messages[:-1], generation_prompt=True)
        else:
            bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
            ids, labels = list(bos), [IGNORE] * len(bos)
            prompt_ids = []
            for text, is_answer in self._text_pieces(ex.messages):
                piece = self.tok(text, add_special_tokens=False)["input_ids"]
                if is_answer:
                    piece = piece + [self.tok.eos_token_id]
                    prompt_ids = list(ids)
                ids += piece
                labels += piece if is_answer else [IGNORE] * len(piece)
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(t == IGNORE for t in labels[1:]):
            return None
        return Encoded(ids, labels, prompt_ids, ex.answer, ex.task)

    def encode_all(self, examples: list[Example]) -> tuple[list[Encoded], int]:
        """Encoded examples and the number dropped because no answer token fit in max_length."""
        out = [e for e in (self.encode(x) for x in examples) if e is not None]
        return out, len(examples) - len(out)


def pack(examples: list[Encoded], max_length: int) -> list[Encoded]:
    """Concatenate examples into blocks of up to max_length tokens so no compute is spent on padding.

    Examples are not split across blocks; attention may cross example boundaries inside a block, as in TRL's
    classic packing, which is harmless for short instruction pairs and removes all padding.
    """
    blocks: list[Encoded] = []
    cur_ids: list[int] = []
    cur_labels: list[int] = []
    for ex in examples:
        if cur_ids and len(cur_ids) + len(ex.input_ids) > max_length:
            blocks.append(Encoded(cur_ids, cur_labels))
            cur_ids, cur_labels = [], []
        cur_ids = cur_ids + ex.input_ids
        cur_labels = cur_labels + ex.labels
    if cur_ids:
        blocks.append(Encoded(cur_ids, cur_labels))
    return blocks


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors for training and loss evaluation."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate_prompts(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts, as greedy batched generation needs."""
    width = max(len(e.prompt_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.prompt_ids)
        ids[i, width - n:] = torch.tensor(e.prompt_ids)
        mask[i, width - n:] = 1
    return {"input_ids": ids, "attention_mask": mask}
