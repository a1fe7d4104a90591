"""Generation with early exit on the 10 tiny families: lossless equals HF greedy `generate` token
for token, fast mode keeps every layer's cache aligned, and bad input fails clearly. The tiny
Mistral/Gemma 2/Gemma 3 have a sliding window of 8, shorter than every sequence here, so
cropping rejected drafts from sliding-window caches is exercised too."""

import itertools

import pytest
import torch

from adainfer.engine.lens import HeadRows
from adainfer.engine.model import EarlyExitModel
from adainfer.inference.generate import generate
from adainfer.inference.int8_draft import int8_layers
from adainfer.inference.stream import GeneratedToken
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.testing.tiny_models import TINY_CONFIGS, save_tiny_model


PROMPTS = ["Q: the cat sat\nA:", "Once upon a time, a long road"]
NEW = 20
NEVER = GapThresholdPolicy(threshold=2.0)  # gap <= 1 < 2: every token runs every layer


class CyclingExit:
    """A stop policy whose tokens exit after 1, 3, 2, 4, 1, ... layers, whatever the features say."""

    features = ("depth",)

    def __init__(self) -> None:
        self.targets = itertools.cycle([1, 3, 2, 4])
        self.target = 0

    def should_exit(self, trace) -> bool:
        if len(trace) == 1:
            self.target = next(self.targets)
        return len(trace) >= self.target


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache: dict[str, EarlyExitModel] = {}

    def load(family: str) -> EarlyExitModel:
        if family not in cache:
            directory = save_tiny_model(family, tmp_path_factory.mktemp(f"gen-{family}"))
            cache[family] = EarlyExitModel.from_pretrained(str(directory))
        return cache[family]

    return load


def dense_greedy(model: EarlyExitModel, prompt: str, new: int = NEW) -> list[int]:
    input_ids = model.encode(prompt)
    output = model.model.generate(input_ids, do_sample=False, max_new_tokens=new)
    return output[0, input_ids.shape[1]:].tolist()


def assert_cache_consistent(model: EarlyExitModel, prompt: str, result) -> None:
    """Every layer caches exactly the positions fed: the prompt and every emitted token but the last."""
    fed = len(model.encode(prompt)[0]) + len(result.token_ids) - 1
    assert result.kv_lengths == [fed] * model.num_layers


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_lossless_equals_hf_greedy_at_every_draft_layer(models, family):
    model = models(family)
    for prompt in PROMPTS:
        expected = dense_greedy(model, prompt)
        for draft_layer, draft_vocab in [(1, None), (2, 40), (3, [5, 17, 60]), (None, 50)]:
            result = generate(model, prompt, NEW, mode="lossless", draft_layer=draft_layer, draft_vocab=draft_vocab)
            assert result.token_ids == expected, (draft_layer, draft_vocab)
            assert result.text == model.tokenizer.decode(expected, skip_special_tokens=True)
            assert_cache_consistent(model, prompt, result)
            assert sum(result.accepted_lengths) <= sum(result.draft_lengths)
            assert len(result.exit_layers) == len(expected)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_lossless_with_a_policy_equals_hf_greedy(models, family):
    model = models(family)
    for prompt in PROMPTS:
        result = generate(model, prompt, NEW, mode="lossless", policy=CyclingExit())
        assert result.token_ids == dense_greedy(model, prompt)
        assert_cache_consistent(model, prompt, result)
        assert result.attention_only_passes > 0  # drafts that exited early filled the layers above


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_lossless_with_int8_drafts_equals_hf_greedy(models, family):
    model = models(family)
    for prompt in PROMPTS:
        expected = dense_greedy(model, prompt)
        for draft_layer in (2, None):
            result = generate(model, prompt, NEW, draft_layer=draft_layer, draft_weights="int8")
            assert result.token_ids == expected, draft_layer
            assert_cache_consistent(model, prompt, result)
            # drafts' approximate K/V are recomputed: every verification runs every layer
            assert result.layer_passes == (draft_layer or model.num_layers) * sum(result.draft_lengths) + \
                model.num_layers * sum(result.draft_lengths)


