"""Random-weight Llama-family checkpoints and LLM packages for tests and benchmarks (no downloads).

`build_checkpoint` writes a Hugging Face checkpoint through transformers' own `save_pretrained`
(so it is loaded through the real loading path) with a real tokenizer made by the `tokenizers`
library: a byte-level BPE trained on generated text (multi-byte characters included, to exercise
incremental detokenization), or a word-level vocabulary of any size. Needs the dev dependencies
transformers and tokenizers; imported by nothing at run time.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
WORDS = (  # noqa: SIM905 - a paragraph of words reads better than a list literal
    "the a of to and in is it you that he was for on are with as his they be at one have this from "
    "model serve token cache block prefix engine request stream chat hello world batch query answer "
    "café naïve über 你好 世界 東京 🙂 🚀 ünïcödé"
).split()


def sample_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def build_tokenizer(out_dir: Path, kind: str = "bpe", vocab_size: int = 400) -> Any:
    """Train (bpe) or enumerate (wordlevel) a tokenizer, save it with a chat template; return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        corpus = [sample_text(40, seed) for seed in range(300)]
        tok.train_from_iterator(corpus, trainer)
    elif kind == "wordlevel":
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        vocab["<unk>"] = len(vocab)
        for i in range(vocab_size - len(vocab)):
            vocab[f"w{i}"] = len(vocab)
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    else:
        raise ValueError(kind)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[3:]})
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def build_checkpoint(
    out_dir: Path,
    arch: str = "llama",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    tokenizer: str = "bpe",
    vocab_size: int = 400,
    initializer_range: float = 0.02,
    tie_word_embeddings: bool = False,
    rope_parameters: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a random `arch` ("llama", "qwen2", "mistral") checkpoint with a tokenizer into `out_dir`."""
    import torch
    import transformers

    tok = build_tokenizer(out_dir, tokenizer, vocab_size)
    config_cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "mistral": transformers.MistralConfig,
    }[arch]
    model_cls = {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "mistral": transformers.MistralForCausalLM,
    }[arch]
    extra: dict[str, Any] = {}
    if rope_parameters is not None:
        extra["rope_parameters"] = rope_parameters
    if arch == "mistral":
        extra["sliding_window"] = None
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **extra,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    if arch == "qwen2":  # random biases, so the bias path is really exercised
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, initializer_range)
    model.save_pretrained(str(out_dir))
    return out_dir


def build_package(root: Path, llm: dict[str, Any] | None = None, **checkpoint_args: Any) -> Path:
    """An LLM model package: `root/model/config.json` plus the checkpoint in `root/model/weights`."""
    model_dir = root / "model"
    build_checkpoint(model_dir / "weights", **checkpoint_args)
    config = {"model_type": "LLM", "model_algorithm": "text_generation", "llm": llm or {}}
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    return root
