"""Why the model decided: Grad-CAM at a convolution layer and input-gradient saliency, for any model.

    Grad-CAM (Selvaraju et al., 2017): for target class t and a convolution layer with
    activations A (K, h, w), weight each channel by its average gradient and keep the positive
    part:  cam = relu(sum_k mean_ij(d y_t / d A_kij) * A_k)   -> (h, w), then upsampled to the input.
    Saliency (Simonyan et al., 2014): |d y_t / d x| per input pixel and channel.

Both are computed here with forward/backward hooks on the user's own model (zoo or not, any
backend), and checked against captum's ``LayerGradCam`` and ``Saliency`` in the tests: our own
code, so the attribution needs no extra dependency, and a trusted peer as the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attribution", "gradcam", "saliency"]


@dataclass
class Attribution:
    """Grad-CAM and saliency of one image for one class."""

    target: int
    probabilities: torch.Tensor  # (classes,)
    layer: str
    cam: torch.Tensor  # (h, w) at the layer's resolution
    cam_upsampled: torch.Tensor  # (H, W), bilinear, for overlaying on the input
    saliency: torch.Tensor  # (C, H, W), |d y_t / d x|


def _conv_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def map_layers(model: nn.Module) -> list[str]:
    """Convolution and pooling layers (their outputs are feature maps). The default for Grad-CAM is the
    last of them: usually the last block's pooled, activated maps, where the class evidence is."""
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    names = [n for n, m in model.named_modules() if isinstance(m, kinds)]
    last_conv = max(i for i, n in enumerate(names) if isinstance(dict(model.named_modules())[n], nn.Conv2d))
    # global pooling leaves a 1x1 map: no place to point at, so stop at the last spatial one
    keep = [n for n in names if not (isinstance(dict(model.named_modules())[n], nn.AdaptiveAvgPool2d))]
    return keep if keep and names.index(keep[-1]) >= last_conv else names[: last_conv + 1]


def _batched(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image, (C, H, W) or (1, C, H, W), got shape {tuple(x.shape)}")
    return x


def gradcam(model: nn.Module, x: torch.Tensor, layer: str | None = None, target: int | None = None) -> torch.Tensor:
    """Grad-CAM map (h, w) of class ``target`` (default: the predicted one) at convolution or pooling
    ``layer`` (default: the last one with a spatial map). See :func:`explain` for everything at once."""
    return explain(model, x, layer, target).cam


def saliency(model: nn.Module, x: torch.Tensor, target: int | None = None) -> torch.Tensor:
    """|d logit_target / d x| for one image, shaped like it (C, H, W)."""
    x = _batched(x).detach().clone().requires_grad_()
    was = model.training
    model.eval()
    try:
        logits = model(x)
        t = int(logits[0].argmax()) if target is None else _check_target(target, logits.shape[1])
        (grad,) = torch.autograd.grad(logits[0, t], x)
    finally:
        model.train(was)
    return grad[0].abs()


def _check_target(target: int, classes: int) -> int:
    if not 0 <= int(target) < classes:
        raise ValueError(f"target must be a class index in 0..{classes - 1}, got {target}")
    return int(target)


def explain(model: nn.Module, x: torch.Tensor, layer: str | None = None, target: int | None = None) -> Attribution:
    """Grad-CAM at ``layer`` (a convolution or pooling layer; default: the last with a spatial map)
    and the input saliency of one image, for class ``target`` (default: the predicted one).

    Example::

        >>> a = cnnlab.analysis.explain(run.model, x)          # the predicted class, the last conv layer
        >>> cnnlab.plot_attribution(image, a)
    """
    convs = _conv_layers(model)
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer: Grad-CAM needs one")
    choices = map_layers(model)
    layer = layer or choices[-1]
    modules = dict(model.named_modules())
    if layer not in choices:
        raise ValueError(f"no convolution or pooling layer named {layer!r}; layers with feature maps: {', '.join(choices)}")
    x = _batched(x).detach().clone().requires_grad_()
    seen: dict[str, torch.Tensor] = {}
    hook = modules[layer].register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))
    was = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        hook.remove()
        model.train(was)
    t = int(logits[0].argmax()) if target is None else _check_target(target, logits.shape[1])
    activation = seen["a"]  # (1, K, h, w)
    grad_a, grad_x = torch.autograd.grad(logits[0, t], (activation, x))
    weights = grad_a.mean((2, 3), keepdim=True)  # (1, K, 1, 1)
    cam = F.relu((weights * activation).sum(1))[0].detach()  # (h, w)
    up = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return Attribution(t, torch.softmax(logits[0].detach().float(), 0), layer, cam, up, grad_x[0].abs().detach())
