"""The one depth loop: where rows stop, what they read under a check schedule, and the state they leave."""

import numpy as np
import pytest
import torch

from adainfer.engine.walk import walk
from adainfer.testing.tiny_models import tiny_exit_model

PROMPT = "Q: the cat sat\nA:"


class ExitAfter:
    """Accepts once it has been shown `reads` layers; records how many it was shown each time."""

    def __init__(self, reads: int, features=("gap", "depth"), first_check: int | None = None) -> None:
        self.reads, self.features, self.shown = reads, features, []
        if first_check is not None:
            self.first_check_ = first_check

    def should_exit(self, trace) -> bool:
        self.shown.append(len(trace))
        return len(trace) >= self.reads


@pytest.fixture(scope="module")
def model():
    return tiny_exit_model("qwen2")


def _inputs(model):
    return model.executor.prepare(model.encode(PROMPT))


def test_a_row_stops_where_the_policy_accepts_and_keeps_that_layers_output(model):
    walked = walk(model.executor, _inputs(model), ExitAfter(2), keep_exit_hidden=True)
    assert walked.exits == [2] and walked.accepted == [True] and walked.first_read == walked.first_check == 1
    inputs = _inputs(model)
    expected = model.executor.run_layers(inputs.embeddings, inputs, 0, 2)[0]
    torch.testing.assert_close(walked.exit_hidden[0], expected)
    assert walked.features_read(0).shape == (2, 2) and len(walked.top1[0]) == 2


def test_a_schedule_reads_from_the_layer_before_the_first_check_for_agree_prev(model):
    policy = ExitAfter(1, features=("gap", "agree_prev"), first_check=3)
    walked = walk(model.executor, _inputs(model), policy)
    assert walked.first_read == 2 and walked.exits == [3] and policy.shown == [1]
    assert walked.features_read(0).shape == (2, 2)  # layers 2 and 3: layer 2 only for agree_prev at 3
    np.testing.assert_array_equal(walked.traces[0, :1], 0)  # layer 1 read nothing


def test_a_policy_never_asked_leaves_only_the_last_layers_lens(model):
    policy = ExitAfter(1)
    walked = walk(model.executor, _inputs(model), policy, first_check=model.num_layers + 1)
    assert policy.shown == [] and walked.exits == [model.num_layers] and walked.accepted == [False]
    assert walked.first_read == model.num_layers and len(walked.top1[0]) == 1


def test_a_first_check_at_the_last_layer_is_refused(model):
    with pytest.raises(ValueError, match="first_check"):
        walk(model.executor, _inputs(model), ExitAfter(1), first_check=model.num_layers)
