import torch

from adainfer.inference.dense import dense_answers, dense_logits
from adainfer.testing.tiny_models import tiny_spaced_exit_model

PROMPTS = ["Q: red cat\nA:", "Q: a much longer input of words\nA:", "Q: x\nA:"]


def test_a_padded_batch_gives_each_prompt_the_logits_of_its_own_forward():
    model = tiny_spaced_exit_model("llama")
    batched = dense_logits(model, PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        alone = model.model(model.encode(prompt)).logits[0, -1]
        torch.testing.assert_close(batched[row], alone, atol=1e-4, rtol=1e-4)


def test_dense_answers_are_the_top1_or_the_best_candidate():
    model = tiny_spaced_exit_model("llama")
    logits = dense_logits(model, PROMPTS)
    assert dense_answers(model, PROMPTS) == logits.argmax(-1).tolist()
    candidates = model.candidate_tokens(["even", "odd"])
    best = [candidates[int(row[candidates].argmax())] for row in logits]
    assert dense_answers(model, PROMPTS, candidates) == best


def test_the_forward_over_the_cached_prefix_gives_the_full_prompts_logits():
    prefix = "Q: red\nA: odd\n\nQ: blue sky\nA: even\n\n"
    prompts = [prefix + prompt for prompt in PROMPTS] + ["Q: not after the prefix\nA:"]
    for family in ("llama", "gemma3", "gpt2"):
        model = tiny_spaced_exit_model(family)
        full = dense_logits(model, prompts)
        model.use_prefix(prefix)
        assert torch.equal(dense_logits(model, prompts), full)  # use_prefix=False: the full prompts
        torch.testing.assert_close(dense_logits(model, prompts, use_prefix=True), full, atol=1e-4, rtol=0)
