"""An offline character-level tokenizer that behaves like any HF fast tokenizer.

Character level because the built-in tasks are about digits and letters, which BPE would merge into
arbitrary chunks. It is built with `tokenizers`, wrapped in `PreTrainedTokenizerFast` and carries a chat
template, so the data pipeline treats it exactly like a user's tokenizer.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL = [PAD, BOS, EOS, UNK, USER, ASSISTANT, SYSTEM]

# The assistant turn is wrapped in {% generation %} so `return_assistant_tokens_mask` works too.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}" + ASSISTANT + "{% generation %}{{ m['content'] }}{{ eos_token }}"
    "{% endgeneration %}"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    chars = list(string.printable[:-5])  # digits, letters, punctuation and the space; no \t\n\r\x0b\x0c
    chars.append("\n")
    vocab = {tok: i for i, tok in enumerate(SPECIAL + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
