"""cnnlab.explorer: a local web page to look inside a trained model (FastAPI + static files in the package)."""

from .server import MAX_UPLOAD_BYTES, create_app, serve

__all__ = ["MAX_UPLOAD_BYTES", "create_app", "serve"]
