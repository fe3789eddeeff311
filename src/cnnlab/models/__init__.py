"""cnnlab.models: the chapter's networks by name, built on cnnlab.nn layers."""

from .registry import create_model, list_models, model_info, register_model

__all__ = ["create_model", "list_models", "model_info", "register_model"]