def test_int8_drafts_are_built_once_and_leave_the_models_layers_as_they_were(models):
    model = models("qwen2")
    first, second = int8_layers(model), int8_layers(model)
    assert first is second
    quantized = [m for m in first.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == sum(isinstance(m, torch.nn.Linear) for m in model.executor.layers.modules()) > 0
    assert all(m.weight().qscheme() == torch.per_channel_affine for m in quantized)
    assert all(type(m) is torch.nn.Linear for m in model.executor.layers.modules()
               if "Linear" in type(m).__name__)
    # a draft that disagrees with the model somewhere: the int8 copies are not the model's layers
    rejected = generate(model, PROMPTS[1], NEW, draft_layer=1, draft_weights="int8")
    assert sum(rejected.accepted_lengths) < sum(rejected.draft_lengths)


def test_lossless_drafts_rejected_and_accepted_are_both_exercised(models):
    # gemma's tiny model accepts long drafts at layer 1, llama's rejects most: both paths ran.
    accepted = [generate(models(family), PROMPTS[1], NEW, draft_layer=1, draft_vocab=None).mean_accepted_length
                for family in ("gemma", "llama")]
    assert accepted[0] > 2 and accepted[1] < 0.5


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_fast_mode_that_never_exits_equals_dense_greedy(models, family):
    model = models(family)
    for prompt in PROMPTS:
        expected = dense_greedy(model, prompt)
        result = generate(model, prompt, NEW, mode="fast", policy=NEVER)
        assert result.token_ids == expected
        assert result.attention_only_passes == 0
        assert set(result.exit_layers) == {model.num_layers}


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_fast_mode_fills_every_skipped_layer_so_caches_stay_aligned(models, family):
    model = models(family)
    result = generate(model, PROMPTS[1], NEW, mode="fast", draft_layer=1)
    assert_cache_consistent(model, PROMPTS[1], result)
    after_first = len(result.token_ids) - 1
    assert result.layer_passes == after_first
    assert result.attention_only_passes == (model.num_layers - 1) * after_first
    assert result.exit_layers[0] == model.num_layers and set(result.exit_layers[1:]) == {1}
    cycling = generate(model, PROMPTS[1], NEW, mode="fast", policy=CyclingExit())
    assert_cache_consistent(model, PROMPTS[1], cycling)
    assert cycling.exit_layers[1:5] == [1, 3, 2, 4][: len(cycling.exit_layers) - 1]
    skipped = sum(model.num_layers - layer for layer in cycling.exit_layers[1:])
    assert cycling.attention_only_passes == skipped


def test_policy_exit_in_fast_mode_reads_the_lens_from_first_check(models):
    model = models("llama")
    always = GapThresholdPolicy(threshold=-1.0)
    result = generate(model, PROMPTS[0], 6, mode="fast", policy=always, first_check=3)
    assert result.exit_layers[1:] == [3] * 5
    assert result.lens_rows == 1 + 5  # the prompt's last position, then one read per token


def test_a_draft_vocabulary_reads_the_lens_argmax_over_its_rows(models):
    model = models("gemma2")  # soft-capped: the draft read applies the cap too, like every lens read
    rows = HeadRows(model.executor.lens, first_ids=30, extra_ids=[70, 90])
    rows.add(81)
    candidates = torch.tensor(list(range(30)) + [70, 90, 81])
    assert rows.token_ids == candidates.tolist() and len(rows) == 33
    for seed in range(5):
        hidden = torch.randn(model.cost_model.hidden_size, generator=torch.Generator().manual_seed(seed))
        logits = model.executor.lens(hidden)
        read = model.executor.lens(hidden, rows=rows)
        torch.testing.assert_close(read, logits[candidates])
        assert rows.token_at(int(read.argmax())) == int(candidates[logits[candidates].argmax()])


def test_streaming_callback_sees_every_token_in_order(models):
    model = models("qwen2")
    seen: list[GeneratedToken] = []
    result = generate(model, PROMPTS[0], NEW, on_token=seen.append)
    assert [token.token_id for token in seen] == result.token_ids
    assert "".join(token.text for token in seen) == result.text
    assert [token.exit_layer for token in seen] == result.exit_layers


@pytest.mark.parametrize("mode", ["lossless", "fast"])
def test_stop_string_cuts_the_text_and_one_never_produced_runs_to_the_limit(models, mode):
    model = models("qwen2")  # its tiny model emits no end-of-sequence id on this prompt
    options = {"draft_layer": 2}
    full = generate(model, PROMPTS[0], NEW, mode=mode, **options)
    assert full.finish_reason == "length" and len(full.token_ids) == NEW
    never = generate(model, PROMPTS[0], NEW, mode=mode, stop="\x0b never \x0c", **options)
    assert never.token_ids == full.token_ids and never.finish_reason == "length"
    stop = full.text[5:7]
    cut = generate(model, PROMPTS[0], NEW, mode=mode, stop=stop, **options)
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) < NEW


