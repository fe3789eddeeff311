"""Per-layer summary of any ``nn.Module``: shapes, parameters, multiply-adds, receptive fields.

Collect (one forward pass with hooks), compute (rows of plain data), render (table, CSV, JSON,
markdown) are kept apart, as torchinfo does.

Multiply-adds per layer type, for one input of the given size:

    ConvNd       prod(output spatial) * C_out * (C_in / groups) * prod(kernel)
    Linear       in_features * out_features (times any leading positions)
    BatchNormNd  one per output element (the folded scale-and-shift)
    others       0 (pooling, activations, concatenation: comparisons and additions only)
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .receptive import FieldTracker, window_geometry

__all__ = ["LayerRow", "Summary", "receptive_field_for_unit", "summary"]


@dataclass
class LayerRow:
    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...]
    params: int
    trainable: int
    mult_adds: int
    kernel: tuple | None = None
    stride: tuple | None = None
    padding: tuple | None = None
    dilation: tuple | None = None
    receptive_field: tuple[float, ...] | None = None  # per spatial axis, input pixels
    jump: tuple[float, ...] | None = None  # effective stride
    start: tuple[float, ...] | None = None  # input coordinate of the first unit's centre


@dataclass
class Summary:
    model: str
    input_size: tuple[int, ...]
    rows: list[LayerRow]
    totals: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return to_table(self)

    def to_table(self) -> str:
        return to_table(self)

    def to_html(self) -> str:
        return to_html(self)

    def _repr_html_(self) -> str:  # Jupyter shows the table as HTML
        return to_html(self)

    def to_markdown(self) -> str:
        return to_markdown(self)

    def to_csv(self) -> str:
        return to_csv(self)

    def to_json(self) -> str:
        return to_json(self)


def _mult_adds(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return output[0].numel()
    return 0


def _parse_size(input_size) -> tuple[int, ...]:
    if isinstance(input_size, str):
        try:
            input_size = tuple(int(v) for v in input_size.lower().split("x"))
        except ValueError:
            raise ValueError(f"input size must look like 1x28x28 (channels x height x width), got {input_size!r}") from None
    input_size = tuple(input_size)
    if len(input_size) < 2 or any(v < 1 for v in input_size):
        raise ValueError(f"input size must be (channels, *spatial) with positive sizes, got {input_size}")
    return input_size


def _forward(model: nn.Module, x: torch.Tensor, tracker: FieldTracker, records: dict, order: list) -> None:
    """Run the model once, recording each module's output and field; name the layer where shapes break."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[tuple[str, nn.Module, tuple]] = []

    def pre(module, args):
        stack.append((names[module], module, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))))

    def post(module, args, output):
        stack.pop()
        if isinstance(output, torch.Tensor):
            records[names[module]] = (module, output, tracker.field(output))
            order.append(names[module])

    tracker.watch(model)  # first, so its hooks set each output's field before ours read it
    handles = [m.register_forward_pre_hook(pre) for m in model.modules()] + [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.no_grad(), tracker:
            model(x)
    except Exception as err:
        if stack:
            name, module, shapes = stack[-1]
            raise ValueError(f"input size {tuple(x.shape[1:])} does not fit the model: layer {name!r} "
                             f"({type(module).__name__}) got input of shape {shapes[0] if shapes else '?'}: {err}") from None
        raise
    finally:
        for h in handles:
            h.remove()
        tracker.remove()


def summary(model: nn.Module, input_size, depth: int | None = None, device: str | torch.device = "cpu") -> Summary:
    """One row per leaf module (or per module at ``depth``, its children folded in), plus totals.

    Args:
        model: any ``nn.Module`` taking one (N, C, *spatial) tensor.
        input_size: (C, H, W) or a string like ``"1x28x28"`` (no batch axis).
        depth: show modules at this nesting depth (1 = the model's direct children), leaves above it.
    """
    input_size = _parse_size(input_size)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_size, device=device)
    dims = len(input_size) - 1
    tracker = FieldTracker(x, dims)
    records: dict = {}
    order: list[str] = []
    try:
        _forward(model, x, tracker, records, order)
    finally:
        model.train(was_training)
    rows = _rows(model, records, order, depth, dims)
    return Summary(type(model).__name__, input_size, rows, _totals(model, records, rows, x))


