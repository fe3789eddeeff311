"""cnnlab.explorer: a local web page to look inside a trained model (FastAPI + static files in the package)."""

from .notebook import ExplorerPage, explore
from .server import MAX_UPLOAD_BYTES, create_app, serve

__all__ = ["MAX_UPLOAD_BYTES", "ExplorerPage", "create_app", "explore", "serve"]