@pytest.mark.parametrize("mode", ["lossless", "fast"])
def test_end_of_sequence_token_stops_like_hf_generate(models, mode):
    model = models("qwen2")
    dense = dense_greedy(model, PROMPTS[1])
    eos = dense[6]
    saved = model.model.generation_config.eos_token_id
    model.model.generation_config.eos_token_id = eos
    try:
        expected = dense_greedy(model, PROMPTS[1])
        result = generate(model, PROMPTS[1], NEW, mode=mode, policy=NEVER if mode == "fast" else None)
    finally:
        model.model.generation_config.eos_token_id = saved
    assert expected == dense[: dense.index(eos) + 1]
    assert result.token_ids == expected and result.finish_reason == "eos"
    assert_cache_consistent(model, PROMPTS[1], result)


@pytest.mark.parametrize("new", [0, -3])
def test_max_new_tokens_must_be_positive(models, new):
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(models("llama"), PROMPTS[0], new)


def test_prompt_at_the_context_limit_is_refused_with_the_room_left(models):
    model = models("llama")  # context 128, one token per character
    with pytest.raises(ValueError, match="use at most 3$"):
        generate(model, "x" * 125, 4)
    with pytest.raises(ValueError, match="prompt alone fills the context"):
        generate(model, "x" * 128, 1)
    assert len(generate(model, "x" * 125, 3).token_ids) <= 3


def test_argument_errors_are_clear(models):
    model = models("llama")
    with pytest.raises(ValueError, match="mode must be one of"):
        generate(model, PROMPTS[0], 2, mode="greedy")
    with pytest.raises(ValueError, match="fast mode needs a policy"):
        generate(model, PROMPTS[0], 2, mode="fast")
    with pytest.raises(ValueError, match="not both"):
        generate(model, PROMPTS[0], 2, policy=NEVER, draft_layer=2)
    with pytest.raises(ValueError, match="draft layer must be in 1..4"):
        generate(model, PROMPTS[0], 2, draft_layer=5)
    with pytest.raises(ValueError, match="draft_weights must be one of model, int8"):
        generate(model, PROMPTS[0], 2, draft_weights="int4")
    for options in ({"mode": "fast", "draft_layer": 2}, {"policy": NEVER}):
        with pytest.raises(ValueError, match="fixed layer in lossless mode"):
            generate(model, PROMPTS[0], 2, draft_weights="int8", **options)


@pytest.mark.integration
def test_lossless_on_gemma_equals_hf_greedy_and_drafts_are_accepted():
    gemma = EarlyExitModel.from_pretrained("gemma3-270m")
    prompts = ["The Amazon rainforest covers much of the Amazon basin of South America. Most of it is in "
               "Brazil.\nQ: Which country holds most of the Amazon rainforest?\nA:",
               "The history of the printing press begins"]
    for prompt in prompts:
        expected = dense_greedy(gemma, prompt, 16)
        for draft_layer in (None, 15):
            result = generate(gemma, prompt, 16, draft_layer=draft_layer)
            assert result.token_ids == expected
            assert_cache_consistent(gemma, prompt, result)
        assert result.mean_accepted_length > 0


def test_generation_walks_the_policys_learned_schedule(models):
    model = models("llama")
    scheduled = GapThresholdPolicy(threshold=-1.0)
    scheduled.first_check_ = 2  # as if fitted: no training prompt accepted before layer 2
    result = generate(model, PROMPTS[0], 4, mode="fast", policy=scheduled)
    assert result.exit_layers[1:] == [2] * 3
    assert result.lens_rows == 1 + 3  # no lens at layer 1: one read per token, at layer 2
