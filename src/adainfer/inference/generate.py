"""Multi-token generation with early exit on a frozen model, in two modes (batch size 1, greedy).

`mode="lossless"` is self-speculative decoding (LayerSkip, Elhoushi et al. 2024; Draft & Verify,
Zhang et al. 2024), with the model's own logit lens instead of a trained exit: draft tokens with
the first `draft_layer` layers (or wherever `policy` exits), then verify them with one pass of the
full model and keep the longest prefix it agrees with plus its own token at the first
disagreement. Every emitted token is the full model's greedy choice, so the output equals
`model.generate(do_sample=False)` token for token (up to float ties: verifying q tokens in one
pass sums in another order than q one-token steps). The draft length adapts as in transformers'
assisted generation: +2 after a fully accepted round, -1 otherwise. With `draft_weights="int8"` the
drafts run int8 copies of the layers (`adainfer.inference.int8_draft`): on a CPU a decoding step is
bound by reading the weights, so a draft that reads a quarter of the bytes is what pays where the
lens settles only in the last layers; verification recomputes the drafted positions with the
model's own layers, so the output is unchanged.

`mode="fast"` verifies nothing: each token is its exit layer's lens top-1, and the layers it
skipped get K/V by state propagation (`adainfer.inference.decoder`). Its quality must be measured.

In both modes the prompt runs through every layer (later tokens attend to its K/V at every
depth), so the first generated token is the dense model's.
"""

from __future__ import annotations

import string
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from adainfer.engine.lens import HeadRows
from adainfer.engine.model import EarlyExitModel
from adainfer.inference.decoder import EarlyStep, KVDecoder
from adainfer.inference.generation_costs import GenerationResult, GenerationStats
from adainfer.inference.int8_draft import int8_layers
from adainfer.inference.prompt_lookup import lookup_drafts
from adainfer.inference.stream import GeneratedToken, TokenStream
from adainfer.policies.base import StopPolicy

MODES = ("lossless", "fast")
DRAFT_WEIGHTS = ("model", "int8")
MAX_DRAFT = 16
# Drafts are read from the first 32,768 ids (plus ASCII characters, the prompt's and the generated
# tokens): byte-pair and SentencePiece vocabularies number tokens roughly by frequency. On a large
# vocabulary the LM head costs more than the decoder (Gemma 3 270M: V*h = 168M multiply-adds per row
# against ~5M per layer), so a draft read through the full head is barely cheaper than a dense step;
# a draft only has to be a good guess (verification decides), so it is read from these rows only, as
# FR-Spec (Zhao et al. 2025) drafts from frequent tokens. On Gemma 3 270M this makes lossless
# decoding 1.27x faster than HF generate (benchmarks/results/generation-gemma3-270m.md), where the
# full head made it slower (benchmarks/results/generation_draft_layers_full_head.json).
DEFAULT_DRAFT_VOCAB = 32768


def ascii_character_tokens(model: EarlyExitModel) -> list[int]:
    """The ids of printable ASCII characters tokenised one at a time.

    Gemma's vocabulary numbers its single-character pieces last (':' is 236787), so the first N ids
    miss punctuation; these few ids are added to a draft vocabulary given as an int.
    """
    ids: set[int] = set()
    for character in string.printable:
        ids.update(model.tokenizer(character, add_special_tokens=False).input_ids)
    return sorted(ids)


