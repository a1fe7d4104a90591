import pytest

from adainfer.data.tasks import Example
from adainfer.fit.answer_set import AnswerSetError, answer_set, detect_answer_set, looks_closed
from adainfer.testing.tiny_models import tiny_spaced_exit_model
from fit_data import parity_examples


@pytest.fixture(scope="module")
def model():
    return tiny_spaced_exit_model("llama")


def test_few_repeated_outputs_are_a_closed_set_with_one_distinct_token_each(model):
    found = detect_answer_set(model, parity_examples(40))
    assert found.choices == ("even", "odd")
    assert len(set(found.token_ids)) == 2 and found.label_of(found.token_ids[1]) == "odd"
    assert [model.decode_token(token) for token in found.token_ids] == [" e", " o"]


def test_outputs_that_do_not_repeat_are_open_vocabulary(model):
    examples = [Example(f"word {i}", f"answer{i}") for i in range(20)]
    assert not looks_closed([e.output for e in examples])
    assert detect_answer_set(model, examples) is None
    assert not looks_closed([f"v{i % 40}" for i in range(400)])  # more than 32 labels


def test_labels_whose_first_tokens_collide_are_refused_by_name(model):
    with pytest.raises(AnswerSetError, match="'yellow' and 'yes' both start with token ' y'"):
        detect_answer_set(model, parity_examples(40, labels=("yes", "yellow")))


def test_a_single_distinct_output_is_refused(model):
    with pytest.raises(AnswerSetError, match="at least two distinct outputs"):
        detect_answer_set(model, [Example(f"x{i}", "same") for i in range(10)])


def test_given_choices_override_detection_and_must_cover_the_outputs(model):
    examples = [Example(f"word {i}", "yes" if i % 2 else "no") for i in range(3)]  # too few to look closed
    assert detect_answer_set(model, examples) is None
    assert detect_answer_set(model, examples, ["no", "yes"]).choices == ("no", "yes")
    with pytest.raises(AnswerSetError, match="not in --choices"):
        detect_answer_set(model, examples, ["yes", "maybe"])
    with pytest.raises(AnswerSetError, match="at least two"):
        answer_set(model, ["yes", " yes "])
