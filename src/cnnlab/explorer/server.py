"""The explorer's web server: a FastAPI app over one run folder (CNN Explainer, for your own model).

    GET  /                          the page (static files shipped in the package; no CDN, no build step)
    GET  /api/info                  model, classes, input size, layers with receptive fields, summary, curves
    GET  /api/test-images           test images by class (indices and labels)
    GET  /api/test-image/{i}.png    one test image
    POST /api/predict/test/{i}      prediction and every conv/pool layer's feature maps for a test image
    POST /api/predict/upload        the same for an uploaded image (also the drawing canvas), at most 5 MB,
                                    accepted only if its content decodes as an image
    GET  /api/kernels/{layer}/{c}   the kernels that produced channel c of a convolution layer
    GET  /api/patches/{layer}/{c}   what channel c responds to: its top-k test images, the patch under the
                                    receptive field of the most active unit, the activation (one pass, cached)
    GET  /api/explain/{picture}     why this class: Grad-CAM (?layer=) and saliency for class ?target= (default:
                                    the predicted one) over a picture a prediction named ("test-12", "upload-3")
    GET  /api/unit/{picture}/{layer}/{c}/{i}/{j}
                                    how one value is computed: window, kernel, products, sums, bias, result,
                                    and the activation the model itself computed
    GET  /api/curves.png            the run's training curves

Activations are computed here, with the run's own model. Errors are JSON: ``{"detail": reason}``.
"""

from __future__ import annotations

import base64
import csv
import io
import itertools
import math
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from torch import nn

__all__ = ["MAX_UPLOAD_BYTES", "create_app"]

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
KEPT_UPLOADS = 32  # uploads the explanation and computation views can still refer to
STATIC = Path(__file__).parent / "static"


