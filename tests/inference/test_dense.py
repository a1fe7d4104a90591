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
