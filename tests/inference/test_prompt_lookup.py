"""Prompt-lookup drafts: what they propose, and that lossless generation with them is still the
model's greedy output, whether the copied drafts are right, wrong or absent."""

import pytest

from adainfer.engine.model import EarlyExitModel
from adainfer.inference import generate as generation
from adainfer.inference.generate import generate
from adainfer.inference.prompt_lookup import lookup_drafts
from adainfer.testing.tiny_models import TINY_CONFIGS, save_tiny_model


def test_the_latest_earlier_occurrence_of_the_longest_suffix_is_continued():
    assert lookup_drafts([1, 2, 3, 4, 5, 9, 2, 3], 3) == [4, 5, 9]
    assert lookup_drafts([7, 2, 3, 8, 2, 3, 9, 2, 3], 1) == [9]  # the later of two occurrences
    assert lookup_drafts([1, 2, 3, 6, 0, 2, 3, 7, 1, 2, 3], 2) == [6, 0]  # 3-gram beats the later 2-gram


@pytest.mark.parametrize("history, size", [([1, 2, 3], 3), ([1, 2, 1, 3], 3), ([4, 4], 2), ([1, 2, 1, 2], 0)])
def test_no_recurring_suffix_of_two_tokens_or_no_room_proposes_nothing(history, size):
    assert lookup_drafts(history, size) == []


def test_drafts_stop_at_the_end_of_the_history_and_at_size():
    assert lookup_drafts([1, 2, 3, 1, 2], 10) == [3, 1, 2]
    assert lookup_drafts([1, 2, 3, 1, 2], 1) == [3]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache: dict[str, EarlyExitModel] = {}

    def load(family: str) -> EarlyExitModel:
        if family not in cache:
            cache[family] = EarlyExitModel.from_pretrained(str(save_tiny_model(family, tmp_path_factory.mktemp(family))))
        return cache[family]

    return load


def greedy(model: EarlyExitModel, prompt: str, new: int) -> list[int]:
    ids = model.encode(prompt)
    return model.model.generate(ids, do_sample=False, max_new_tokens=new)[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("draft_weights", ["model", "int8"])
def test_lossless_with_prompt_lookup_equals_hf_greedy(models, family, draft_weights):
    model = models(family)
    prompt = "the cat sat on the mat; the cat sat on the"
    expected = greedy(model, prompt, 16)
    result = generate(model, prompt, 16, prompt_lookup=5, draft_weights=draft_weights)
    assert result.token_ids == expected
    assert result.kv_lengths == [len(model.encode(prompt)[0]) + len(expected) - 1] * model.num_layers


def test_copied_drafts_right_and_wrong_are_verified_and_a_miss_makes_the_next_round_draft(models, monkeypatch):
    model = models("llama")
    prompt = "Once upon a time"
    expected = greedy(model, prompt, 16)
    prompt_length = len(model.encode(prompt)[0])
    calls = []

    def oracle_but_second_call_wrong(history, size):
        done = len(history) - prompt_length
        truth = expected[done:done + size]
        calls.append(size)
        return [(truth[0] + 1) % model.model.config.vocab_size, *truth[1:]] if len(calls) == 2 else truth

    monkeypatch.setattr(generation, "lookup_drafts", oracle_but_second_call_wrong)
    result = generate(model, prompt, 16, prompt_lookup=6, draft_weights="int8")
    assert result.token_ids == expected
    # rounds: copy (right), copy (wrong), drafted by early passes, then copies again
    assert len(result.accepted_lengths) == len(calls) + 1
    assert result.accepted_lengths[0] == result.draft_lengths[0] and result.accepted_lengths[1] == 0
    assert calls[:2] == [4, 6]  # starts at initial_draft, grows by 2 after a copy fully accepted
    assert result.layer_passes == model.num_layers * sum(result.draft_lengths) + model.num_layers * result.draft_lengths[2]


def test_prompt_lookup_is_for_lossless_mode_and_not_negative(models):
    model = models("llama")
    with pytest.raises(ValueError, match="prompt_lookup must be >= 0"):
        generate(model, "a b", 2, prompt_lookup=-1)
    with pytest.raises(ValueError, match="lossless mode only"):
        generate(model, "a b", 2, mode="fast", draft_layer=2, prompt_lookup=3)
