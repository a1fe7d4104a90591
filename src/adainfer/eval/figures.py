"""The paper's figures from collected settings, as PNG files.

Each figure is a `matplotlib.figure.Figure` drawn on its own Agg canvas: no pyplot, so no global
backend is set and no figure is left registered anywhere.

Figure 1: accuracy of the logit lens at each layer, one line per task. Figure 3: gap and top
probability by layer, mean with a band of one standard deviation. Plus, per task, histograms of
the exit layers of the paper's SVM, our SVM + depth and the oracle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from adainfer.eval.experiments import Method, layer_accuracy
from adainfer.eval.harness import SettingData
from adainfer.eval.replay import fit_on, policy_decisions
from adainfer.policies.decisions import exit_layers, oracle_exit_layers


def _label(data: SettingData) -> str:
    return f"{data.setting.name.split('/')[0]} ({data.setting.shots}-shot)"


def layer_accuracy_figure(settings: Sequence[SettingData], path: Path) -> Path:
    """Figure 1: top-1 accuracy of the lens after each layer, on each setting's eval prompts."""
    figure, axis = _figure()
    for data in settings:
        accuracy = layer_accuracy(data.eval)
        axis.plot(np.arange(1, len(accuracy) + 1), accuracy, marker="o", markersize=3, label=_label(data))
    axis.set_xlabel("layer")
    axis.set_ylabel("top-1 accuracy of the first answer token")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def lens_features_figure(data: SettingData, path: Path) -> Path:
    """Figure 3: mean and spread of `gap` and `top_prob` by layer on one setting's eval prompts."""
    figure, axis = _figure()
    layers = np.arange(1, data.eval.features.shape[1] + 1)
    for name in ("gap", "top_prob"):
        values = data.eval.select([name])[..., 0]
        mean, spread = values.mean(axis=0), values.std(axis=0)
        axis.plot(layers, mean, marker="o", markersize=3, label=name)
        axis.fill_between(layers, mean - spread, mean + spread, alpha=0.2)
    axis.plot(layers, layer_accuracy(data.eval), linestyle="--", color="grey", label="accuracy")
    axis.set_xlabel("layer")
    axis.set_ylim(0, 1)
    axis.set_title(_label(data), fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def exit_histogram_figure(data: SettingData, methods: Sequence[Method], path: Path) -> Path:
    """Histogram of exit layers on the eval prompts for each trainable method and the oracle."""
    num_layers = data.eval.top1.shape[1]
    exits = {"stable-answer oracle": oracle_exit_layers(data.eval.top1)}
    for method in methods:
        policy = method.make()
        try:
            fit_on(policy, data.train)
        except ValueError:
            continue  # untrainable here; the tables say why
        exits[method.name] = exit_layers(policy_decisions(policy, data.eval))
    figure, axis = _figure()
    bins = np.arange(0.5, num_layers + 1.5)
    for name, layers in exits.items():
        axis.hist(layers, bins=bins, histtype="step", linewidth=1.5, label=name)
    axis.set_xlabel("exit layer")
    axis.set_ylabel("prompts")
    axis.set_title(_label(data), fontsize=10)
    axis.legend(fontsize=8)
    return _save(figure, path)


def _figure() -> tuple[Figure, Axes]:
    """A 6 x 4 inch figure with one axis, on an Agg canvas of its own."""
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