def _rows(model, records, order, depth, dims) -> list[LayerRow]:
    leaves = {n for n, m in model.named_modules() if n and not any(True for _ in m.children())}
    rows = []
    for name in order:
        if not name:
            continue
        level = name.count(".") + 1
        module, output, fld = records[name]
        leaf = name in leaves
        if depth is None and not leaf:
            continue
        if depth is not None and not (level == depth or (leaf and level < depth)):
            continue
        params = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        sub = [records[n] for n in records if n == name or n.startswith(name + ".")]
        madds = sum(_mult_adds(m, o) for m, o, _ in sub if not any(True for _ in m.children()))
        geometry = window_geometry(module, tuple(output.shape[-dims:])) if output.dim() > dims else None
        rows.append(LayerRow(name, type(module).__name__, level, tuple(output.shape[1:]), params, trainable, madds,
                             *(geometry if geometry else (None,) * 4),
                             receptive_field=fld.size if fld else None, jump=fld.jump if fld else None,
                             start=fld.start if fld else None))
    return rows


def _totals(model, records, rows, x) -> dict:
    params = sum(p.numel() for p in model.parameters())
    leaves = [(m, o) for m, o, _ in records.values() if not any(True for _ in m.children())]
    activations = sum(o.numel() * o.element_size() for _, o in leaves)
    return {
        "params": params,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "non_trainable": params - sum(p.numel() for p in model.parameters() if p.requires_grad),
        "mult_adds": sum(_mult_adds(m, o) for m, o in leaves),
        "activation_bytes": activations,
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())
        + sum(b.numel() * b.element_size() for b in model.buffers()),
        "input_bytes": x.numel() * x.element_size(),
    }


def receptive_field_for_unit(model: nn.Module, input_size, layer: str, index) -> dict:
    """The input rectangle that can affect output unit ``index`` (spatial indices) of module ``layer``.

    Returns ``{"clipped": [(lo, hi) per axis, ints inside the image], "unclipped": [(lo, hi) floats],
    "size": ..., "jump": ..., "start": ...}``.
    """
    input_size = _parse_size(input_size)
    x = torch.zeros(1, *input_size)
    dims = len(input_size) - 1
    tracker = FieldTracker(x, dims)
    records: dict = {}
    was_training = model.training
    model.eval()
    try:
        _forward(model, x, tracker, records, [])
    finally:
        model.train(was_training)
    if layer not in records:
        raise ValueError(f"no layer named {layer!r}; layers: {', '.join(n for n in records if n)}")
    _, output, fld = records[layer]
    spatial_out = tuple(output.shape[-dims:]) if output.dim() > dims else ()
    index = tuple(index)
    if not spatial_out:
        spatial = [n for n, (_, out, _) in records.items() if n and out.dim() > dims + 1]
        raise ValueError(f"layer {layer!r} ({type(records[layer][0]).__name__}) has no spatial output (shape "
                         f"{tuple(output.shape[1:])}): each of its units sees the whole input; a unit needs a layer with "
                         f"feature maps: {', '.join(spatial)}")
    if len(index) != dims:
        raise ValueError(f"a unit of layer {layer!r} needs {dims} indices (its output is {'x'.join(map(str, spatial_out))}), got {index}")
    if any(not 0 <= i < n for i, n in zip(index, spatial_out)):
        raise ValueError(f"unit {index} is outside layer {layer!r}'s output of spatial size {'x'.join(map(str, spatial_out))} "
                         f"(indices from 0)")
    if fld is None or fld.whole:
        full = [(0, n - 1) for n in input_size[1:]]
        return {"clipped": full, "unclipped": [(float(a), float(b)) for a, b in full], "whole": True}
    unclipped, clipped = fld.rectangle(index, input_size[1:])
    return {"clipped": clipped, "unclipped": unclipped, "size": fld.size, "jump": fld.jump, "start": fld.start, "whole": False}


