"""The paper's experiment grid: (task, shots) settings whose per-layer traces are collected once.

A setting's classifier-training prompts come from the task's train split and its evaluation
prompts from the eval split, so no evaluated row ever trained a classifier. Both are collected
at full depth with every feature the tables need, under
``<cache>/<model>/<task>/<shots>shot-seed<seed>/{train,eval}.jsonl``; every policy, table and
figure then replays those traces at no model cost. Collection resumes where it stopped, and a
larger ``limit`` later extends the cache (the first n prompts of a seed never change).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filelock import FileLock

from adainfer.data.task_data import TaskData, load_task
from adainfer.data.tasks import LabelledPrompt, build_prompts
from adainfer.engine.features import CANDIDATE_FEATURES
from adainfer.engine.files import lock_path, write_text_atomic
from adainfer.engine.model import EarlyExitModel, model_slug
from adainfer.eval.collect import RowSource, collect_cached
from adainfer.eval.traces import Collection, load_collection, load_collection_npz, save_collection_npz

# Everything the tables read: the paper's features, its factor study's cosines, and ours.
BASE_FEATURES: tuple[str, ...] = ("gap", "top_prob", "depth", "cos_attn", "cos_mlp", "cos_hidden", "agree_prev")
PAPER_SHOTS: tuple[int, ...] = (5, 10, 15, 20)


class HarnessError(ValueError):
    """A setting that cannot be built, or a cache that does not match it."""


@dataclass(frozen=True)
class Setting:
    """One cell of the grid: a task, a number of demonstrations and the sampling seed."""

    task: str
    shots: int
    seed: int = 0

    @property
    def name(self) -> str:
        stem = Path(self.task).stem if self.task.endswith(".jsonl") else self.task
        return f"{stem}/{self.shots}shot-seed{self.seed}"


@dataclass
class SettingData:
    """A setting's collected traces: `train` fits policies, `eval` scores them."""

    setting: Setting
    group: str
    train: Collection
    eval: Collection

    def content_sha256(self) -> str:
        """One hash of the setting's train and eval traces (`Collection.content_sha256`)."""
        return hashlib.sha256((self.train.content_sha256() + self.eval.content_sha256()).encode()).hexdigest()


