"""How one value is computed (CNN Explainer's best idea, for any model): for one output unit of a
convolution or pooling layer, the input window of every input channel, the kernel, their
elementwise products, the sums, the bias and the result, which equals the model's own activation.

    convolution   out[c, i, j] = bias[c] + sum_{c' in c's group} sum_{u, v} x_pad[c', i*s + u*d, j*s + v*d] * w[c, c', u, v]
    max pooling   out[c, i, j] = max of the (dilated) window of channel c, padding counted as -inf
    avg pooling   out[c, i, j] = sum of the window / its divisor (padding zeros, count_include_pad, ceil_mode, divisor_override)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["unit_computation", "unit_text"]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def unit_computation(model: nn.Module, x: torch.Tensor, layer: str, unit: tuple[int, int], channel: int) -> dict:
    """The computation of ``layer``'s output ``[channel, unit[0], unit[1]]`` for the one image ``x``.

    Returns a dict: ``kind`` ("conv", "max" or "avg"), ``window`` (input channels, kh, kw), ``kernel``
    (same shape, conv only), ``products``, ``channel_sums``, ``bias``, ``result`` (recomputed here),
    ``activation`` (what the model computed), ``input_channels`` (indices of the window's channels).
    """
    modules = dict(model.named_modules())
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    choices = [n for n, m in modules.items() if isinstance(m, kinds)]
    if layer not in choices:
        raise ValueError(f"no convolution or pooling layer named {layer!r}; choose one of: {', '.join(choices) or '(none)'}")
    module = modules[layer]
    x = x.unsqueeze(0) if x.dim() == 3 else x
    seen: dict[str, torch.Tensor] = {}
    hook = module.register_forward_hook(lambda m, i, o: seen.update(input=i[0].detach(), output=o.detach()))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
        model.train(was)
    inp, out = seen["input"][0], seen["output"][0]  # (C_in, H, W), (C_out, h, w)
    i, j = unit
    if not 0 <= channel < out.shape[0]:
        raise ValueError(f"channel must be in 0..{out.shape[0] - 1} for layer {layer!r}, got {channel}")
    if not (0 <= i < out.shape[1] and 0 <= j < out.shape[2]):
        raise ValueError(f"unit ({i}, {j}) is outside layer {layer!r}'s output of size {out.shape[1]}x{out.shape[2]} (indices from 0)")
    if isinstance(module, nn.Conv2d):
        return _conv_unit(module, inp, out, i, j, channel)
    return _pool_unit(module, inp, out, i, j, channel)


def _window(inp: torch.Tensor, i: int, j: int, kernel, stride, padding, dilation, fill: float) -> torch.Tensor:
    """The (C, kh, kw) window behind output (i, j), padding filled with ``fill``."""
    c, h, w = inp.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    rows = torch.arange(kh) * dh + i * sh - ph
    cols = torch.arange(kw) * dw + j * sw - pw
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    window = inp[:, rows.clamp(0, h - 1)][:, :, cols.clamp(0, w - 1)]
    return torch.where(inside, window, torch.full_like(window, fill)), inside


def _conv_unit(module: nn.Conv2d, inp, out, i, j, channel) -> dict:
    if module.padding_mode != "zeros" or isinstance(module.padding, str) and module.padding == "same" and any(
            k % 2 == 0 for k in module.kernel_size):
        raise ValueError(f"the computation view supports zero padding with explicit sizes, got padding={module.padding!r}, "
                         f"padding_mode={module.padding_mode!r}")
    padding = tuple((d * (k - 1)) // 2 for k, d in zip(module.kernel_size, module.dilation)) if module.padding == "same" else \
        (0, 0) if module.padding == "valid" else _pair(module.padding)
    per_group = module.in_channels // module.groups
    group = channel // (module.out_channels // module.groups)
    channels = list(range(group * per_group, (group + 1) * per_group))
    window, _ = _window(inp[channels], i, j, module.kernel_size, module.stride, padding, module.dilation, 0.0)
    kernel = module.weight.detach()[channel].to(window.dtype)  # (C/G, kh, kw)
    products = window * kernel
    sums = products.sum((1, 2))
    bias = 0.0 if module.bias is None else float(module.bias.detach()[channel])
    return {"kind": "conv", "window": window, "kernel": kernel, "products": products, "channel_sums": sums, "bias": bias,
            "result": float(sums.sum()) + bias, "activation": float(out[channel, i, j]), "input_channels": channels}


def _pool_unit(module, inp, out, i, j, channel) -> dict:
    kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
    padding = _pair(module.padding)
    if isinstance(module, nn.MaxPool2d):
        window, _ = _window(inp[[channel]], i, j, kernel, stride, padding, _pair(module.dilation), float("-inf"))
        result = float(window.max())
        return {"kind": "max", "window": window, "result": result, "activation": float(out[channel, i, j]), "input_channels": [channel]}
    window, inside = _window(inp[[channel]], i, j, kernel, stride, padding, (1, 1), 0.0)
    h, w = inp.shape[1:]
    if module.divisor_override:
        divisor = module.divisor_override
    elif module.count_include_pad:  # padding counts, but not what ceil_mode lets hang past it
        rows = torch.arange(kernel[0]) + i * stride[0] - padding[0]
        cols = torch.arange(kernel[1]) + j * stride[1] - padding[1]
        divisor = int(((rows < h + padding[0]).sum()) * ((cols < w + padding[1]).sum()))
    else:
        divisor = int(inside.sum())
    result = float(window.sum()) / divisor
    return {"kind": "avg", "window": window, "divisor": divisor, "result": result, "activation": float(out[channel, i, j]),
            "input_channels": [channel]}


def unit_text(c: dict, digits: int = 3) -> str:
    """The computation written out, as a terminal shows it."""
    def grid(t: torch.Tensor) -> str:
        return "\n".join("      " + " ".join(f"{v:>{digits + 6}.{digits}f}" for v in row) for row in t.tolist())

    lines = []
    if c["kind"] == "conv":
        for n, ch in enumerate(c["input_channels"]):
            lines += [f"  input channel {ch}: window", grid(c["window"][n]), "    kernel", grid(c["kernel"][n]),
                      "    products", grid(c["products"][n]), f"    sum {float(c['channel_sums'][n]):.{digits + 3}f}"]
        lines.append(f"  sum over {len(c['input_channels'])} channel(s) {float(c['channel_sums'].sum()):.{digits + 3}f} + bias "
                     f"{c['bias']:.{digits + 3}f} = {c['result']:.{digits + 3}f}")
    else:
        lines += [f"  channel {c['input_channels'][0]}: window", grid(c["window"][0])]
        how = "max" if c["kind"] == "max" else f"sum / {c['divisor']}"
        lines.append(f"  {how} = {c['result']:.{digits + 3}f}")
    lines.append(f"  the model's activation: {c['activation']:.{digits + 3}f}")
    return "\n".join(lines)
