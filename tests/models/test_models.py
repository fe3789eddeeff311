"""The model zoo, parametrised over the registry: shapes, parameter counts against independent plain
PyTorch builds, no NaN, learning on a fixed batch, and scratch == torch backends in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.models import create_model, list_models, model_info

SMALL = {"vgg11": {"ratio": 8}, "vgg16": {"ratio": 8}}  # keep the big ones light in tests


# --- independent plain-PyTorch builds (written from the book, not from cnnlab's code) -----------

def plain_lenet():
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Sigmoid(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(),
                         nn.Linear(84, 10))


def plain_bn_lenet():
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.Sigmoid(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5),
                         nn.BatchNorm2d(16), nn.Sigmoid(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(256, 120),
                         nn.BatchNorm1d(120), nn.Sigmoid(), nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(), nn.Linear(84, 10))


def plain_alexnet():
    return nn.Sequential(nn.Conv2d(1, 96, 11, 4, 1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(),
                         nn.MaxPool2d(3, 2), nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
                         nn.Linear(6400, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))


def plain_vgg(arch, ratio):
    layers, c = [], 1
    for n, out in arch:
        for _ in range(n):
            layers += [nn.Conv2d(c, out // ratio, 3, padding=1), nn.ReLU()]
            c = out // ratio
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * 49, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 10))


def plain_nin():
    def block(i, o, k, s, p):
        return [nn.Conv2d(i, o, k, s, p), nn.Conv2d(o, o, 1), nn.Conv2d(o, o, 1)]
    return nn.Sequential(*block(1, 96, 11, 4, 0), *block(96, 256, 5, 1, 2), *block(256, 384, 3, 1, 1), *block(384, 10, 3, 1, 1))


def plain_inception(i, c1, c2, c3, c4):
    return [nn.Conv2d(i, c1, 1), nn.Conv2d(i, c2[0], 1), nn.Conv2d(c2[0], c2[1], 3), nn.Conv2d(i, c3[0], 1),
            nn.Conv2d(c3[0], c3[1], 5), nn.Conv2d(i, c4, 1)]


def plain_googlenet():
    cfg = [(192, 64, (96, 128), (16, 32), 32), (256, 128, (128, 192), (32, 96), 64), (480, 192, (96, 208), (16, 48), 64),
           (512, 160, (112, 224), (24, 64), 64), (512, 128, (128, 256), (24, 64), 64), (512, 112, (144, 288), (32, 64), 64),
           (528, 256, (160, 320), (32, 128), 128), (832, 256, (160, 320), (32, 128), 128), (832, 384, (192, 384), (48, 128), 128)]
    layers = [nn.Conv2d(1, 64, 7), nn.Conv2d(64, 64, 1), nn.Conv2d(64, 192, 3)]
    for c in cfg:
        layers += plain_inception(*c)
    return nn.Sequential(*layers, nn.Linear(1024, 10))


def plain_resnet(depths):
    layers, c = [nn.Conv2d(1, 64, 7), nn.BatchNorm2d(64)], 64
    for i, (d, out) in enumerate(zip(depths, (64, 128, 256, 512))):
        for j in range(d):
            layers += [nn.Conv2d(c, out, 3), nn.BatchNorm2d(out), nn.Conv2d(out, out, 3), nn.BatchNorm2d(out)]
            if j == 0 and i > 0:
                layers.append(nn.Conv2d(c, out, 1))
            c = out
    return nn.Sequential(*layers, nn.Linear(512, 10))


def plain_densenet():
    layers, c = [nn.Conv2d(1, 64, 7), nn.BatchNorm2d(64)], 64
    for i in range(4):
        for _ in range(4):
            layers += [nn.BatchNorm2d(c), nn.Conv2d(c, 32, 3)]
            c += 32
        if i < 3:
            layers += [nn.BatchNorm2d(c), nn.Conv2d(c, c // 2, 1)]
            c //= 2
    return nn.Sequential(*layers, nn.BatchNorm2d(c), nn.Linear(c, 10))


def plain_fast():
    return nn.Sequential(nn.Conv2d(1, 16, 3, bias=False), nn.BatchNorm2d(16), nn.Conv2d(16, 32, 3, bias=False), nn.BatchNorm2d(32),
                         nn.Conv2d(32, 64, 3, bias=False), nn.BatchNorm2d(64), nn.Linear(576, 10))


def plain_alexnet_cpu():
    return nn.Sequential(nn.Conv2d(1, 16, 5), nn.Conv2d(16, 32, 5), nn.Conv2d(32, 48, 3), nn.Conv2d(48, 48, 3), nn.Conv2d(48, 32, 3),
                         nn.Linear(512, 256), nn.Linear(256, 256), nn.Linear(256, 10))


def plain_vgg_cpu():
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.Conv2d(16, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3),
                         nn.Linear(576, 256), nn.Linear(256, 256), nn.Linear(256, 10))


def plain_nin_cpu():
    def block(i, o, k):  # conv-BN (no conv bias) three times
        return [nn.Conv2d(i, o, k, bias=False), nn.BatchNorm2d(o), nn.Conv2d(o, o, 1, bias=False), nn.BatchNorm2d(o),
                nn.Conv2d(o, o, 1, bias=False), nn.BatchNorm2d(o)]
    head = [nn.Conv2d(96, 10, 3, bias=False), nn.BatchNorm2d(10), nn.Conv2d(10, 10, 1, bias=False), nn.BatchNorm2d(10), nn.Conv2d(10, 10, 1)]
    return nn.Sequential(*block(1, 24, 5), *block(24, 48, 3), *block(48, 96, 3), *head)


def plain_googlenet_cpu():
    def inception(i, c1, c2, c3, c4):
        convs = [(i, c1, 1), (i, c2[0], 1), (c2[0], c2[1], 3), (i, c3[0], 1), (c3[0], c3[1], 5), (i, c4, 1)]
        return [m for a, b, k in convs for m in (nn.Conv2d(a, b, k, bias=False), nn.BatchNorm2d(b))]
    cfg = [(24, 16, (16, 24), (4, 8), 8), (56, 24, (24, 32), (8, 16), 16), (88, 32, (32, 48), (8, 16), 16),
           (112, 40, (40, 56), (12, 24), 24)]
    return nn.Sequential(nn.Conv2d(1, 24, 3, bias=False), nn.BatchNorm2d(24), *[m for c in cfg for m in inception(*c)], nn.Linear(144, 10))


def plain_resnet_cpu():
    layers, c = [nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32)], 32
    for i, out in enumerate((32, 64, 128)):
        layers += [nn.Conv2d(c, out, 3), nn.BatchNorm2d(out), nn.Conv2d(out, out, 3), nn.BatchNorm2d(out)]
        if i > 0:
            layers.append(nn.Conv2d(c, out, 1))
        c = out
    return nn.Sequential(*layers, nn.Linear(128, 10))


def plain_densenet_cpu():
    layers, c = [nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32)], 32
    for i in range(2):
        for _ in range(4):
            layers += [nn.BatchNorm2d(c), nn.Conv2d(c, 12, 3)]
            c += 12
        if i == 0:
            layers += [nn.BatchNorm2d(c), nn.Conv2d(c, c // 2, 1)]
            c //= 2
    return nn.Sequential(*layers, nn.BatchNorm2d(c), nn.Linear(c, 10))


PLAIN = {
    "fast": plain_fast, "alexnet-cpu": plain_alexnet_cpu, "vgg-cpu": plain_vgg_cpu, "nin-cpu": plain_nin_cpu,
    "googlenet-cpu": plain_googlenet_cpu, "resnet-cpu": plain_resnet_cpu, "densenet-cpu": plain_densenet_cpu,
    "lenet": plain_lenet, "bn-lenet": plain_bn_lenet, "alexnet": plain_alexnet,
    "vgg11": lambda: plain_vgg(((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)), 8),
    "vgg16": lambda: plain_vgg(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), 8),
    "nin": plain_nin, "googlenet": plain_googlenet, "resnet18": lambda: plain_resnet((2, 2, 2, 2)),
    "resnet34": lambda: plain_resnet((3, 4, 6, 3)), "densenet": plain_densenet,
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_chapters_models():
    assert list_models() == ["lenet", "bn-lenet", "lenet-modern", "fast", "alexnet", "alexnet-cpu", "vgg11", "vgg16", "vgg-cpu",
                             "nin", "nin-cpu", "googlenet", "googlenet-cpu", "resnet18", "resnet34", "resnet-cpu", "densenet",
                             "densenet-cpu"]


@pytest.mark.parametrize("name", [n for n in PLAIN])
def test_parameter_count_equals_an_independent_plain_build(name):
    assert count(create_model(name, **SMALL.get(name, {}))) == count(PLAIN[name]())


def test_lenet_has_the_books_61706_parameters():
    assert count(create_model("lenet")) == 61_706


@pytest.mark.parametrize("name", list_models())
def test_output_shape_and_no_nan(name):
    torch.manual_seed(0)
    size = model_info(name)["input_size"]
    model = create_model(name, num_classes=7, in_channels=3, **SMALL.get(name, {})).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def shapes_of(model: nn.Module, x: torch.Tensor, kinds) -> list[tuple]:
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


def test_reference_layer_shapes():
    from cnnlab import nn as cnn

    x28, x224, x96 = torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 224, 224), torch.zeros(1, 1, 96, 96)
    lenet = shapes_of(create_model("lenet"), x28, (cnn.Conv2d, cnn.AvgPool2d, nn.Flatten, nn.Linear))
    assert lenet == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (400,), (120,), (84,), (10,)]
    alex = shapes_of(create_model("alexnet"), x224, (cnn.Conv2d, cnn.MaxPool2d, nn.Flatten, nn.Linear))
    assert alex == [(96, 54, 54), (96, 26, 26), (256, 26, 26), (256, 12, 12), (384, 12, 12), (384, 12, 12), (256, 12, 12),
                    (256, 5, 5), (6400,), (4096,), (4096,), (10,)]
    vgg = create_model("vgg11")
    assert shapes_of(vgg.features, x224, (nn.Sequential,))[:-1] == [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14), (512, 7, 7)]
    assert shapes_of(vgg.classifier, torch.zeros(1, 512, 7, 7), (nn.Flatten, nn.Linear)) == [(25088,), (4096,), (4096,), (10,)]
    nin = create_model("nin")
    blocks = shapes_of(nin.net, x224, (nn.Sequential, cnn.MaxPool2d, cnn.AdaptiveAvgPool2d, nn.Flatten))
    assert blocks[:-1] == [(96, 54, 54), (96, 26, 26), (256, 26, 26), (256, 12, 12), (384, 12, 12), (384, 5, 5), (10, 5, 5),
                           (10, 1, 1), (10,)]
    assert stage_shapes(create_model("googlenet").features, x96) == [(64, 24, 24), (192, 12, 12), (480, 6, 6), (832, 3, 3), (1024,)]
    assert stage_shapes(create_model("resnet18").features, x96)[:5] == [(64, 24, 24), (64, 24, 24), (128, 12, 12), (256, 6, 6), (512, 3, 3)]


@torch.no_grad()
def stage_shapes(stages: nn.Sequential, x: torch.Tensor) -> list[tuple]:
    """The output shape after each direct child of ``stages``."""
    shapes = []
    for stage in stages.eval():
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


def test_reference_block_shapes():
    from cnnlab.models.densenet import DenseBlock, transition_block
    from cnnlab.models.resnet import Residual

    assert Residual(3, 6, use_1x1conv=True, strides=2)(torch.rand(4, 3, 6, 6)).shape == (4, 6, 3, 3)
    assert DenseBlock(2, 3, 10)(torch.randn(4, 3, 8, 8)).shape == (4, 23, 8, 8)
    assert transition_block(23, 10)(torch.randn(4, 23, 8, 8)).shape == (4, 10, 4, 4)


CPU_MODELS = ["fast", "alexnet-cpu", "vgg-cpu", "nin-cpu", "googlenet-cpu", "resnet-cpu", "densenet-cpu"]


def test_cpu_variants_keep_their_familys_shapes():
    from cnnlab import nn as cnn

    x = torch.zeros(1, 1, 28, 28)
    assert stage_shapes(create_model("resnet-cpu").features, x)[:4] == [(32, 14, 14), (32, 14, 14), (64, 7, 7), (128, 4, 4)]
    assert stage_shapes(create_model("densenet-cpu").features, x)[:4] == [(32, 14, 14), (80, 14, 14), (40, 7, 7), (88, 7, 7)]
    google = stage_shapes(create_model("googlenet-cpu").features, x)
    assert [google[i] for i in (3, 4, 5, 6, 7, 8, 9)] == [(24, 14, 14), (56, 14, 14), (88, 14, 14), (88, 7, 7), (112, 7, 7),
                                                          (144, 7, 7), (144, 1, 1)]
    nin = shapes_of(create_model("nin-cpu").net, x, (cnn.MaxPool2d, cnn.AdaptiveAvgPool2d))
    assert nin == [(24, 14, 14), (48, 7, 7), (96, 4, 4), (10, 1, 1)]
    assert shapes_of(create_model("alexnet-cpu").features, x, (cnn.MaxPool2d,)) == [(16, 14, 14), (32, 7, 7), (32, 4, 4)]
    assert stage_shapes(create_model("vgg-cpu").features, x) == [(16, 14, 14), (32, 7, 7), (64, 3, 3)]
    assert shapes_of(create_model("fast"), x, (cnn.MaxPool2d,)) == [(16, 14, 14), (32, 7, 7), (64, 3, 3)]


@pytest.mark.parametrize("name", ["lenet", "bn-lenet", "lenet-modern", "nin", "resnet18", "densenet", *CPU_MODELS])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    size = min(model_info(name)["input_size"], 64 if name != "nin" else 96)
    model = create_model(name)
    x, y = torch.randn(16, 1, size, size), torch.arange(16) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", list_models())
def test_scratch_and_torch_backends_agree_in_float64(name):
    torch.manual_seed(0)
    kwargs = SMALL.get(name, {})
    scratch = create_model(name, backend="scratch", **kwargs).double()
    reference = create_model(name, backend="torch", **kwargs).double()
    reference.load_state_dict(scratch.state_dict())  # one state_dict for both
    size = {"alexnet": 67, "vgg11": 32, "vgg16": 32, "nin": 67}.get(name, min(model_info(name)["input_size"], 64))
    if name in ("alexnet", "vgg11", "vgg16"):  # their classifiers expect 224 inputs: compare the features
        scratch, reference = scratch.features, reference.features
    x = torch.randn(3, 1, size, size, dtype=torch.float64)
    for m in (scratch, reference):
        m.train()
        for mod in m.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
    a, b = scratch(x), reference(x)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)
    g = torch.randn_like(a)
    grads_a = torch.autograd.grad(a, list(scratch.parameters()), g)
    grads_b = torch.autograd.grad(b, list(reference.parameters()), g)
    for ga, gb in zip(grads_a, grads_b):
        assert torch.allclose(ga, gb, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["fast", "resnet-cpu", "googlenet-cpu"])
def test_training_after_an_evaluation_under_inference_mode(name):
    """A model evaluated under ``torch.inference_mode()`` first (as a notebook may) then trains, channels-last
    at batches 8 and 32 so that every route runs in both (the DFT, per-tap and window-matrix convolutions,
    1x1 products, stride-phase and overlapping max pools, batch norm), and its gradients equal a fresh
    model's: the reused scratch memory made in inference mode is writable outside it (it raised "Inplace
    update to inference tensor" before)."""
    torch.manual_seed(0)
    model = create_model(name).to(memory_format=torch.channels_last)
    fresh = create_model(name).to(memory_format=torch.channels_last)
    fresh.load_state_dict(model.state_dict())
    batches = [torch.randn(n, 1, 28, 28).contiguous(memory_format=torch.channels_last) for n in (8, 32)]
    with torch.inference_mode():
        model.eval()
        for x in batches:
            model(x)
    for x in batches:
        grads = []
        for m in (model, fresh):
            m.train()
            grads.append(torch.autograd.grad(m(x).square().sum(), list(m.parameters())))
        for a, b in zip(*grads):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
