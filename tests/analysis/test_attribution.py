"""Grad-CAM and saliency equal captum's (a trusted peer) on the same model and input, for zoo models on
both backends and a user's own network; clear errors; the figure and the command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.analysis import explain, gradcam, saliency
from cnnlab.models import create_model

from helpers import max_rel_error

captum_attr = pytest.importorskip("captum.attr")


def user_net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(cnnlab.nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), cnnlab.nn.MaxPool2d(2),
                         cnnlab.nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), cnnlab.nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).double()


CASES = [
    ("lenet-modern scratch", lambda: create_model("lenet-modern").double(), (1, 28, 28), None),
    ("lenet-modern torch", lambda: create_model("lenet-modern", backend="torch").double(), (1, 28, 28), None),
    ("resnet18 scratch, a middle layer", lambda: create_model("resnet18").double(), (1, 32, 32), "features.2.0.conv1"),
    ("user network, first layer", user_net, (3, 16, 16), "0"),
]


@pytest.mark.parametrize(("what", "build", "shape", "layer"), CASES, ids=[c[0] for c in CASES])
def test_gradcam_and_saliency_equal_captums(what, build, shape, layer):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(1, *shape, dtype=torch.float64)
    modules = dict(model.named_modules())
    maps = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    name = layer or maps[-1]
    assert name in modules, sorted(modules)
    for target in (None, 3):
        ours = explain(model, x, layer, target)
        t = ours.target
        assert target is None and t == int(model(x).argmax()) or t == target
        theirs_cam = captum_attr.LayerGradCam(model, modules[name]).attribute(x, target=t, relu_attributions=True)
        theirs_sal = captum_attr.Saliency(model).attribute(x.clone().requires_grad_(), target=t, abs=True)
        assert ours.cam.shape == theirs_cam.shape[-2:]
        assert max_rel_error(ours.cam, theirs_cam[0, 0].detach()) < 1e-10, what
        assert max_rel_error(ours.saliency, theirs_sal[0].detach()) < 1e-10, what
        assert max_rel_error(gradcam(model, x, layer, t), ours.cam) == 0 and max_rel_error(saliency(model, x, t), ours.saliency) == 0
        assert ours.cam_upsampled.shape == x.shape[-2:]


def test_attribution_errors_name_what_is_allowed():
    model = create_model("lenet")
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ValueError, match=r"no convolution or pooling layer named '1'; layers with feature maps: 0, 2, 3, 5"):
        explain(model, x, "1")
    with pytest.raises(ValueError, match=r"target must be a class index in 0..9, got 10"):
        explain(model, x, target=10)
    with pytest.raises(ValueError, match=r"Sequential has no Conv2d layer: Grad-CAM needs one"):
        explain(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), x)
    with pytest.raises(ValueError, match=r"x must be one image"):
        explain(model, torch.randn(2, 1, 28, 28))


def test_the_figure_and_the_command(tmp_path):
    from PIL import Image

    from cnnlab.cli import main
    from cnnlab.train import fit, resolve_config

    fixtures = Path(__file__).parent.parent / "fixtures"
    run = fit(resolve_config("lenet-modern", dataset="fashion-mnist", data_dir=str(fixtures), epochs=1, batch_size=64, augment=False,
                             out=str(tmp_path / "run")), quiet=True).folder
    out = tmp_path / "cam.png"
    assert main(["viz", "cam", str(run), "--test-index", "2", "--data-dir", str(fixtures), "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size[0] > 600 and img.size[1] > 200
    assert main(["viz", "cam", str(run), "--test-index", "2", "--data-dir", str(fixtures), "--layer", "nope",
                            "--out", str(tmp_path / "x.png")]) == 2