def generate(model: EarlyExitModel, prompt: str, max_new_tokens: int, *, mode: str = "lossless",
             policy: StopPolicy | None = None, draft_layer: int | None = None,
             stop: str | Sequence[str] | None = None, first_check: int | None = None,
             draft_vocab: int | Sequence[int] | None = DEFAULT_DRAFT_VOCAB, initial_draft: int = 4,
             draft_weights: str = "model", prompt_lookup: int = 0,
             on_token: Callable[[GeneratedToken], None] | None = None) -> GenerationResult:
    """Generate up to `max_new_tokens` tokens after `prompt` greedily, with early exit.

    mode: "lossless" (draft early, verify at full depth; equals dense greedy decoding) or "fast"
        (each token from its exit layer, never verified).
    policy: a stop policy (`policies.base.StopPolicy`) choosing each token's exit layer, walked as in
        prediction: the lens is read from its learned check schedule (`first_check_`) on, or from
        `first_check` when given. Otherwise `draft_layer` (1..L) is the fixed
        exit layer of every draft (lossless) or of every token (fast, where it has no default).
        The lossless default is L: on Gemma 3 270M the lens of earlier layers agrees with the last
        layer too rarely for shallower drafts to pay (benchmarks/results/generation_draft_layers.json).
    stop: a string, or several, ending generation once the output contains it; the returned text
        is cut before it (streamed pieces are not). A stop string never produced runs to the end.
    draft_vocab: lossless drafts at a fixed layer are read from these token ids (an int N means
        ids 0..N-1 and `ascii_character_tokens`) plus the prompt's and each generated token,
        instead of the full vocabulary (`engine.lens.HeadRows`); None reads the full lens.
        Verification always uses the full head, so this changes the acceptance rate and the
        speed, never the output. Unused with a policy (its features need the full lens) and in
        fast mode.
    draft_weights: "model" drafts with the model's own layers, whose K/V below the draft layer are
        kept; "int8" (lossless, fixed draft layer) with int8 copies of them, whose drafted
        positions verification recomputes at every layer. Changes the speed, never the output.
    prompt_lookup: lossless only; when > 0, a round whose last 2-3 tokens occurred earlier in the
        prompt or output drafts up to this many of the tokens that followed them, at no layer's
        cost (`adainfer.inference.prompt_lookup`), instead of early passes. Changes the speed,
        never the output.
    on_token: called with each `GeneratedToken` as soon as it is final (for streaming).

    Raises ValueError for max_new_tokens <= 0, an unknown mode, a bad exit layer, and a prompt
    whose length plus max_new_tokens exceeds the model's context: the message gives the largest
    max_new_tokens that fits (we refuse rather than truncate silently).
    """
    draft_layer = _check_request(model, mode, max_new_tokens, policy, draft_layer, initial_draft, draft_weights)
    if prompt_lookup < 0 or (prompt_lookup and mode != "lossless"):
        raise ValueError(f"prompt_lookup must be >= 0, and is for lossless mode only; got {prompt_lookup} "
                         f"in {mode} mode")
    prompt_ids = _prompt_ids(model, prompt, max_new_tokens)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    output = TokenStream(model, max_new_tokens, stops, on_token)
    if mode == "lossless":
        draft_rows = None if draft_vocab is None or policy is not None else _draft_rows(model, draft_vocab, prompt_ids)
        layers = int8_layers(model) if draft_weights == "int8" else None
        decoder, stats = _lossless(model, prompt_ids, output,
                                   EarlyRule(policy, draft_layer, first_check, draft_rows, layers), initial_draft,
                                   prompt_lookup)
    else:
        decoder, stats = _fast(model, prompt_ids, output, EarlyRule(policy, draft_layer, first_check))
    return GenerationResult(
        text=output.text, token_ids=output.token_ids, exit_layers=output.exit_layers, mode=mode,
        num_layers=model.num_layers, prompt_tokens=len(prompt_ids), finish_reason=output.finish_reason,
        kv_lengths=decoder.layer_lengths(), seconds=time.perf_counter() - output.started,
        first_token_seconds=output.first_token_seconds, **asdict(stats),
    )


def _check_request(model: EarlyExitModel, mode: str, max_new_tokens: int, policy: StopPolicy | None,
                   draft_layer: int | None, initial_draft: int, draft_weights: str) -> int | None:
    """Validate `generate`'s arguments; the fixed draft or exit layer (None with a policy)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if draft_weights not in DRAFT_WEIGHTS:
        raise ValueError(f"draft_weights must be one of {', '.join(DRAFT_WEIGHTS)}, got {draft_weights!r}")
    if draft_weights != "model" and (mode != "lossless" or policy is not None):
        raise ValueError(f"draft_weights={draft_weights!r} drafts at a fixed layer in lossless mode, "
                         f"without a policy")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if policy is not None and draft_layer is not None:
        raise ValueError("give a policy or a draft layer, not both")
    if policy is None:
        if draft_layer is None and mode == "fast":
            raise ValueError("fast mode needs a policy or a fixed exit layer (draft_layer)")
        draft_layer = model.num_layers if draft_layer is None else draft_layer
        if not 1 <= draft_layer <= model.num_layers:
            raise ValueError(f"draft layer must be in 1..{model.num_layers}, got {draft_layer}")
    if initial_draft < 1:
        raise ValueError(f"initial_draft must be >= 1, got {initial_draft}")
    return draft_layer


def _prompt_ids(model: EarlyExitModel, prompt: str, max_new_tokens: int) -> list[int]:
    """The prompt's token ids, refusing a prompt that leaves no room for `max_new_tokens` in the context."""
    prompt_ids = model.encode(prompt)[0].tolist()
    room = model.max_context - len(prompt_ids)
    if max_new_tokens > room:
        raise ValueError(
            f"prompt has {len(prompt_ids)} tokens and the model's context is {model.max_context}: "
            f"max_new_tokens={max_new_tokens} does not fit; use at most {max(room, 0)}"
            + (" (the prompt alone fills the context)" if room <= 0 else "")
        )
    return prompt_ids


