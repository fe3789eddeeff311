"""Summary and receptive fields: known values, gradients as the ground truth, golden tables."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.analysis import receptive_field_for_unit, summary, to_csv, to_json, to_markdown
from cnnlab.models import create_model, list_models, model_info
from cnnlab.models.vgg import VGG, VGG_ARCHS

import procs

GOLDEN = Path(__file__).parent / "golden"


def test_lenet_mult_adds_equal_the_hand_count():
    s = summary(create_model("lenet"), "1x28x28")
    convs = [r.mult_adds for r in s.rows if r.type == "Conv2d"]
    linears = sum(r.mult_adds for r in s.rows if r.type == "Linear")
    assert convs == [117_600, 240_000] and linears == 58_920 and s.totals["mult_adds"] == 416_520
    assert s.totals["params"] == 61_706


def last_pool(model: nn.Module, size: int):
    rows = summary(model, (1, size, size)).rows
    return [r for r in rows if r.type == "MaxPool2d"][-1]


def test_alexnet_and_vgg16_receptive_fields():
    alex = last_pool(create_model("alexnet", backend="torch").features, 224)
    assert alex.receptive_field == (195, 195) and alex.jump == (32, 32)
    vgg = last_pool(VGG(VGG_ARCHS["vgg16"], backend="torch").features, 224)
    assert vgg.receptive_field == (212, 212) and vgg.jump == (32, 32)


def nonzero_box(grad: torch.Tensor):
    ys, xs = torch.nonzero(grad.abs().sum(0) > 0, as_tuple=True)
    return (int(ys.min()), int(ys.max())), (int(xs.min()), int(xs.max()))


def unit_gradient(model, x, layer: str, index):
    """The gradient of one unit of ``layer``'s output with respect to the input."""
    captured = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    x = x.clone().requires_grad_()
    model(x)
    handle.remove()
    out = captured["out"]
    (grad,) = torch.autograd.grad(out[(0, slice(None), *index)].sum(), [x])
    return grad[0]


def random_chain(rng: random.Random) -> tuple[nn.Sequential, int]:
    layers, size = [], rng.randint(24, 48)
    channels = 2
    n = size
    for _ in range(rng.randint(2, 5)):
        k, s, d = rng.randint(1, 4), rng.randint(1, 2), rng.randint(1, 2)
        p = rng.randint(0, k // 2)
        if (n + 2 * p - d * (k - 1) - 1) // s + 1 < 2:
            break
        if rng.random() < 0.6:
            layer = nn.Conv2d(channels, 3, k, stride=s, padding=p, dilation=d)
        else:
            layer = nn.AvgPool2d(k, stride=s, padding=p, count_include_pad=True)
            d = 1
        channels = 3 if isinstance(layer, nn.Conv2d) else channels
        layers.append(layer)
        n = (n + 2 * p - d * (k - 1) - 1) // s + 1
    return nn.Sequential(*layers), size


@pytest.mark.parametrize("seed", range(25))
def test_receptive_field_matches_gradients_of_random_chains(seed):
    """Positive weights and average pooling: every pixel in the field moves the unit, none outside."""
    rng = random.Random(seed)
    model, size = random_chain(rng)
    if not len(model):
        pytest.skip("chain too short")
    torch.manual_seed(seed)
    for p in model.parameters():
        p.data = p.data.abs() + 0.1
    x = torch.rand(1, 2, size, size) + 0.5
    last = str(len(model) - 1)
    out = model(x)
    index = (rng.randrange(out.shape[2]), rng.randrange(out.shape[3]))
    field = receptive_field_for_unit(model, (2, size, size), last, index)
    box = nonzero_box(unit_gradient(model, x, last, index))
    for (lo, hi), (clo, chi), (ulo, uhi) in zip(box, field["clipped"], field["unclipped"]):
        assert clo <= lo <= hi <= chi  # nothing outside the field moves the unit
        # and the field is tight: where it is not cut by the image border, its edge pixels do move it
        if ulo >= 0:
            assert lo == ulo
        if uhi <= size - 1:
            assert hi == uhi


@pytest.mark.parametrize("name", [n for n in list_models() if n not in ("vgg16",)])
def test_gradients_of_zoo_models_stay_inside_the_field(name):
    torch.manual_seed(0)
    size = model_info(name)["input_size"]
    model = create_model(name, backend="torch", **({"ratio": 8} if name.startswith("vgg") else {})).eval()
    rows = [r for r in summary(model, (1, size, size)).rows if r.receptive_field and len(r.output_shape) == 3 and not r.name.endswith("p4.0")]
    row = rows[len(rows) // 2]  # a layer in the middle of the network
    index = (row.output_shape[1] // 2, row.output_shape[2] // 3)
    rect = receptive_field_for_unit(model, (1, size, size), row.name, index)["clipped"]
    (y0, y1), (x0, x1) = nonzero_box(unit_gradient(model, torch.randn(1, 1, size, size), row.name, index))
    assert rect[0][0] <= y0 <= y1 <= rect[0][1] and rect[1][0] <= x0 <= x1 <= rect[1][1], (row.name, rect)


def test_branches_take_the_largest_field():
    from cnnlab.models.googlenet import Inception

    block = nn.Sequential(Inception(4, 2, (2, 3), (2, 3), 2, backend="torch"))
    rows = summary(block, "4x16x16", depth=1).rows
    assert rows[0].receptive_field == (5, 5)  # the 5x5 path wins the concatenation


def test_input_that_does_not_fit_names_the_layer():
    with pytest.raises(ValueError, match=r"input size \(1, 32, 32\) does not fit the model: layer 'features.5' \(MaxPool2d\) got input of shape \(1, 256, 2, 2\)"):
        summary(create_model("alexnet", backend="torch"), "1x32x32")


def test_renderers_carry_the_same_rows():
    s = summary(create_model("lenet"), "1x28x28")
    assert to_csv(s).count("\n") == len(s.rows) + 1
    assert '"mult_adds": 117600' in to_json(s)
    assert to_markdown(s).startswith("| layer | type |")


def render_golden(name: str) -> str:
    size = model_info(name)["input_size"]
    return str(summary(create_model(name, backend="torch"), (1, size, size)))


@pytest.mark.parametrize("name", list_models())
def test_golden_tables(name):
    path = GOLDEN / f"{name}.txt"
    text = render_golden(name) + "\n"
    if os.environ.get("CNNLAB_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_summary_command_accepts_a_user_factory(tmp_path):
    (tmp_path / "mynet.py").write_text("import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2))\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = procs.run("-m", "cnnlab", "summary", "mynet:build", "--input", "3x32x32", "--format", "csv", env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # 8 x 30 x 30 outputs, each 3 x 3 x 3 multiply-adds
    assert out.splitlines()[1].startswith("0,Conv2d,8x30x30,224,224,194400,3x3,1x1,0x0,1x1,3x3,1x1,1x1")
