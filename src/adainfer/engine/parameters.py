"""Errors about a value the caller chose, named by its parameter, so each front end can word it.

The library speaks its own words (`epsilon`, `replicas`); the command line knows the same value as
a flag (`--epsilon`) and words the error so (`adainfer.cli.common.clean_errors`), while the
estimator and the server show the library's words. One error, two wordings, no flag in the library.
"""

from __future__ import annotations


class ParameterError(ValueError):
    """`problem` with the value of `parameter` (None: a problem of the data, not of one value)."""

    def __init__(self, problem: str, parameter: str | None = None) -> None:
        super().__init__(f"{parameter} {problem}" if parameter else problem)
        self.problem = problem
        self.parameter = parameter

    def worded(self, flag: str) -> str:
        """The message with the parameter named as `flag`."""
        return f"{flag} {self.problem}" if self.parameter else self.problem
