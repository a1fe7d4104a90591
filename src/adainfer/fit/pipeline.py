"""`fit`: from a labelled task to a certified, measured early-exit classifier, in one call.

1. The answer set: a closed one (few labels with distinct first tokens) is read from its
   candidate rows of the head only; otherwise the task is open-vocabulary and reads the full lens.
2. Fixed demonstrations and three disjoint splits by the seed (`fit.splits`).
3. Full-depth traces of every prompt, cached and resumable (`eval.collect`).
4. A label-free scorer learns where the model's own answer stops changing; which scorer, and
   its check schedule (`first_check`), are chosen by cross-validation on the train split alone
   (`fit.scorer_choice`), pricing a check as measured. Learn then Test certifies its threshold
   on the calibration split at (epsilon, delta) against the full model's answer (the best
   candidate for a closed set).
5. Figures on the test split: replayed accuracy, agreement, layers saved and FLOPs, a re-split
   check of the guarantee, and wall-clock speedup measured live against the model's forward.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock

from adainfer.data.task_data import load_task
from adainfer.data.tasks import Example, split_examples
from adainfer.engine.cost_profile import measure_cost_profile
from adainfer.engine.files import lock_path
from adainfer.engine.model import EarlyExitModel, model_slug
from adainfer.engine.parameters import ParameterError
from adainfer.eval.collect import RowSource, collect_cached
from adainfer.eval.replay import evaluate_policy, fit_on, policy_decisions
from adainfer.eval.traces import Collection
from adainfer.fit.answer_set import AnswerSet, detect_answer_set
from adainfer.fit.cached_prefix import use_demonstrations
from adainfer.fit.calibration_arrays import CALIBRATION_NPZ, CalibrationArrays
from adainfer.fit.card import CARD_JSON, CARD_MD, ClassifierCard
from adainfer.fit.card_checks import prompt_sha256
from adainfer.fit.payoff import calibration_for_half_risk
from adainfer.fit.scorer_choice import SCORERS, choose_scorer, schedule_candidates, share_of_oracle
from adainfer.fit.splits import FitSplits, SplitSizes, make_splits
from adainfer.fit.timing import measure_speedup
from adainfer.policies.calibrated import CalibratedScorer, resplit_exits
from adainfer.policies.decisions import answers_at, cheapest_first_check, exit_layers, oracle_exit_layers

CLOSED_FEATURES: tuple[str, ...] = ("cand_gap", "cand_top_prob", "cand_agree_prev", "depth")
OPEN_FEATURES: tuple[str, ...] = ("gap", "top_prob", "agree_prev", "depth")
SPLITS: tuple[str, ...] = ("train", "calibration", "test")

Progress = Callable[[str, int, int], None]


class FitError(ParameterError):
    """Options or data that cannot give a certified classifier."""


@dataclass(frozen=True)
class FitOptions:
    """What `fit_classifier` is asked for; every field is recorded on the card."""

    shots: int = 5
    epsilon: float = 0.05
    delta: float = 0.05
    sizes: SplitSizes = field(default_factory=SplitSizes)
    seed: int = 0
    choices: tuple[str, ...] | None = None
    timing_prompts: int = 64
    batch_sizes: tuple[int, ...] = (1, 16)
    resplits: int = 100
    scorers: tuple[str, ...] = tuple(SCORERS)  # compared on the train split; one: no choice
    joint_schedule: bool = True  # choose first_check with the scorer; False: the oracle's cheapest

    def __post_init__(self) -> None:
        if not self.scorers or any(name not in SCORERS for name in self.scorers):
            raise FitError(f"must name some of {', '.join(SCORERS)}; got {', '.join(self.scorers) or 'none'}", "scorers")
        for name in ("epsilon", "delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise FitError(f"must be in (0, 1), got {value!r}", name)
        if self.timing_prompts < 0 or any(size < 1 for size in self.batch_sizes) or self.resplits < 0:
            raise FitError("timing prompts and re-splits must be >= 0 and batch sizes >= 1")


@dataclass(frozen=True)
class TaskSource:
    """Where a fit's examples come from: demonstrations and scorer queries from `train_pool`,
    calibration and test from `eval_pool` (disjoint from it), and a built-in task's labels."""

    name: str
    train_pool: list[Example]
    eval_pool: list[Example]
    choices: tuple[str, ...] | None = None


