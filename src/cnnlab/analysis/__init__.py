"""cnnlab.analysis: per-layer summary (shapes, parameters, multiply-adds) and receptive fields of any nn.Module."""

from .attribution import Attribution, explain, gradcam, saliency
from .patches import TopPatch, top_patches
from .receptive import Field, FieldTracker
from .summary import RENDERERS, LayerRow, Summary, receptive_field_for_unit, summary, to_csv, to_json, to_markdown, to_table
from .unit import unit_computation, unit_text

__all__ = ["RENDERERS", "Attribution", "Field", "FieldTracker", "LayerRow", "Summary", "receptive_field_for_unit", "explain", "gradcam", "saliency", "summary", "to_csv",
           "to_json", "to_markdown", "to_table", "top_patches", "TopPatch",
           "unit_computation", "unit_text"]
