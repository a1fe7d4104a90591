"""The paper's figures as PNG files, drawn without pyplot or any global matplotlib state."""

import subprocess
import sys

from synthetic_traces import setting

from adainfer.eval.experiments import OUR_METHODS, PAPER_METHODS
from adainfer.eval.figures import exit_histogram_figure, layer_accuracy_figure, lens_features_figure

PNG = b"\x89PNG\r\n\x1a\n"


def test_each_figure_is_a_png_at_the_path_asked_for(tmp_path):
    settings = [setting("a", 5), setting("b", 0, seed=3)]
    paths = [layer_accuracy_figure(settings, tmp_path / "deep" / "accuracy.png"),
             lens_features_figure(settings[0], tmp_path / "features.png"),
             exit_histogram_figure(settings[0], PAPER_METHODS + OUR_METHODS[:1], tmp_path / "exits.png")]
    assert paths == [tmp_path / "deep" / "accuracy.png", tmp_path / "features.png", tmp_path / "exits.png"]
    for path in paths:
        assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000


def test_importing_the_figures_sets_no_backend_and_loads_no_pyplot():
    code = ("import sys, matplotlib; import adainfer.eval.figures; "
            "print('matplotlib.pyplot' in sys.modules, matplotlib.rcParams._get_backend_or_none())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "None"]
