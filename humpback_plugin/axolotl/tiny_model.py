"""A tiny random Llama with a locally trained tokenizer, for tests that run real tools.

No model hub is needed: the byte-level BPE tokenizer is trained on whatever text is at
hand (never an unknown token, since every byte is in the vocabulary), and the weights are
random. The shape suits both Axolotl on a CPU and vLLM (head_dim 64: hidden 128, 2 heads).
The tokenizer carries the same Llama-2 ``[INST]`` chat template as the default configs,
so tests exercise the template real runs use.

    python -m humpback_plugin.axolotl.tiny_model OUT_DIR [--text FILE ...]

Needs ``torch``, ``transformers`` and ``tokenizers`` (the Axolotl environment has them).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from humpback_plugin import SYSTEM_AUGMENTED, SYSTEM_SEED
from humpback_plugin.axolotl.templates import CHAT_TEMPLATE_FILES
from humpback_plugin.core.prompts import builtin_templates

CHAT_TEMPLATE_PATH = CHAT_TEMPLATE_FILES["llama2_inst"]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# Whole pieces of the chat template, so a template turn never splits oddly.
TEMPLATE_PIECES = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]

FALLBACK_TEXT = """\
Below is an instruction from an user and a candidate answer. Write the most likely question.
The quick brown fox jumps over the lazy dog. How do I bake bread at home? Mix flour, water,
salt and yeast; knead the dough, let it rise, shape it and bake it in a hot oven.
What is the capital of France? The capital of France is Paris, on the river Seine.
Explain photosynthesis: plants turn light, water and carbon dioxide into sugar and oxygen.
"""


def default_texts() -> Iterator[str]:
    """Text shipped with the package: prompts, system tags and a few plain sentences."""
    yield FALLBACK_TEXT
    yield SYSTEM_SEED
    yield SYSTEM_AUGMENTED
    for path in builtin_templates().values():
        yield path.read_text(encoding="utf-8")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the chat template set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_tokens(TEMPLATE_PIECES)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
    return fast


def build_tiny_llama(
    out_dir: str | Path,
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_heads: int = 2,
    num_layers: int = 2,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Save a random tiny Llama and its tokenizer to ``out_dir``; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts if texts is not None else default_texts(), vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _texts_from_files(paths: list[str]) -> Iterator[str]:
    """Plain text files, or the string values of JSONL records."""
    yield from default_texts()
    for name in paths:
        path = Path(name)
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield " ".join(_strings(json.loads(line)))
        else:
            yield path.read_text(encoding="utf-8")


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--text", nargs="*", default=[], help="text or JSONL files to train on")
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args(argv)
    path = build_tiny_llama(args.out_dir, _texts_from_files(args.text), vocab_size=args.vocab_size)
    print(path)


if __name__ == "__main__":
    main()
