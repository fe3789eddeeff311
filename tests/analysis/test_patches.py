"""What a channel responds to: the streaming top-k equals the brute-force one, and every patch is the
receptive-field rectangle of its unit."""

from __future__ import annotations

import pytest
import torch

import cnnlab
from cnnlab.analysis import receptive_field_for_unit, top_patches


@pytest.mark.parametrize(("name", "layer"), [("lenet", "3"), ("lenet-modern", "7"), ("resnet18", "features.2.0.conv1")])
def test_streaming_top_k_equals_brute_force_and_patches_are_the_fields(name, layer, tmp_path):
    torch.manual_seed(0)
    model = cnnlab.create_model(name).eval()
    size = 32 if name == "resnet18" else 28
    images = torch.rand(70, 1, size, size)
    batches = [(images[i : i + 16], None) for i in range(0, 70, 16)]  # uneven batches, as a loader gives
    result = top_patches(model, batches, layer, k=5)
    maps = {}
    hook = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: maps.__setitem__("all", o))
    with torch.no_grad():
        model(images)
    hook.remove()
    everything = maps["all"].flatten(2).max(-1).values  # (70, C)
    assert sorted(result) == list(range(everything.shape[1]))
    for ch, patches in result.items():
        expected = everything[:, ch].topk(5)
        assert [p.activation for p in patches] == pytest.approx(expected.values.tolist(), abs=1e-6)
        assert [p.activation for p in patches] == sorted((p.activation for p in patches), reverse=True)
        for p in patches[:2]:
            rect = receptive_field_for_unit(model, (1, size, size), layer, p.unit)["clipped"]
            assert [tuple(r) for r in rect] == [tuple(r) for r in p.rectangle]
            h, w = maps["all"].shape[-2:]
            assert float(maps["all"][p.image, ch].flatten()[p.unit[0] * w + p.unit[1]]) == pytest.approx(p.activation, abs=1e-6)
    fig = cnnlab.viz.plot_top_patches(images, result, tmp_path / "p.png", channels=[0, 1, 2])
    assert len(fig.axes) == 15 and (tmp_path / "p.png").stat().st_size > 1000


def test_bad_layers_are_named():
    model = cnnlab.create_model("lenet")
    with pytest.raises(ValueError, match=r"no convolution or pooling layer named '7'; choose one of: 0, 2, 3, 5"):
        top_patches(model, [torch.rand(2, 1, 28, 28)], "7")
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_patches(model, [torch.rand(2, 1, 28, 28)], "3", k=0)
