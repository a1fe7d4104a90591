"""The fixed demonstrations of a classifier as the model's cached prefix (`EarlyExitModel.use_prefix`).

Every prompt a classifier builds starts with the same demonstrations; fitting (traces, timing)
and answering (`classify`, the server) cache them once per loaded model, so what is calibrated
is what runs and no prompt computes them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adainfer.data.tasks import Example, demonstrations_text
from adainfer.engine.model import EarlyExitModel
from adainfer.engine.prefix import PrefixCache


def use_demonstrations(model: EarlyExitModel,
                       demonstrations: Sequence[Example | Mapping[str, str]]) -> PrefixCache | None:
    """Cache `demonstrations` (examples, or a card's {input, output} dicts) as `model`'s prefix; none: no prefix."""
    examples = [demo if isinstance(demo, Example) else Example(demo["input"], demo["output"])
                for demo in demonstrations]
    return model.use_prefix(demonstrations_text(examples) or None)
