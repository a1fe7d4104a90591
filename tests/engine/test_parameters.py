"""A library error names its parameter (the CLI words it as the flag: tests/cli/test_cli_fit.py)."""

import pytest

from adainfer.engine.parameters import ParameterError
from adainfer.fit.pipeline import FitError, FitOptions


def test_the_library_speaks_its_own_words():
    with pytest.raises(FitError) as raised:
        FitOptions(epsilon=1.5)
    assert str(raised.value) == "epsilon must be in (0, 1), got 1.5"
    assert isinstance(raised.value, ParameterError) and raised.value.parameter == "epsilon"
    assert raised.value.worded("--epsilon") == "--epsilon must be in (0, 1), got 1.5"


def test_a_problem_of_no_one_parameter_is_worded_as_it_is():
    error = ParameterError("too few examples")
    assert str(error) == error.worded("--anything") == "too few examples"
