"""The one-unit computation view: the numbers shown add up to the model's own activation, for
convolutions with stride, padding, dilation and groups, and for max and average pooling."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.analysis import unit_computation, unit_text


def user_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(cnnlab.nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), nn.ReLU(),
                         cnnlab.nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True),
                         cnnlab.nn.Conv2d(6, 6, (2, 3), padding=(1, 0)), nn.Tanh(),
                         cnnlab.nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                         cnnlab.nn.AvgPool2d(2, stride=1, padding=1), nn.Flatten()).double()


@pytest.mark.parametrize(("build", "shape"), [(user_net, (4, 19, 17)), (lambda: cnnlab.create_model("lenet").double(), (1, 28, 28))])
def test_the_numbers_shown_add_up_to_the_activation(build, shape):
    model = build()
    x = torch.randn(1, *shape, dtype=torch.float64)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    outputs = {}
    hooks = [dict(model.named_modules())[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o[0])) for n in layers]
    with torch.no_grad():  # as the view computes it (in training, 5x5 layers take the DFT: equal to rounding, not bitwise)
        model(x)
    for h in hooks:
        h.remove()
    rng = random.Random(0)
    for layer in layers:
        c, h, w = outputs[layer].shape
        for _ in range(6):
            unit, channel = (rng.randrange(h), rng.randrange(w)), rng.randrange(c)
            comp = unit_computation(model, x, layer, unit, channel)
            assert comp["activation"] == pytest.approx(float(outputs[layer][channel, unit[0], unit[1]]), rel=0, abs=0)
            assert comp["result"] == pytest.approx(comp["activation"], rel=1e-12, abs=1e-12), (layer, unit, channel, comp["kind"])
            if comp["kind"] == "conv":
                assert torch.equal(comp["products"], comp["window"] * comp["kernel"])
            assert "the model's activation" in unit_text(comp)


def test_bad_units_are_named():
    model = cnnlab.create_model("lenet")
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ValueError, match=r"no convolution or pooling layer named '7'; choose one of: 0, 2, 3, 5"):
        unit_computation(model, x, "7", (0, 0), 0)
    with pytest.raises(ValueError, match=r"unit \(10, 0\) is outside layer '3''s output of size 10x10"):
        unit_computation(model, x, "3", (10, 0), 0)
    with pytest.raises(ValueError, match=r"channel must be in 0..15 for layer '3', got 16"):
        unit_computation(model, x, "3", (0, 0), 16)


def test_the_command_prints_the_computation(tmp_path, capsys):
    from cnnlab.cli import main
    from cnnlab.train import fit, resolve_config

    fixtures = Path(__file__).parent.parent / "fixtures"
    run = fit(resolve_config("lenet", dataset="fashion-mnist", data_dir=str(fixtures), epochs=1, batch_size=64, out=str(tmp_path / "r")),
              quiet=True).folder
    capsys.readouterr()
    assert main(["viz", "unit", str(run), "--layer", "3", "--unit", "4,5", "--channel", "2", "--test-index", "0",
                 "--data-dir", str(fixtures)]) == 0
    out = capsys.readouterr().out
    assert "input channel 5: window" in out and "+ bias" in out and "the model's activation" in out
    shown = [line for line in out.splitlines() if "sum over 6 channel(s)" in line][0]
    activation = float(out.strip().splitlines()[-1].split(":")[-1])
    assert float(shown.split("=")[-1]) == pytest.approx(activation, abs=2e-6)
