"""`adainfer` on the command line: a thin shell over the Python API.

Every verb parses its arguments, calls the API and prints; each lives in the module of its group
and is registered here, explicitly, in the order `adainfer --help` lists them. Nothing registers
itself on import.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer import rich_utils
# typer 0.29 vendors click as typer._click; its exceptions are what a bad option raises.
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup

from adainfer.cli import answering, experiments, fitting, model_info, serving, training, verifying
from adainfer.cli.common import err


class OneLineErrors(TyperGroup):
    """Bad options and arguments end like every other expected error: one `error:` line, exit code 2."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as error:
            rich_utils.rich_format_error(error)
            sys.exit(error.exit_code)
        except ClickException as error:
            where = f" (see {error.ctx.command_path} --help)" if getattr(error, "ctx", None) else ""
            message = " ".join(error.format_message().split())
            err.print(f"[red]error:[/red] {message}{where}", highlight=False, soft_wrap=True, markup=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            err.print("aborted")
            sys.exit(1)
        sys.exit(code or 0)


app = typer.Typer(
    cls=OneLineErrors,
    help="Instance-aware early exit for frozen decoder-only LLMs (AdaInfer, arXiv 2403.02181).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

app.command()(fitting.fit)
app.command()(model_info.info)
app.command()(model_info.profile)
app.command()(experiments.prompts)
app.command()(training.collect)
app.command()(training.train)
app.command()(training.evaluate)
app.command()(answering.predict)
app.command("eval")(experiments.eval_command)
app.command()(experiments.report)
app.command("export-traces")(experiments.export_traces)
app.command()(experiments.transfer)
app.command()(training.calibrate)
app.command("generate")(answering.generate_command)
app.command()(serving.serve)
app.command()(verifying.verify)