def _draft_rows(model: EarlyExitModel, draft_vocab: int | Sequence[int], prompt_ids: list[int]) -> HeadRows:
    """The draft vocabulary: ids 0..N-1 and ASCII characters for an int N, else the ids given; plus the prompt's."""
    if isinstance(draft_vocab, int):
        first_ids, extra_ids = draft_vocab, ascii_character_tokens(model)
    else:
        first_ids, extra_ids = 0, list(draft_vocab)
    return HeadRows(model.executor.lens, first_ids, extra_ids + prompt_ids)


@dataclass(frozen=True)
class EarlyRule:
    """Where an early pass exits: where `policy` accepts (asked from `first_check`, or its learned
    schedule), else at the fixed `layer`; drafts read `draft_rows` of the head (None: the full lens)
    and run `draft_layers` (stand-ins such as int8 copies; None: the model's own layers)."""

    policy: StopPolicy | None
    layer: int | None
    first_check: int | None
    draft_rows: HeadRows | None = None
    draft_layers: Sequence[torch.nn.Module] | None = None

    @property
    def keeps_draft_cache(self) -> bool:
        """Whether the drafts' K/V are the model's own (a fixed layer, its own weights): verification
        then runs only the layers above; otherwise it recomputes the drafted positions everywhere."""
        return self.policy is None and self.draft_layers is None

    def early_pass(self, decoder: KVDecoder, token: int, fill: bool) -> EarlyStep:
        """`decoder.early_pass` of `token` under this rule; `fill` propagates state to the layers skipped."""
        return decoder.early_pass(token, exit_layer=None if self.policy else self.layer, policy=self.policy,
                                  first_check=self.first_check, fill=fill, draft_rows=self.draft_rows,
                                  layers=self.draft_layers)


def _prefill(decoder: KVDecoder, prompt_ids: list[int], output: TokenStream, stats: GenerationStats) -> int | None:
    """Run the prompt at full depth and emit the dense first token; None if generation already ends."""
    first = int(decoder.full_pass(prompt_ids, logits_for=1)[-1].argmax())
    stats.lens_rows += 1
    return None if output.emit(first, decoder.num_layers) else first


def _fast(model: EarlyExitModel, prompt_ids: list[int], output: TokenStream,
          rule: EarlyRule) -> tuple[KVDecoder, GenerationStats]:
    decoder, stats = KVDecoder(model), GenerationStats()
    token = _prefill(decoder, prompt_ids, output, stats)
    while token is not None:
        step = rule.early_pass(decoder, token, fill=True)
        stats.count_early(step, decoder)
        stats.count_dense(decoder, decoder.length, 1)
        token = None if output.emit(step.token_id, step.exit_layer) else step.token_id
    return decoder, stats