def _png(array: torch.Tensor) -> bytes:
    """(H, W) float or (C, H, W) uint8 -> PNG bytes (floats scaled to 0..255 on their own range)."""
    from PIL import Image

    if array.dtype != torch.uint8:
        lo, hi = array.min(), array.max()
        array = ((array - lo) / (hi - lo + 1e-12) * 255).round().to(torch.uint8)
    np_image = array.numpy() if array.dim() == 2 else (array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    Image.fromarray(np_image).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class Explorer:
    """The run's model, data and precomputed facts; thread-safe forward passes."""

    def __init__(self, run: str | Path, data_dir: str | None = None, model: nn.Module | None = None):
        from ..analysis import summary
        from ..data import load_dataset
        from ..train import load_run_model
        from ..viz.inside import window_layers

        self.run = Path(run)
        self.model, self.meta = load_run_model(self.run, model=model)
        self.size = self.meta["image_size"]
        self.channels = self.meta["in_channels"]
        self.layers = window_layers(self.model)
        self.summary = summary(self.model, (self.channels, self.size, self.size))
        self.fields = {r.name: {"size": r.receptive_field, "jump": r.jump, "start": r.start} for r in self.summary.rows}
        try:
            self.data = load_dataset(self.meta["dataset"], data_dir, fetch=False, image_size=self.size)
        except (FileNotFoundError, ValueError):
            self.data = None  # uploads and drawings still work
        self.lock = threading.RLock()
        self.uploads: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.upload_ids = itertools.count(1)
        self.patches: dict[str, dict] = {}  # layer -> top patches of every channel (one pass over the test set)

    def info(self) -> dict:
        from ..analysis.attribution import map_layers

        rows = [{"name": r.name, "type": r.type, "output_shape": list(r.output_shape), "params": r.params, "mult_adds": r.mult_adds,
                 "receptive_field": r.receptive_field, "jump": r.jump} for r in self.summary.rows]
        history = []
        metrics = self.run / "metrics.csv"
        if metrics.is_file():
            history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(metrics.open())]
        return {"model": self.meta["model"], "dataset": self.meta["dataset"], "classes": self.meta["classes"],
                "input_size": [self.channels, self.size, self.size], "can_draw": self.channels == 1 and self.size <= 64,
                "layers": [{"name": n, "type": type(dict(self.model.named_modules())[n]).__name__, **self.fields.get(n, {})}
                           for n in self.layers],
                "cam_layers": map_layers(self.model), "summary": rows, "totals": self.summary.totals, "history": history,
                "test_images": 0 if self.data is None else len(self.data.test_labels)}

    def model_input(self, picture: torch.Tensor) -> torch.Tensor:
        """(C, S, S) uint8 -> (1, C, S, S), preprocessed as in training."""
        from ..data import preprocess

        return preprocess(picture[None], self.meta["mean"], self.meta["std"], self.meta["normalize"], None)

    def keep_upload(self, picture: torch.Tensor) -> str:
        """Remember an uploaded picture (the last KEPT_UPLOADS) under a new id."""
        with self.lock:
            key = f"upload-{next(self.upload_ids)}"
            self.uploads[key] = picture
            while len(self.uploads) > KEPT_UPLOADS:
                self.uploads.popitem(last=False)
        return key

    def forward(self, picture: torch.Tensor, max_maps: int = 64, picture_id: str | None = None) -> dict:
        """Prediction and feature maps for one (C, S, S) uint8 picture."""
        from ..viz.inside import activations

        x = self.model_input(picture)
        with self.lock:
            logits, maps = activations(self.model, x, self.layers)
        probs = torch.softmax(logits.float(), 0)
        layers = []
        for name in self.layers:
            fmap = maps[name]
            layers.append({"name": name, "shape": list(fmap.shape), **self.fields.get(name, {}),
                           "maps": [_data_url(_png(fmap[c].float())) for c in range(min(max_maps, fmap.shape[0]))]})
        order = probs.argsort(descending=True)
        return {"input": _data_url(_png(picture)), "picture": picture_id,
                "prediction": {"class": self.meta["classes"][int(order[0])], "index": int(order[0]), "probability": float(probs[order[0]])},
                "probabilities": [{"class": self.meta["classes"][i], "probability": float(probs[i])} for i in range(len(probs))],
                "layers": layers}

    @torch.no_grad()
    def kernels(self, layer: str, channel: int) -> dict:
        module = dict(self.model.named_modules()).get(layer)
        if not isinstance(module, nn.Conv2d):
            convs = [n for n, m in self.model.named_modules() if isinstance(m, nn.Conv2d)]
            raise KeyError(f"{layer!r} is not a convolution layer; convolution layers: {', '.join(convs)}")
        if not 0 <= channel < module.out_channels:
            raise IndexError(f"channel must be in 0..{module.out_channels - 1}, got {channel}")
        weight = module.weight[channel].detach().cpu()  # (C_in/groups, kh, kw)
        limit = float(weight.abs().max()) or 1.0
        tiles = [_data_url(_png(((w / limit + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))) for w in weight[:64]]
        return {"layer": layer, "channel": channel, "shape": list(weight.shape), "scale": limit, "kernels": tiles,
                "bias": None if module.bias is None else float(module.bias[channel])}

    def top_patches(self, layer: str, channel: int, k: int = 8) -> dict:
        """What ``channel`` of ``layer`` responds to: its top-k test images and their patches."""
        from ..analysis.patches import top_patches
        from ..data import Batches

        if self.data is None:
            raise LookupError("the run's test images are not available on this machine")
        self._check_layer(layer)
        with self.lock:
            if self.patches.get(layer, {}).get("k", 0) < k:
                batches = Batches(self.data.test_images, self.data.test_labels, 512, mean=self.meta["mean"], std=self.meta["std"],
                                  normalize=self.meta["normalize"], image_size=self.size)
                self.patches[layer] = {"k": k, "channels": top_patches(self.model, batches.epoch(0), layer, k=k)}
        channels = self.patches[layer]["channels"]
        if not 0 <= channel < len(channels):
            raise IndexError(f"channel must be in 0..{len(channels) - 1} for layer {layer!r}, got {channel}")
        items = []
        for patch in channels[channel][:k]:
            (r0, r1), (c0, c1) = patch.rectangle
            crop = self.data.test_images[patch.image][:, r0 : r1 + 1, c0 : c1 + 1]
            items.append({"image": patch.image, "label": self.meta["classes"][int(self.data.test_labels[patch.image])],
                          "activation": patch.activation, "unit": list(patch.unit), "rows": [r0, r1], "cols": [c0, c1],
                          "clipped": patch.clipped, "patch": _data_url(_png(crop))})
        return {"layer": layer, "channel": channel, "patches": items}

    def picture(self, key: str) -> torch.Tensor:
        """A picture a prediction named: "test-<index>" or "upload-<n>" (one of the last KEPT_UPLOADS)."""
        if key.startswith("test-") and key[5:].isdigit() and self.data is not None:
            index = int(key[5:])
            if index < len(self.data.test_labels):
                return self.test_picture(index)
        with self.lock:
            if key in self.uploads:
                return self.uploads[key]
        raise LookupError(f"no picture {key!r}: predict a test image or upload one first (the last {KEPT_UPLOADS} uploads are kept)")

    def test_picture(self, index: int) -> torch.Tensor:
        picture = self.data.test_images[index]
        if picture.shape[-1] != self.size:
            resized = torch.nn.functional.interpolate(picture[None].float(), size=(self.size, self.size), mode="bilinear",
                                                      align_corners=False, antialias=self.size < picture.shape[-1])
            picture = resized[0].round().clamp(0, 255).to(torch.uint8)
        return picture

    def explain(self, key: str, target: int | None, layer: str | None) -> dict:
        """Grad-CAM and saliency of a picture for a class, as overlays."""
        from ..analysis.attribution import explain

        picture = self.picture(key)
        with self.lock:
            a = explain(self.model, self.model_input(picture), layer=layer or None, target=target)
        return {"picture": key, "target": a.target, "class": self.meta["classes"][a.target], "layer": a.layer,
                "probability": float(a.probabilities[a.target]), "cam_max": float(a.cam.max()),
                "cam_size": list(a.cam.shape), "gradcam": _data_url(_overlay(picture, a.cam_upsampled)),
                "saliency": _data_url(_overlay(picture, a.saliency.amax(0), alpha=0.75))}

    def unit(self, key: str, layer: str, channel: int, i: int, j: int) -> dict:
        """How output [channel, i, j] of ``layer`` is computed for a picture, and what the model computed there."""
        from ..analysis.unit import unit_computation

        picture = self.picture(key)
        self._check_layer(layer)
        with self.lock:
            c = unit_computation(self.model, self.model_input(picture), layer, (i, j), channel)
        listed = {k: _json_numbers(v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in c.items()}
        return {"picture": key, "layer": layer, "channel": channel, "unit": [i, j], **listed}

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise KeyError(f"no convolution or pooling layer named {layer!r}; choose one of: {', '.join(self.layers)}")


def _json_numbers(value):
    """Nested lists with non-finite floats (a max pool's -inf padding) as None, which JSON can carry."""
    if isinstance(value, list):
        return [_json_numbers(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _overlay(picture: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> bytes:
    """A heat map (H, W), scaled to its own maximum, coloured (inferno) over the gray picture: PNG bytes."""
    from matplotlib import colormaps
    from PIL import Image

    gray = picture.float().mean(0, keepdim=True).repeat(3, 1, 1) / 255  # (3, H, W)
    heat = heat.detach().float()
    heat = heat / heat.max() if heat.max() > 0 else heat
    colour = torch.from_numpy(colormaps["inferno"](heat.numpy())[..., :3]).permute(2, 0, 1).float()
    blend = ((1 - alpha) * gray + alpha * colour).clamp(0, 1)
    image = Image.fromarray((blend * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    if image.width < 64:  # small inputs: enlarge with sharp pixels, so the browser does not blur them
        image = image.resize((image.width * 4, image.height * 4), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decode_upload(content: bytes, channels: int, size: int) -> torch.Tensor:
    """Decode an upload by its content (not its name) to (channels, size, size) uint8; ValueError if it is no image."""
    from ..data import DataFormatError, ImageTooLargeError, read_image

    try:
        return read_image(io.BytesIO(content), channels, (size, size))
    except ImageTooLargeError as err:
        raise ValueError(f"the upload is an image, but too large to decode safely: {str(err).split('(', 1)[-1].rstrip(')')}") from None
    except DataFormatError:
        raise ValueError("the upload is not an image Pillow can decode") from None


def create_app(run: str | Path, data_dir: str | None = None, model: nn.Module | None = None):
    """The FastAPI application for one run folder (``model``: the architecture of a run defined in Python)."""
    explorer = Explorer(run, data_dir, model)
    app = FastAPI(title=f"cnnlab explore {Path(run).name}", docs_url=None, redoc_url=None)
    app.state.explorer = explorer
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info():
        return explorer.info()

    def test_picture(index: int) -> torch.Tensor:
        if explorer.data is None:
            raise HTTPException(404, "the run's test images are not available on this machine")
        if not 0 <= index < len(explorer.data.test_labels):
            raise HTTPException(404, f"test image index must be in 0..{len(explorer.data.test_labels) - 1}, got {index}")
        return explorer.test_picture(index)

    @app.get("/api/test-images")
    def test_images(label: int | None = None, offset: int = 0, limit: int = 48):
        if offset < 0 or limit < 1:
            raise HTTPException(422, f"offset must be >= 0 and limit >= 1, got offset={offset}, limit={limit}")
        if explorer.data is None:
            return {"images": [], "total": 0}
        labels = explorer.data.test_labels
        indices = torch.arange(len(labels)) if label is None else torch.nonzero(labels == label).flatten()
        chosen = indices[offset : offset + max(1, min(limit, 200))]
        return {"images": [{"index": int(i), "label": int(labels[i])} for i in chosen], "total": len(indices)}

    @app.get("/api/test-image/{index}.png")
    def test_image(index: int):
        return Response(_png(test_picture(index)), media_type="image/png")

    @app.post("/api/predict/test/{index}")
    def predict_test(index: int):
        result = explorer.forward(test_picture(index), picture_id=f"test-{index}")
        result["label"] = explorer.meta["classes"][int(explorer.data.test_labels[index])]
        return result

    @app.post("/api/predict/upload")
    async def predict_upload(request: Request):
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_UPLOAD_BYTES + 64 * 1024:  # the multipart envelope adds a little
            raise HTTPException(413, f"upload too large: {declared} bytes, at most {MAX_UPLOAD_BYTES} allowed")
        form = await request.form(max_files=1, max_fields=4, max_part_size=MAX_UPLOAD_BYTES + 1)
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise HTTPException(422, "send the image as a multipart form field named 'file'")
        content = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(content) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"upload too large: more than {MAX_UPLOAD_BYTES} bytes")
        if not content:
            raise HTTPException(422, "the upload is empty")
        try:
            picture = decode_upload(content, explorer.channels, explorer.size)
        except ValueError as err:
            raise HTTPException(415, str(err)) from None
        return explorer.forward(picture, picture_id=explorer.keep_upload(picture))

    @app.get("/api/kernels/{layer}/{channel}")
    def kernels(layer: str, channel: int):
        try:
            return explorer.kernels(layer, channel)
        except (KeyError, IndexError) as err:
            raise HTTPException(404, err.args[0]) from None

    @app.get("/api/patches/{layer}/{channel}")
    def patches(layer: str, channel: int, k: int = 8):
        if not 1 <= k <= 32:
            raise HTTPException(422, f"k must be in 1..32, got {k}")
        try:
            return explorer.top_patches(layer, channel, k)
        except LookupError as err:  # KeyError and IndexError included
            raise HTTPException(404, err.args[0]) from None

    @app.get("/api/explain/{picture}")
    def explain(picture: str, target: int | None = None, layer: str | None = None):
        try:
            return explorer.explain(picture, target, layer)
        except LookupError as err:
            raise HTTPException(404, err.args[0]) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None

    @app.get("/api/unit/{picture}/{layer}/{channel}/{i}/{j}")
    def unit(picture: str, layer: str, channel: int, i: int, j: int):
        try:
            return explorer.unit(picture, layer, channel, i, j)
        except LookupError as err:  # KeyError and IndexError included
            raise HTTPException(404, err.args[0]) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None

    @app.get("/api/curves.png")
    def curves():
        path = explorer.run / "curves.png"
        if not path.is_file():
            raise HTTPException(404, "this run has no curves.png")
        return FileResponse(path, media_type="image/png")

    @app.exception_handler(Exception)
    async def unexpected(request, err):  # a JSON answer rather than a bare 500 page
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    return app


def open_socket(host: str, port: int):
    """Bind the listening socket first, so a bad address or a busy port is one clear ValueError."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ValueError(f"--host {host!r} is not an address of this machine ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        hint = "choose another --port, or --port 0 for any free one" if err.errno == 98 else "check --host and --port"
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror}; {hint}") from None
    sock.listen(128)
    return sock


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8765, data_dir: str | None = None) -> None:
    """Start the explorer with uvicorn (blocking) and print its address."""
    import uvicorn

    sock = open_socket(host, port)
    app = create_app(run, data_dir)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"cnnlab explore: serving {run} at http://{shown}:{bound}/ (Ctrl-C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
