"""A randomly initialised Llama-2-7B-shaped model for GPU timing runs of `suite.py --random-llama-7b`.

Built from a config alone (nothing is downloaded): Llama 2 7B's sizes, fp16 on CUDA, fp32 on CPU.
Its weights are random, so its answers and lens features mean nothing; the suite times it with a
fixed exit schedule only. Its tokenizer is a byte-level BPE with Llama 2's vocabulary size,
trained in memory on the benchmark's task texts, so prompts get roughly the token counts a real
Llama tokenizer gives English text (the suite reports them), and the LM head has Llama 2's
32,000 rows, which sets the cost of a full-vocabulary lens check.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from adainfer.engine.loading import LoadedModel
from adainfer.engine.model import EarlyExitModel

LLAMA_2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)


def bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most `vocab_size` ids trained on `texts`; id 0 is the pad token."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>")


def random_llama_7b(texts: Iterable[str], device: str, num_layers: int = 32, seed: int = 0) -> EarlyExitModel:
    """Llama 2 7B's shape with `num_layers` decoder layers (fewer only to check the code on a CPU)."""
    config = LlamaConfig(**{**LLAMA_2_7B, "num_hidden_layers": num_layers})
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    loaded = LoadedModel(model=model, tokenizer=bpe_tokenizer(texts, config.vocab_size),
                         name=f"random-llama-2-7b-shape-{num_layers}-layers", source="LlamaConfig (random weights)",
                         cache_path=None, load_seconds=0.0, converted_now=False)
    return EarlyExitModel(loaded)