def task_prompts(task: TaskData, split: Literal["train", "eval"], shots: int, limit: int | None,
                 seed: int) -> list[LabelledPrompt]:
    """One split's prompts for a setting with this `seed`: what `adainfer eval` collects and
    `adainfer prompts` writes, built in this one place so the two cannot drift apart.

    `train` prompts ask `task.classifier_queries`, `eval` prompts ask `task.eval`; demonstrations
    always come from `task.train`, so no evaluated input is ever a query of a training prompt or a
    demonstration. Eval prompts draw with `seed` and train prompts with `seed + 1`, so the two
    splits never share demonstration draws; that mapping is what cached settings were built with,
    so changing it would invalidate them. `limit` prompts (all when `None`) in the seed's order.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    queries = task.classifier_queries if split == "train" else task.eval
    return build_prompts(queries, task.train, shots, limit, seed if split == "eval" else seed + 1)


def collect_setting(
    model: EarlyExitModel,
    setting: Setting,
    cache_dir: Path,
    train_limit: int,
    eval_limit: int,
    data_dir: Path | None = None,
    on_prompt: Callable[[str, int, int], None] | None = None,
    row_source: RowSource | None = None,
) -> SettingData:
    """Collect (or resume) the train and eval traces of `setting`; returns them loaded.

    `on_prompt(split, done, total)` reports progress. Candidate features and `cand_top1` are
    collected when the task has a closed answer set. `row_source` computes the rows elsewhere
    (`collect.RowSource`, e.g. Ray workers); `model` still names the cache and heads its files.
    """
    task = load_task(setting.task, data_dir)
    candidates = model.candidate_tokens(task.choices) if task.choices else None
    features = BASE_FEATURES + (CANDIDATE_FEATURES if candidates else ())
    folder = Path(cache_dir) / model_slug(model) / setting.name
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(folder)):  # two runs sharing a setting: the second waits, then resumes
        loaded = {split: _collect_split(model, task, setting, folder, split, limit, features, candidates, on_prompt,
                                        row_source)
                  for split, limit in (("train", train_limit), ("eval", eval_limit))}
        data = SettingData(setting, task.group, loaded["train"], loaded["eval"])
        _write_setting_json(data, folder, task.choices)
    return data


def _collect_split(model: EarlyExitModel, task: TaskData, setting: Setting, folder: Path, split: str, limit: int,
                   features: tuple[str, ...], candidates: list[int] | None,
                   on_prompt: Callable[[str, int, int], None] | None,
                   row_source: RowSource | None = None) -> Collection:
    try:
        prompts = task_prompts(task, split, setting.shots, limit, setting.seed)
    except ValueError as error:
        raise HarnessError(f"{setting.name}: {error}") from error
    done = 0

    def progress(_index: int) -> None:
        nonlocal done
        done += 1
        if on_prompt is not None:
            on_prompt(split, done, len(prompts))

    # A run with a larger limit may have cached more prompts: only the first `limit` are used.
    return collect_cached(model, prompts, folder, split, features, progress, candidates, row_source)


def _write_setting_json(data: SettingData, folder: Path, choices: Sequence[str] | None = None) -> None:
    """What the setting is and how many of its cached prompts this run used: a cache extended by
    another run with larger limits still reports on exactly these (`load_setting`)."""
    meta = {"task": data.setting.task, "group": data.group, "shots": data.setting.shots, "seed": data.setting.seed,
            "choices": list(choices or ()), "train_prompts": len(data.train), "eval_prompts": len(data.eval)}
    write_text_atomic(Path(folder) / "setting.json", json.dumps(meta, indent=1) + "\n")


def load_setting(folder: Path) -> SettingData:
    """A collected setting from its folder, without the model (for `adainfer report`): the
    cache's `{train,eval}.jsonl`, or the compact `{train,eval}.npz` of `export_setting`."""
    folder = Path(folder)
    meta_path = folder / "setting.json"
    if not meta_path.exists():
        raise HarnessError(f"{folder} is not a collected setting (no setting.json)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        setting = Setting(str(meta["task"]), int(meta["shots"]), int(meta["seed"]))
        group = str(meta["group"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise HarnessError(f"{meta_path}: not a valid setting description ({type(error).__name__}: {error})") from None
    read = load_collection_npz if (folder / "train.npz").exists() else load_collection
    suffix = ".npz" if read is load_collection_npz else ".jsonl"
    splits = {}
    for split in ("train", "eval"):
        collection = read(folder / f"{split}{suffix}")
        wanted = meta.get(f"{split}_prompts", len(collection))  # older caches: every prompt they hold
        if not isinstance(wanted, int) or not 1 <= wanted <= len(collection):
            raise HarnessError(f"{meta_path}: {split}_prompts={wanted!r}, but {folder / (split + suffix)} "
                               f"holds {len(collection)} complete prompts")
        splits[split] = collection.subset(slice(0, wanted))
    return SettingData(setting, group, splits["train"], splits["eval"])


def export_setting(data: SettingData, folder: Path) -> Path:
    """Write a setting as `setting.json` plus `{train,eval}.npz` (a few hundred kB), which
    `load_setting` reads back to the same arrays: the form committed under results/traces."""
    folder = Path(folder)
    save_collection_npz(data.train, folder / "train.npz")
    save_collection_npz(data.eval, folder / "eval.npz")
    _write_setting_json(data, folder)
    return folder


def check_settings(settings: Sequence[Setting], train_limit: int, eval_limit: int,
                   data_dir: Path | None = None) -> None:
    """Build every setting's prompts before any is collected, so a grid that cannot be built
    (too few demonstrations for some k) fails in seconds, not after an hour of collection."""
    problems = []
    tasks: dict[str, TaskData] = {}
    for setting in settings:
        if setting.task not in tasks:
            tasks[setting.task] = load_task(setting.task, data_dir)
        task = tasks[setting.task]
        for split, limit in (("train", train_limit), ("eval", eval_limit)):
            try:
                task_prompts(task, split, setting.shots, limit, setting.seed)
            except ValueError as error:
                problems.append(f"{setting.name}: {error}")
                break
    if problems:
        raise HarnessError("these settings cannot be built, drop them from --tasks/--shots: "
                           + "; ".join(problems))


def settings_grid(tasks: Sequence[str], shots: Sequence[int], seed: int = 0) -> list[Setting]:
    """Every (task, shots) setting once, in the order given: a task or shot count named twice is not
    counted twice in the tables."""
    if not tasks or not shots:
        raise ValueError(f"need at least one task and one number of shots; got tasks {list(tasks)} and shots "
                         f"{list(shots)}")
    return list(dict.fromkeys(Setting(task, k, seed) for task in tasks for k in shots))