def task_source(task: str, data_dir: Path | None = None) -> TaskSource:
    """A built-in task by name, or a JSONL file of {input, output} (split in halves by a fixed seed)."""
    data = load_task(task, data_dir)
    return TaskSource(data.name, list(data.classifier_queries) if data.classifier else list(data.train),
                      list(data.eval), data.choices)


def examples_source(name: str, examples: Sequence[Example]) -> TaskSource:
    """Labelled examples held in memory (`EarlyExitClassifier.fit`), split in halves by a fixed seed."""
    train, held_out = split_examples(examples)
    return TaskSource(name, train, held_out)


def minimum_calibration_prompts(epsilon: float, delta: float) -> int:
    """The fewest calibration prompts with which Learn then Test can certify anything: even with no
    changed answer, the p-value (1 - epsilon)^n must reach delta."""
    return math.ceil(math.log(delta) / math.log(1 - epsilon))


@dataclass
class FittedClassifier:
    """What `fit_classifier` returns: the calibrated policy and its card."""

    policy: CalibratedScorer
    card: ClassifierCard
    calibration: bytes | None = None  # calibration.npz (`fit.calibration_arrays`); None for older fits

    def save(self, directory: Path) -> Path:
        """The policy directory with card.json, card.md and calibration.npz among its hashed parts,
        written atomically."""
        parts: dict[str, str | bytes] = {CARD_JSON: self.card.to_json(), CARD_MD: self.card.to_markdown()}
        if self.calibration is not None:
            parts[CALIBRATION_NPZ] = self.calibration
        return self.policy.save(directory, self.card.model_identity, candidate_ids=self.card.answer_token_ids,
                                extra_parts=parts)


def _collect_splits(model: EarlyExitModel, splits: FitSplits, folder: Path, features: tuple[str, ...],
                    answers: AnswerSet | None, progress: Progress | None,
                    row_source: RowSource | None) -> dict[str, Collection]:
    """Full-depth traces of each split under `folder`, resumed where an earlier run stopped;
    `row_source` computes them elsewhere (Ray workers), this process still writing every row.

    Two cache files, each a prefix of what a fit with larger splits would collect: `train`, and
    `held_out` (calibration, then test: one seeded order of the evaluation pool, cut where
    calibration ends). A fit with other split sizes therefore reuses what is cached and collects
    only what it lacks, instead of finding test prompts that moved.
    """
    folder.mkdir(parents=True, exist_ok=True)
    candidates = answers.token_ids if answers else None
    with FileLock(lock_path(folder)):
        cached = {}
        for name, prompts in (("train", splits.prompts("train")),
                              ("held_out", splits.prompts("calibration") + splits.prompts("test"))):
            done = 0

            def advance(_index: int, name: str = name, total: int = len(prompts)) -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress(f"traces: {name.replace('_', '-')}", done, total)

            cached[name] = collect_cached(model, prompts, folder, name, features, advance, candidates, row_source)
    calibration_count = len(splits.calibration)
    return {"train": cached["train"], "calibration": cached["held_out"].subset(slice(0, calibration_count)),
            "test": cached["held_out"].subset(slice(calibration_count, None))}


def _cache_folder(cache_dir: Path, model: EarlyExitModel, source: TaskSource, splits: FitSplits,
                  answers: AnswerSet | None, features: tuple[str, ...], seed: int) -> Path:
    """One folder per (model, task, demonstrations, answer set, features, seed): a changed one never resumes another."""
    key = json.dumps([[list(d.__dict__.values()) for d in splits.demonstrations],
                      list(answers.choices) if answers else None, list(features), seed])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / model_slug(model) / "fit" / f"{source.name}-{len(splits.demonstrations)}shot-{digest}"


def _reference(collection: Collection, answers: AnswerSet | None) -> np.ndarray:
    """The model's own answer per (prompt, layer): the best candidate for a closed set, else the top-1."""
    return collection.cand_top1 if answers else collection.top1