def _lossless(model: EarlyExitModel, prompt_ids: list[int], output: TokenStream, rule: EarlyRule,
              initial_draft: int, prompt_lookup: int = 0) -> tuple[KVDecoder, GenerationStats]:
    """Draft-then-verify rounds.

    A round feeds the committed token, then each draft but the last, through early passes: q
    positions, q drafts. Verification gives the full model's token after each of those positions,
    i.e. its verdict on every draft. A rejected draft is replaced by the full model's token; the
    last draft of a fully accepted round becomes the next committed token, fed by the next round,
    so no pass is spent on a bonus token. At a fixed draft layer the drafts' K/V below it is exact
    and kept: verification runs only the layers above (`KVDecoder.finish_pass`). Drafts from a
    policy exit at different layers, and int8 drafts' K/V are approximate, so then the cache is
    cropped back and every layer is recomputed. With `prompt_lookup` > 0, a round whose last tokens
    occurred earlier takes drafts from what followed them (`lookup_drafts`), runs no early pass,
    and verifies them at every layer. A wrong copy costs a verification of all it proposed, so
    their number adapts like the drafts' (up to `prompt_lookup`), and after a copy whose first
    token was wrong the next round drafts with early passes.
    """
    decoder, stats = KVDecoder(model, record_past=True), GenerationStats()
    num_layers = decoder.num_layers
    token = _prefill(decoder, prompt_ids, output, stats)
    draft_size = min(initial_draft, MAX_DRAFT)
    lookup_size, lookup_missed = min(initial_draft, prompt_lookup), False
    while token is not None:
        if rule.draft_rows is not None:
            rule.draft_rows.add(token)
        committed = decoder.length  # positions whose K/V is final; `token` goes at this one
        copied = (lookup_drafts(prompt_ids + output.token_ids, min(lookup_size, output.remaining))
                  if prompt_lookup and not lookup_missed else [])
        if copied:  # free drafts: the full model's verdict on each is its depth
            fed, drafts, steps, depths = [token, *copied[:-1]], copied, None, [num_layers] * len(copied)
        else:
            fed, drafts, steps = _draft(decoder, token, min(draft_size, output.remaining), output.eos_ids, rule, stats)
            depths = [step.exit_layer for step in steps]
        targets = _verify(decoder, fed, steps, committed, rule, stats)
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == targets[accepted]:
            accepted += 1
        stats.draft_lengths.append(len(drafts))
        stats.accepted_lengths.append(accepted)
        if copied:  # a copy that missed at once is not tried again until a drafted round has passed
            lookup_size = min(lookup_size + 2, prompt_lookup) if accepted == len(drafts) else max(1, lookup_size - 1)
            lookup_missed = accepted == 0
        else:
            draft_size = min(draft_size + 2, MAX_DRAFT) if accepted == len(drafts) else max(1, draft_size - 1)
            lookup_missed = False
        emitted = list(zip(drafts[:accepted], depths))
        if accepted < len(drafts):
            emitted.append((targets[accepted], num_layers))
        token = emitted[-1][0]
        for index, (chosen, depth) in enumerate(emitted):
            if output.emit(chosen, depth):
                token = None
                break
        stats.count_dense(decoder, committed + 1, index + 1)  # emitted token i: position committed + i
        # `token`'s position and those of the emitted tokens but the last keep their K/V.
        decoder.crop(committed + index + 1)
    return decoder, stats


def _draft(decoder: KVDecoder, token: int, size: int, eos_ids: set[int], rule: EarlyRule,
           stats: GenerationStats) -> tuple[list[int], list[int], list[EarlyStep]]:
    """Up to `size` early passes from `token`, each feeding the previous draft, stopping after an
    end-of-sequence draft: (tokens fed, drafts, their early steps)."""
    fed: list[int] = []
    drafts: list[int] = []
    steps: list[EarlyStep] = []
    for _ in range(size):
        fed.append(drafts[-1] if drafts else token)
        step = rule.early_pass(decoder, fed[-1], fill=rule.policy is not None)
        stats.count_early(step, decoder, rule.draft_rows)
        drafts.append(step.token_id)
        steps.append(step)
        if step.token_id in eos_ids:
            break
    return fed, drafts, steps


def _verify(decoder: KVDecoder, fed: list[int], steps: list[EarlyStep] | None, committed: int, rule: EarlyRule,
            stats: GenerationStats) -> list[int]:
    """The full model's token after each fed position: its verdict on every draft.

    At a fixed draft layer only the layers above it run, on the drafts' own hidden states; drafts
    from a policy or from stand-in layers are recomputed at every layer from `committed` on, and
    drafts that ran no early pass (`steps` None: copied ones) are computed there.
    """
    if steps is not None and rule.keeps_draft_cache:
        logits = decoder.finish_pass(fed, torch.cat([step.hidden for step in steps], dim=1), rule.layer)
        verified_layers = decoder.num_layers - rule.layer
    else:
        decoder.crop(committed)
        logits = decoder.full_pass(fed)
        verified_layers = decoder.num_layers
    stats.count_verification(decoder, verified_layers, committed, len(fed))
    return logits.argmax(dim=-1).tolist()
