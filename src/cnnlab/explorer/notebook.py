"""The explorer from Python: a server in a background thread, shown inline in Jupyter.

    >>> page = cnnlab.explore(result)      # a RunResult, a run folder, or a loaded Run
    >>> page.url                           # http://127.0.0.1:<free port>/
    >>> page.stop()

One explorer at a time: a second call stops the first (no leaked servers or ports).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

__all__ = ["ExplorerPage", "explore"]

_current: ExplorerPage | None = None


class ExplorerPage:
    """A running explorer: its address, an inline view (an IFrame) and :meth:`stop`."""

    def __init__(self, url: str, server, thread: threading.Thread, height: int):
        self.url, self._server, self._thread, self.height = url, server, thread, height

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and free its port."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def show(self) -> None:
        """Display the page inline (Jupyter)."""
        from IPython.display import HTML, display

        display(HTML(self.html()))

    def html(self) -> str:
        if not self.running:
            return f"<p>cnnlab explorer at {self.url} (stopped)</p>"
        return (f"<iframe src='{self.url}' width='100%' height='{self.height}' style='border:1px solid #ddd'></iframe>"
                f"<p><a href='{self.url}' target='_blank'>{self.url}</a> (stop with .stop())</p>")

    def __repr__(self) -> str:
        return f"ExplorerPage({self.url!r}, {'running' if self.running else 'stopped'})"


def explore(run, model=None, data_dir: str | None = None, port: int = 0, height: int = 760, display: bool = True) -> ExplorerPage:
    """Serve the explorer for ``run`` on 127.0.0.1 in the background and show it inline in Jupyter.

    Args:
        run: a run folder, a :class:`cnnlab.train.RunResult` or a :class:`cnnlab.Run`.
        model: the architecture, for a run whose model was defined in Python (a notebook).
        port: 0 picks a free port.
        display: show the page inline (in Jupyter) right away.

    Returns:
        an :class:`ExplorerPage` (``.url``, ``.show()``, ``.stop()``).
    """
    global _current
    import uvicorn

    from .server import create_app, open_socket

    folder = Path(getattr(run, "folder", run))
    if model is None:
        model = getattr(run, "model", None) if getattr(run, "meta", {}).get("model", "").startswith("python:") else None
    if _current is not None:
        _current.stop()
        _current = None
    app = create_app(folder, data_dir, model)
    sock = open_socket("127.0.0.1", port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="cnnlab-explorer")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"the explorer did not start for {folder}")
    _current = ExplorerPage(f"http://127.0.0.1:{sock.getsockname()[1]}/", server, thread, height)
    if display:
        from ..train.report import in_notebook

        if in_notebook():
            _current.show()
    return _current