def resplit_check(policy: CalibratedScorer, calibration: Collection, test: Collection, answers: AnswerSet | None,
                  epsilon: float, delta: float, splits: int, seed: int) -> dict:
    """The guarantee checked on `splits` random calibration/test splits of the held-out traces.

    The scorer and its grid stay fixed (they saw only training traces); each split recalibrates
    the threshold. A split that certifies no early exit cannot fail, so the fraction within
    epsilon is also given over the splits that certify one.
    """
    features = list(policy.features)
    scores = np.concatenate([policy.margins(calibration.select(features)), policy.margins(test.select(features))])
    reference = np.concatenate([_reference(calibration, answers), _reference(test, answers)])
    layers = reference.shape[1]
    within, certifying = [], []
    for test_index, certificate, exits in resplit_exits(scores, reference, len(calibration), epsilon, delta,
                                                        policy.threshold_grid_, policy.first_check, splits, seed):
        changed = answers_at(exits, reference[test_index]) != reference[test_index, -1]
        within.append(bool(changed.mean() <= epsilon))
        certifying.append(bool(np.isfinite(certificate.threshold) and (exits < layers).any()))
    within_array, certifying_array = np.array(within), np.array(certifying)
    return {"splits": splits, "prompts": len(scores), "calibration_prompts": len(calibration),
            "fraction_within_epsilon": round(float(within_array.mean()), 4) if splits else None,
            "splits_certifying_exits": int(certifying_array.sum()),
            "fraction_within_epsilon_certifying": (round(float(within_array[certifying_array].mean()), 4)
                                                   if certifying_array.any() else None)}


@dataclass(frozen=True)
class FitPlan:
    """What a fit will collect, checked before any trace is: the answer set and the splits."""

    answers: AnswerSet | None
    splits: FitSplits


def plan_fit(model: EarlyExitModel, source: TaskSource, options: FitOptions) -> FitPlan:
    """Everything that can be refused, refused in seconds: one distinct output, colliding labels,
    too few examples, fewer calibration prompts than epsilon and delta need, an over-long prompt."""
    answers = detect_answer_set(model, source.train_pool + source.eval_pool, options.choices or source.choices)
    splits = make_splits(source.train_pool, source.eval_pool, options.shots, options.sizes, options.seed, answers)
    needed = minimum_calibration_prompts(options.epsilon, options.delta)
    if len(splits.calibration) < needed:
        raise FitError(f"{len(splits.calibration)} calibration prompts cannot certify epsilon={options.epsilon} at "
                       f"delta={options.delta}: at least {needed} are needed (with no changed answer, more with "
                       f"some); give more examples or calibration prompts, or a larger epsilon")
    for split in SPLITS:  # a prompt over the context is refused now, not after an hour of collection
        for number, prompt in enumerate(splits.prompts(split), start=1):
            try:
                model.encode(prompt.prompt)
            except ValueError as error:
                raise FitError(f"{split} prompt {number}: {error} (fewer shots make prompts shorter)") from None
    return FitPlan(answers, splits)


