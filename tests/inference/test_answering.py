"""The one batching loop of predict, the estimator and the server, and its summary."""

import pytest

from adainfer.engine.parameters import ParameterError
from adainfer.inference.answering import Answer, answer_batches, summarize
from adainfer.inference.dense import dense_answers
from adainfer.inference.predict import predict
from adainfer.policies.gap import GapThresholdPolicy
from adainfer.testing.tiny_models import tiny_spaced_exit_model

PROMPTS = [f"Q: {words}\nA:" for words in ("red cat", "a much longer input of words", "x", "blue sky", "seven")]


@pytest.fixture(scope="module")
def model():
    return tiny_spaced_exit_model("llama")


def test_batches_come_in_order_and_answer_as_one_prompt_at_a_time(model):
    policy = GapThresholdPolicy(threshold=0.0)
    batches = list(answer_batches(model, PROMPTS, policy, batch_size=2))
    assert [len(batch) for batch in batches] == [2, 2, 1]
    answers = [answer for batch in batches for answer in batch]
    alone = [predict(model, prompt, policy) for prompt in PROMPTS]
    assert [(a.result.answer_token_id, a.result.exit_layer) for a in answers] == [
        (r.answer_token_id, r.exit_layer) for r in alone]
    assert all(answer.dense_token is None for answer in answers)


def test_the_dense_comparison_is_the_dense_models_answer(model):
    answers = [a for batch in answer_batches(model, PROMPTS, GapThresholdPolicy(0.5), compare_dense=True)
               for a in batch]
    assert [answer.dense_token for answer in answers] == dense_answers(model, PROMPTS)


def test_a_batch_size_below_one_is_refused_by_name(model):
    with pytest.raises(ParameterError, match="batch_size must be at least 1"):
        next(answer_batches(model, PROMPTS, GapThresholdPolicy(), batch_size=0))


def test_the_summary_scores_only_answers_with_a_gold_token(model):
    answers = [a for batch in answer_batches(model, PROMPTS[:3], GapThresholdPolicy(0.5), compare_dense=True)
               for a in batch]
    right, dense = answers[0].result.answer_token_id, answers[1].dense_token
    summary = summarize(answers, [right, dense, None])
    assert summary["prompts"] == 3 and summary["scored"] == 2
    assert summary["accuracy"] == pytest.approx(
        (1 + (answers[1].result.answer_token_id == dense)) / 2, abs=1e-4)
    assert summary["dense_accuracy"] == pytest.approx(((answers[0].dense_token == right) + 1) / 2, abs=1e-4)
    assert "accuracy" not in summarize(answers, [None, None, None])


def test_an_answer_is_a_result_and_an_optional_dense_token(model):
    result = predict(model, PROMPTS[0], GapThresholdPolicy())
    assert Answer(result).dense_token is None
