"""What every verb of the command line shares: options, loading the model, clean errors, parsing.

Expected failures (bad input files, bad prompts, a classifier for another model) print one line
on stderr and exit with code 2 (`clean_errors`).
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import transformers
import typer
from rich.console import Console
from rich.markup import escape

from adainfer.data.tasks import LabelledPrompt
from adainfer.engine.features import check_feature_names
from adainfer.engine.loading import DEFAULT_MODEL, EMBEDDED_MODELS
from adainfer.engine.model import EarlyExitModel
from adainfer.engine.parameters import ParameterError
from adainfer.policies.base import StopPolicy

err = Console(stderr=True)

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help=f"Embedded model ({', '.join(EMBEDDED_MODELS)}), a local HF directory or a .gguf file. Default: {DEFAULT_MODEL}."),
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Datasets folder. Default: $ADAINFER_DATA or ../shared/data.")
]
CacheOption = Annotated[
    Path | None, typer.Option("--cache-dir", help="Where converted models are kept. Default: $ADAINFER_CACHE or ~/.cache/adainfer.")
]


def clean_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ValueError, OSError) as error:
            message = (error.worded(f"--{error.parameter.replace('_', '-')}")
                       if isinstance(error, ParameterError) and error.parameter else str(error))
            # Escaped: a message naming `.[ray]` or a path with brackets is text, not rich markup.
            err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def open_model(model: str | None, cache_dir: Path | None) -> EarlyExitModel:
    """Load the model a verb was given, with a status line on stderr."""
    transformers.utils.logging.disable_progress_bar()  # our own status line says what is happening
    with err.status(f"loading {model or DEFAULT_MODEL} (the first load of a GGUF model converts it once)"):
        return EarlyExitModel.from_pretrained(model, cache_dir)


def check_prompts(model: EarlyExitModel, items: list[LabelledPrompt], source: Path) -> None:
    """Reject a bad prompt or answer before any work starts, naming its line."""
    for number, item in enumerate(items, start=1):
        try:
            model.encode(item.prompt)
            if item.answer:
                model.answer_token(item.prompt, item.answer)
        except ValueError as error:
            raise ValueError(f"{source} line {number}: {error}") from None


def parse_choices(text: str) -> list[str]:
    answers = [answer.strip() for answer in text.split(",") if answer.strip()]
    if len(answers) < 2:
        raise ValueError(f"--choices needs at least two comma-separated answers, got {text!r}")
    return answers


def policy_candidates(model: EarlyExitModel, policy: StopPolicy, choices: str | None) -> list[int] | None:
    """The candidate token ids to predict with: `--choices`, which must be the answer set the policy
    was trained with when it recorded one; else that recorded set."""
    recorded = list(getattr(policy, "candidate_ids_", ()))
    if not choices:
        return recorded or None
    candidates = model.candidate_tokens(parse_choices(choices))
    if recorded and candidates != recorded:
        raise ValueError(f"--choices {choices!r} gives answer tokens {candidates}, but the policy was trained on "
                         f"the answer set with tokens {recorded}; use that set, in that order")
    return candidates


def parse_features(text: str) -> tuple[str, ...]:
    return check_feature_names([name.strip() for name in text.split(",") if name.strip()])


def parse_ints(text: str, flag: str) -> list[int]:
    """Comma-separated non-negative integers given to `flag` (named in the error)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise ValueError(f"{flag} expects non-negative integers, got {text!r}")
    return values


def flag_error(error: ValueError, name: str, flag: str) -> ValueError:
    """A library error about `name` (the domain's word) worded for the command line, where it is `flag`."""
    return ValueError(str(error).replace(name, flag, 1))


def command_line(context: typer.Context) -> str:
    """The running verb with every option it was given, to head the files it writes."""
    words = ["adainfer", context.info_name]
    for parameter in context.command.params:
        value = context.params.get(parameter.name)
        if value is None:
            continue
        if getattr(parameter, "is_flag", False):
            words += [parameter.opts[0]] if value else []  # a flag is there or not: `--ray`, never `--ray False`
        elif parameter.param_type_name == "argument":
            words += [str(item) for item in value] if isinstance(value, (list, tuple)) else [str(value)]
        else:
            words += [parameter.opts[0], str(value)]
    return shlex.join(words)
