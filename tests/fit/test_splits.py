import numpy as np
import pytest

from adainfer.data.tasks import split_examples
from adainfer.fit.answer_set import AnswerSet
from adainfer.fit.splits import SplitError, SplitSizes, choose_demonstrations, make_splits, prompt_for
from fit_data import parity_examples

ANSWERS = AnswerSet(("even", "odd"), (1, 2))


def _splits(count=400, sizes=SplitSizes(50, 80, 60), shots=4, seed=0):
    train, held_out = split_examples(parity_examples(count))
    return make_splits(train, held_out, shots, sizes, seed, ANSWERS)


def test_splits_are_disjoint_by_input_and_sized_as_asked():
    splits = _splits()
    groups = [{e.input for e in splits.demonstrations}, *({e.input for e in getattr(splits, name)}
                                                          for name in ("train", "calibration", "test"))]
    assert [len(group) for group in groups] == [4, 50, 80, 60]
    for i, first in enumerate(groups):
        for second in groups[i + 1:]:
            assert not first & second


def test_every_prompt_carries_the_same_fixed_demonstrations_and_the_seed_changes_them():
    splits = _splits()
    prefix = prompt_for("x", splits.demonstrations).removesuffix("Q: x\nA:")
    assert prefix.count("Q: ") == 4
    assert all(p.prompt.startswith(prefix) for name in ("train", "calibration", "test") for p in splits.prompts(name))
    assert _splits(seed=1).demonstrations != splits.demonstrations
    assert _splits().demonstrations == splits.demonstrations


def test_demonstrations_of_a_closed_set_take_turns_over_the_labels():
    pool = parity_examples(100)
    demos = choose_demonstrations(pool, 4, ANSWERS, np.random.default_rng(3))
    assert sorted(d.output for d in demos) == ["even", "even", "odd", "odd"]


def test_a_small_evaluation_pool_is_cut_in_proportion_and_too_few_examples_are_refused():
    splits = _splits(count=100, sizes=SplitSizes(20, 200, 200))
    assert abs(len(splits.calibration) - len(splits.test)) <= 1
    with pytest.raises(SplitError, match="too few examples for three splits"):
        _splits(count=8, shots=2)
    with pytest.raises(SplitError, match="positive integer"):
        SplitSizes(0, 10, 10)
    with pytest.raises(ValueError, match="non-empty string"):
        prompt_for("  ", ())
