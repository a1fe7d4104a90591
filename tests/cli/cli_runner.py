"""Running `adainfer` verbs in-process (typer's CliRunner) and checking their clean errors."""

from typer.testing import CliRunner

from adainfer.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, f"{args[0]} failed ({result.exit_code}): {result.output}{result.exception!r}"
    return result


def stderr(result) -> str:
    try:
        return result.stderr  # click >= 8.2 keeps stderr apart
    except ValueError:  # older click mixes it into output
        return result.output


def assert_clean_error(result, *keywords):
    """Exit code 2, no traceback, exactly one `error:` line, and it names the problem."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}{result.exception!r}"
    assert isinstance(result.exception, SystemExit)
    text = stderr(result)
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for keyword in keywords:
        assert keyword in errors[0]
    return errors[0]
