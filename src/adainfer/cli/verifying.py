"""`adainfer verify`: does a classifier's certificate hold on the calibration sample it stores?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adainfer.cli.common import clean_errors
from adainfer.fit.verify import verify_classifier


@clean_errors
def verify(
    directory: Annotated[Path, typer.Argument(help="Classifier directory written by `adainfer fit`.")],
) -> None:
    """Recompute the Learn-then-Test p-value and threshold from the stored calibration arrays; exit 0 if the certificate holds, 1 if not."""
    verification = verify_classifier(directory)
    typer.echo("\n".join(verification.lines()))
    if not verification.holds:
        raise typer.Exit(1)
