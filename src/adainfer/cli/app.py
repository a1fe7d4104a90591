"""`adainfer` on the command line: a thin shell over the Python API.

Every verb parses its arguments, calls the API and prints; each lives in the module of its group
and is registered here, explicitly, in the order `adainfer --help` lists them. Nothing registers
itself on import.
"""

from __future__ import annotations

import typer

from adainfer.cli import answering, experiments, model_info, training

app = typer.Typer(
    help="Instance-aware early exit for frozen decoder-only LLMs (AdaInfer, arXiv 2403.02181).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

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
