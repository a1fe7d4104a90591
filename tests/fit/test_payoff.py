import numpy as np
import pytest

from adainfer.fit.payoff import CAN_PAY, WILL_NOT_PAY, measure_payoff, verdict
from adainfer.fit.pipeline import examples_source
from adainfer.testing.tiny_models import tiny_spaced_exit_model
from fit_data import parity_examples


def test_the_best_speedup_is_the_oracle_exit_with_one_check_priced_by_the_measured_parts():
    model = tiny_spaced_exit_model("llama")
    source = examples_source("parity", parity_examples(200))
    payoff = measure_payoff(model, name="parity", train_pool=source.train_pool, eval_pool=source.eval_pool,
                            choices=None, shots=2, sample=6, repeats=1)
    assert payoff.prompts == 6 and payoff.closed_answer_set and payoff.num_layers == 4
    spent = payoff.oracle_mean_exit_layer * payoff.layer_seconds + payoff.candidate_check_seconds
    assert payoff.best_speedup == pytest.approx((4 * payoff.layer_seconds + payoff.full_check_seconds) / spent)
    assert payoff.oracle_layers_saved == pytest.approx(1 - payoff.oracle_mean_exit_layer / 4)
    assert payoff.verdict == verdict(payoff.best_speedup, True)


@pytest.mark.parametrize("speedup, words", [(1.0, "will not pay"), (1.2, "a little"), (2.0, "can pay: at best 2.00x")])
def test_the_verdict_follows_the_best_speedup(speedup, words):
    assert WILL_NOT_PAY < CAN_PAY
    assert words in verdict(speedup, closed=False) and "full-vocabulary" in verdict(speedup, closed=False)
