"""Where each supported model family keeps the parts that early exit needs, as data.

The executor reads one `FamilySpec` per Hugging Face class name and has no per-family branches.
Masks, rotary embeddings and position embeddings are not described here: the executor takes
them from the model's own forward (see `executor.LayerExecutor.prepare`). Adding a family is one
entry below plus one tiny-model test.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class FamilySpec:
    """Dotted attribute paths from the *ForCausalLM module, and the quirks that change logits."""

    layers: str
    final_norm: str | None
    head: str = "lm_head"
    post_norm_projection: str | None = None  # OPT's project_out, applied after the final norm
    attention: str = "self_attn"  # per layer: the module whose output is the attention output
    mlp: str = "mlp"  # per layer: the module whose output is the MLP output
    logit_softcap_attr: str | None = None  # config attribute holding Gemma's final soft-cap


_LLAMA_LIKE = FamilySpec(layers="model.layers", final_norm="model.norm")
_GEMMA_SOFTCAP = FamilySpec(
    layers="model.layers", final_norm="model.norm", logit_softcap_attr="final_logit_softcapping"
)

FAMILIES: dict[str, FamilySpec] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Qwen3ForCausalLM": _LLAMA_LIKE,
    "GemmaForCausalLM": _LLAMA_LIKE,
    "Gemma2ForCausalLM": _GEMMA_SOFTCAP,
    "Gemma3ForCausalLM": _GEMMA_SOFTCAP,
    "OPTForCausalLM": FamilySpec(
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        post_norm_projection="model.decoder.project_out",
        mlp="fc2",
    ),
    "GPT2LMHeadModel": FamilySpec(layers="transformer.h", final_norm="transformer.ln_f", attention="attn"),
    "GPTNeoXForCausalLM": FamilySpec(
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attention="attention",
    ),
}


class UnsupportedArchitectureError(ValueError):
    """The model's class has no entry in `FAMILIES`."""


def family_of(model: nn.Module) -> FamilySpec:
    """The spec for `model`'s class, or a clear error naming the supported classes."""
    name = type(model).__name__
    if name not in FAMILIES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {name}; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[name]


def resolve(root: nn.Module, dotted: str | None) -> nn.Module | None:
    """Follow a dotted attribute path; None for a missing path or a part set to None (OPT)."""
    if dotted is None:
        return None
    module: nn.Module | None = root
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module