# --- renderers ---------------------------------------------------------------------------------


def _fmt_tuple(values, digits: int = 0) -> str:
    if values is None:
        return ""
    return "x".join(f"{v:.{digits}f}" if isinstance(v, float) and not float(v).is_integer() else f"{int(v)}" for v in values)


COLUMNS = ("layer", "type", "output shape", "params", "mult-adds", "kernel/stride/pad/dil", "receptive field", "jump", "start")


def _cells(row: LayerRow) -> list[str]:
    geometry = "" if row.kernel is None else f"{_fmt_tuple(row.kernel)}/{_fmt_tuple(row.stride)}/{_fmt_tuple(row.padding)}/{_fmt_tuple(row.dilation)}"
    return ["  " * (row.depth - 1) + row.name, row.type, _fmt_tuple(row.output_shape), f"{row.params:,}", f"{row.mult_adds:,}",
            geometry, _fmt_tuple(row.receptive_field, 1), _fmt_tuple(row.jump, 2), _fmt_tuple(row.start, 1)]


def _totals_lines(s: Summary) -> list[str]:
    t = s.totals
    return [f"params: {t['params']:,} ({t['trainable']:,} trainable, {t['non_trainable']:,} not)",
            f"mult-adds: {t['mult_adds']:,} per input of size {_fmt_tuple(s.input_size)}",
            f"memory: activations {t['activation_bytes'] / 2**20:.2f} MiB per input (one forward pass), "
            f"parameters and buffers {t['param_bytes'] / 2**20:.2f} MiB"]


def to_table(s: Summary) -> str:
    """A fixed-width text table with a totals footer."""
    cells = [list(COLUMNS)] + [_cells(r) for r in s.rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    right = {3, 4}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in cells]
    rule = "-" * len(lines[0])
    return "\n".join([f"{s.model} on input {_fmt_tuple(s.input_size)}", rule, lines[0], rule, *lines[1:], rule, *_totals_lines(s)])


def to_markdown(s: Summary) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    out += ["| " + " | ".join(c.strip() for c in _cells(r)) + " |" for r in s.rows]
    return "\n".join(out + [""] + [f"- {line}" for line in _totals_lines(s)])


def to_csv(s: Summary) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "type", "output_shape", "params", "trainable", "mult_adds", "kernel", "stride", "padding",
                     "dilation", "receptive_field", "jump", "start"])
    for r in s.rows:
        writer.writerow([r.name, r.type, _fmt_tuple(r.output_shape), r.params, r.trainable, r.mult_adds, _fmt_tuple(r.kernel),
                         _fmt_tuple(r.stride), _fmt_tuple(r.padding), _fmt_tuple(r.dilation), _fmt_tuple(r.receptive_field, 1),
                         _fmt_tuple(r.jump, 2), _fmt_tuple(r.start, 1)])
    return buf.getvalue()


def to_json(s: Summary) -> str:
    return json.dumps({"model": s.model, "input_size": s.input_size, "rows": [asdict(r) for r in s.rows], "totals": s.totals}, indent=1)


def to_html(s: Summary) -> str:
    """An HTML table (what Jupyter shows), numbers right-aligned, with the totals below."""
    from html import escape

    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    right = {3, 4}
    body = "".join("<tr>" + "".join(f"<td style='text-align:{'right' if i in right else 'left'};white-space:pre'>{escape(c)}</td>"
                                    for i, c in enumerate(_cells(r))) + "</tr>" for r in s.rows)
    totals = "<br>".join(escape(line) for line in _totals_lines(s))
    return (f"<div class='cnnlab-summary'><b>{escape(s.model)} on input {escape(_fmt_tuple(s.input_size))}</b>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table><p>{totals}</p></div>")


RENDERERS = {"table": to_table, "csv": to_csv, "json": to_json, "markdown": to_markdown}
