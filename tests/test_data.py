import json
from pathlib import Path

import pytest

from lmtune.builtin.tasks import TASKS, splits
from lmtune.builtin.tokenizer import build_tokenizer
from lmtune.config import DataConfig
from lmtune.errors import DataError
from lmtune.train.data import IGNORE, Example, PromptRenderer, collate, load_splits, pack, read_examples


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def answer_tokens(tok, enc) -> str:
    return tok.decode([t for t in enc.labels if t != IGNORE])


def test_alpaca_and_chat_rows_become_messages(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Add.", "input": "1+2", "output": "3"},
        {"instruction": "Say hi.", "output": "hi"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}]},
    ])
    ex = read_examples(f)
    assert ex[0].messages == [{"role": "user", "content": "Add.\n1+2"}, {"role": "assistant", "content": "3"}]
    assert ex[1].messages[0]["content"] == "Say hi."
    assert [m["role"] for m in ex[2].messages] == ["system", "user", "assistant"]
    assert ex[2].answer == "a"


@pytest.mark.parametrize("template", ["chat", "alpaca", "Q: {prompt}\nA: "])
def test_loss_only_on_the_answer(template):
    tok = build_tokenizer()
    enc = PromptRenderer(tok, template).encode(Example([{"role": "user", "content": "Reverse.\nabc"},
                                                         {"role": "assistant", "content": "cba"}]))
    assert answer_tokens(tok, enc) == "cba</s>"
    assert len(enc.input_ids) == len(enc.labels)
    # The generation prompt is exactly the tokens before the answer.
    first = next(i for i, t in enumerate(enc.labels) if t != IGNORE)
    assert enc.prompt_ids == enc.input_ids[:first]


def test_multi_turn_chat_masks_every_user_turn():
    tok = build_tokenizer()
    msgs = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "1"},
            {"role": "user", "content": "two"}, {"role": "assistant", "content": "2"}]
    enc = PromptRenderer(tok, "chat").encode(Example(msgs))
    assert answer_tokens(tok, enc) == "1</s>2</s>"
    assert "two" in tok.decode(enc.prompt_ids) and enc.answer == "2"


def test_examples_without_room_for_an_answer_are_dropped():
    tok = build_tokenizer()
    long_prompt = Example([{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "y"}])
    out, dropped = PromptRenderer(tok, "chat", max_length=20).encode_all([long_prompt])
    assert out == [] and dropped == 1


def test_packing_removes_padding_and_keeps_labels():
    tok = build_tokenizer()
    r = PromptRenderer(tok, "chat")
    encs = [r.encode(Example([{"role": "user", "content": f"w{i}"}, {"role": "assistant", "content": str(i)}]))
            for i in range(10)]
    blocks = pack(encs, 40)
    assert sum(len(b.input_ids) for b in blocks) == sum(len(e.input_ids) for e in encs)
    assert all(len(b.input_ids) <= 40 for b in blocks) and len(blocks) < len(encs)
    assert sum(t != IGNORE for b in blocks for t in b.labels) == sum(t != IGNORE for e in encs for t in e.labels)
    batch = collate(encs[:3], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


@pytest.mark.parametrize(("line", "needle"), [
    ('{"instruction": "a"}', "missing field 'output'"),
    ('{"instruction": 3, "output": "x"}', "field 'instruction' must be a string"),
    ('{"instruction": "a", "output": ""}', "field 'output' is empty"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0]"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "last message must have role 'assistant'"),
    ('{"instruction": "a", "output": "b"', "not valid JSON"),
    ('[1, 2]', "must be a JSON object"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, line, needle):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "ok", "output": "fine"}, line])
    with pytest.raises(DataError) as e:
        read_examples(f)
    assert "bad.jsonl" in str(e.value) and "line 2" in str(e.value) and needle in str(e.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(DataConfig(path=str(tmp_path / "nope.jsonl")))


def test_split_by_fraction_and_by_files(tmp_path):
    rows = [{"instruction": f"i{i}", "output": f"o{i}"} for i in range(100)]
    f = write_jsonl(tmp_path / "all.jsonl", rows)
    s = load_splits(DataConfig(path=str(f), validation_fraction=0.1, test_fraction=0.2, split_seed=1))
    assert (len(s.train), len(s.validation), len(s.test)) == (70, 10, 20)
    seen = [e.answer for e in s.train + s.validation + s.test]
    assert sorted(seen) == sorted(r["output"] for r in rows)
    v = write_jsonl(tmp_path / "val.json", [])
    v.write_text(json.dumps(rows[:5]))  # a JSON list works as well as JSONL
    s2 = load_splits(DataConfig(path=str(f), validation_path=str(v), test_fraction=0.0))
    assert len(s2.validation) == 5 and len(s2.train) == 100 and s2.test == []


def test_builtin_splits_are_deterministic_and_disjoint():
    a, b = splits(500, 100, 100, seed=3), splits(500, 100, 100, seed=3)
    assert a == b
    assert {r["task"] for r in a["train"]} == set(TASKS)
    held_out = {(r["instruction"], r["input"]) for r in a["validation"] + a["test"] if r["task"] != "lookup"}
    assert not held_out & {(r["instruction"], r["input"]) for r in a["train"]}
    assert splits(50, 10, 10, seed=4)["train"] != a["train"][:50]