def fit_classifier(model: EarlyExitModel, source: TaskSource, options: FitOptions, *, cache_dir: Path,
                   model_name: str = "", command: str = "", progress: Progress | None = None,
                   plan: FitPlan | None = None, row_source: RowSource | None = None) -> FittedClassifier:
    """Fit, certify and measure an early-exit classifier for `source` on `model` (see the module docstring).

    `plan` is `plan_fit`'s (made here when not given). `progress(stage, done, total)` reports long steps.
    `row_source` traces the prompts elsewhere (`adainfer.scale.collect.RayRows`); the cache written
    is the same, so the classifier is too.
    """
    plan = plan or plan_fit(model, source, options)
    answers, splits = plan.answers, plan.splits
    features = CLOSED_FEATURES if answers else OPEN_FEATURES
    folder = _cache_folder(cache_dir, model, source, splits, answers, features, options.seed)
    prefix = use_demonstrations(model, splits.demonstrations)  # computed once; what is calibrated is what runs
    cached_tokens = len(prefix) if prefix is not None else 0
    traces = _collect_splits(model, splits, folder, features, answers, progress, row_source)
    train, calibration, test = (traces[split] for split in SPLITS)

    # The price of a check in layers, measured here at the typical length of what runs: the query.
    typical_length = max(int(np.median(train.seq_len)) - cached_tokens, 1)
    profile = measure_cost_profile(model, [typical_length], repeats=3,
                                   candidate_count=len(answers.token_ids) if answers else 4)
    check_cost = profile.check_seconds_at(typical_length, answers is not None) / profile.layer_seconds_at(typical_length)
    cheapest = cheapest_first_check(oracle_exit_layers(_reference(train, answers)), model.num_layers, check_cost)
    choice = choose_scorer(train.select(features), _reference(train, answers), features, options.epsilon,
                           options.delta, len(calibration), check_cost,
                           schedule_candidates(model.num_layers, cheapest) if options.joint_schedule else [cheapest],
                           options.scorers)
    first_check = choice.first_check
    policy = fit_on(choice.build(features), train)
    certificate = policy.calibrate(calibration.select(features), _reference(calibration, answers),
                                   options.epsilon, options.delta)
    report = evaluate_policy(policy, test, policy.first_check_, profile, cached_tokens)

    speed, live_agrees = [], []
    timed = [prompt.prompt for prompt in splits.prompts("test")[: options.timing_prompts]]
    replayed_exits = _replayed_exits(policy, test, len(timed)) if timed else []
    for batch_size in options.batch_sizes if timed else ():
        figure, results = measure_speedup(model, timed, policy, answers.token_ids if answers else None, batch_size,
                                          on_batch=_batch_counter(progress, batch_size, len(timed)))
        speed.append(figure.to_dict())
        live_agrees.append(float(np.mean([r.exit_layer == e for r, e in zip(results, replayed_exits)])))
    # Live batches pad prompts, which changes sums' order, not values: exits may differ in a rare tie.
    test_figures = {**report.to_dict(), "share_of_oracle": share_of_oracle(report.layers_saved, report.oracle_layers_saved),
                    "live_exit_layers_equal_replay": min(live_agrees) if live_agrees else None}
    chosen = next(c for c in choice.candidates if (c.scorer, c.first_check) == (choice.scorer, choice.first_check))
    card = ClassifierCard(
        task=source.name, model=model_name or str(model.identity()["architecture"]), model_identity=model.identity(),
        shots=len(splits.demonstrations),
        demonstrations=[{"input": d.input, "output": d.output} for d in splits.demonstrations],
        answer_set=list(answers.choices) if answers else None,
        answer_token_ids=list(answers.token_ids) if answers else None, features=list(features),
        first_check=first_check, epsilon=options.epsilon, delta=options.delta, certificate=certificate.to_dict(),
        seed=options.seed, split_sizes={split: len(getattr(splits, split)) for split in SPLITS},
        test=test_figures, speed=speed,
        resplit_check=resplit_check(policy, calibration, test, answers, options.epsilon, options.delta,
                                    options.resplits, options.seed) if options.resplits else {},
        cost_profile={"seq_len": typical_length, "layer_seconds": profile.layer_seconds[0],
                      "check_seconds": profile.check_seconds_at(typical_length, answers is not None),
                      "check_cost_in_layers": round(check_cost, 4), "torch_threads": profile.torch_threads,
                      "cached_tokens": cached_tokens, "cache_bytes": prefix.nbytes if prefix is not None else 0},
        scorer={**choice.to_dict(), "cheapest_first_check": cheapest},
        calibration_needed={"calibration_prompts": len(calibration),
                            "any_certificate": minimum_calibration_prompts(options.epsilon, options.delta),
                            "half_epsilon_risk": calibration_for_half_risk(options.epsilon, options.delta),
                            "cv_savings_of_chosen_scorer": chosen.calibration_needed},
        command=command)
    card.prompt_sha256 = prompt_sha256(card.prompt_format, card.demonstrations)
    arrays = CalibrationArrays(calibration.select(features), policy.margins(calibration.select(features)),
                               _reference(calibration, answers), card.prompt_sha256)
    return FittedClassifier(policy, card, arrays.to_bytes())


def _replayed_exits(policy: CalibratedScorer, test: Collection, count: int) -> list[int]:
    """The exit layers replay gives the first `count` test prompts, to compare with the live runs."""
    return exit_layers(policy_decisions(policy, test.subset(slice(0, count)), policy.first_check_)).tolist()


def _batch_counter(progress: Progress | None, batch_size: int, prompts: int) -> Callable[[], None]:
    """A callback reporting timed batches of `batch_size` as progress."""
    total, done = math.ceil(prompts / batch_size), 0

    def advance() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(f"timing: batch {batch_size}", done, total)

    return advance
