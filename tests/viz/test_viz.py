"""Figures are made, have the expected size and are not blank; TensorBoard events read back; the tour checks out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.tour import STEPS, run_tour
from cnnlab.train import fit, resolve_config
from cnnlab.viz import plot_confusion, plot_curves, plot_features, plot_kernels, plot_predictions, plot_receptive

import procs

FIXTURES = Path(__file__).parent.parent / "fixtures"


def assert_picture(path: Path, min_size=(200, 150)) -> None:
    """A real PNG, at least ``min_size`` pixels, with more than one colour in it (not blank)."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], img.size
        pixels = np.asarray(img.convert("L"), dtype=np.float32)
    assert pixels.std() > 5, f"{path} looks blank"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lenet"
    config = resolve_config("lenet", dataset="fashion-mnist", data_dir=str(FIXTURES), epochs=2, batch_size=32,
                            out=str(out), tensorboard=True)
    return fit(config, quiet=True).folder


def test_training_figures(run):
    for name in ("curves.png", "predictions.png", "confusion.png"):
        assert_picture(run / name)


def test_figure_functions_return_figures_and_save_when_given_a_path(tmp_path):
    from matplotlib.figure import Figure

    history = [{"epoch": e, "train_loss": 2 / e, "train_acc": 0.5 + e / 10, "test_acc": 0.4 + e / 10} for e in (1, 2, 3)]
    images = torch.randint(0, 255, (10, 1, 28, 28), dtype=torch.uint8)
    maps = {"conv": torch.randn(4, 12, 12), "pool": torch.randn(4, 6, 6)}
    field = {"clipped": [(2, 9), (4, 11)], "unclipped": [(2.0, 9.0), (4.0, 11.0)]}
    calls = {
        "c": (lambda p: plot_curves(history, p), (600, 400)),
        "p": (lambda p: plot_predictions(images, list(range(10)), [0] * 10, [str(i) for i in range(10)], p), (200, 150)),
        "m": (lambda p: plot_confusion(torch.randint(0, 9, (4, 4)), list("abcd"), p), (200, 150)),
        "k": (lambda p: plot_kernels(torch.randn(6, 2, 5, 5), p), (200, 150)),
        "rgb": (lambda p: plot_kernels(torch.randn(4, 3, 3, 3), p), (100, 100)),  # RGB tiles
        "f": (lambda p: plot_features(images[0], maps, p, title="predicted 3"), (200, 150)),
        "r": (lambda p: plot_receptive(images[0], field, p), (200, 150)),
    }
    for name, (draw, size) in calls.items():
        fig = draw(tmp_path / f"{name}.png")
        assert isinstance(fig, Figure)
        assert_picture(tmp_path / f"{name}.png", size)
        inline = draw(None)._repr_png_()  # what Jupyter shows: the same picture, nothing written
        (tmp_path / f"{name}-inline.png").write_bytes(inline)
        assert_picture(tmp_path / f"{name}-inline.png", size)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{n}.png" for n in calls] + [f"{n}-inline.png" for n in calls])


@pytest.mark.parametrize("what", [["kernels", "--layer", "3"], ["features", "--test-index", "3"],
                                  ["receptive", "--layer", "5", "--unit", "1,2", "--test-index", "0"]])
def test_viz_commands(run, tmp_path, what):
    out = tmp_path / f"{what[0]}.png"
    done = procs.run("-m", "cnnlab", "viz", what[0], str(run), *what[1:], "--out", str(out), "--data-dir", str(FIXTURES))
    assert done.returncode == 0, done.stderr
    assert_picture(out, (150, 150))


def test_tensorboard_events_read_back(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"epoch/test_acc", "epoch/train_loss", "epoch/lr", "step/loss"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("epoch/test_acc")] == [1, 2]
    assert len(events.Scalars("step/loss")) == 2 * 19  # 600 images / batch 32, two epochs
    assert "weights/0.weight" in tags["histograms"] and "grads/0.weight" in tags["histograms"]
    assert {"kernels/0", "feature_maps/0"} <= set(tags["images"])
    assert tags["graph"]


def test_tour_checks_every_worked_example(tmp_path):
    lines = []
    assert run_tour(out=tmp_path, echo=lines.append)
    verdicts = [line.strip().split(";")[0] for line in lines if line.strip().startswith(("matches", "DOES NOT MATCH"))]
    assert verdicts == [f"matches {step.against}" for step in STEPS]  # the book's numbers; torch's for second order
    for name in ("corr2d", "edges", "learn_kernel", "channels", "pooling"):
        assert_picture(tmp_path / f"{name}.png")
    with pytest.raises(ValueError, match="unknown tour step 'nope'"):
        run_tour(["nope"])
