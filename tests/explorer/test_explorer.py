"""cnnlab explore: the API through FastAPI's test client, a real server under concurrent requests, and
an end-to-end run in real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from cnnlab.explorer import MAX_UPLOAD_BYTES, create_app
from cnnlab.train import fit, resolve_config

FIXTURES = Path(__file__).parent.parent / "fixtures"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lenet-modern"
    config = resolve_config("lenet-modern", dataset="fashion-mnist", data_dir=str(FIXTURES), epochs=2, batch_size=32,
                            augment=False, out=str(out))
    return fit(config, quiet=True).folder


@pytest.fixture(scope="module")
def client(run):
    from fastapi.testclient import TestClient

    return TestClient(create_app(run, data_dir=str(FIXTURES)))


def png_bytes(size=(28, 28), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


def test_info_describes_the_run(client):
    info = client.get("/api/info").json()
    assert info["model"] == "lenet-modern" and len(info["classes"]) == 10 and info["can_draw"]
    assert [layer["name"] for layer in info["layers"]] == ["0", "3", "4", "7"]
    assert info["layers"][1]["size"] == [6.0, 6.0] and len(info["history"]) == 2 and info["test_images"] == 200


def test_prediction_for_a_test_image_is_the_models(client, run):
    from cnnlab.data import Batches, load_dataset
    from cnnlab.train import load_run_model

    model, meta = load_run_model(run)
    data = load_dataset("fashion-mnist", FIXTURES, fetch=False)
    x, _, _ = next(Batches(data.test_images[5:6], data.test_labels[5:6], 1, mean=meta["mean"], std=meta["std"],
                           normalize=meta["normalize"]).epoch(0))
    result = client.post("/api/predict/test/5").json()
    assert result["prediction"]["index"] == int(model(x).argmax())
    assert abs(sum(p["probability"] for p in result["probabilities"]) - 1) < 1e-5
    assert [len(layer["maps"]) for layer in result["layers"]] == [32, 32, 64, 64]
    assert result["layers"][0]["maps"][0].startswith("data:image/png;base64,")


def test_browse_by_class(client):
    listing = client.get("/api/test-images?label=3&limit=5").json()
    assert len(listing["images"]) == 5 and {i["label"] for i in listing["images"]} == {3}
    assert client.get("/api/test-image/0.png").headers["content-type"] == "image/png"
    assert client.get("/api/test-image/9999.png").status_code == 404


def test_upload_of_a_real_image_of_any_size(client):
    response = client.post("/api/predict/upload", files={"file": ("photo.jpg", png_bytes((300, 200), "RGB"), "image/jpeg")})
    assert response.status_code == 200, response.json()
    assert response.json()["prediction"]["class"]


@pytest.mark.parametrize(("files", "status", "reason"), [
    ({"file": ("evil.png", b"#!/bin/sh\necho not an image\n", "image/png")}, 415, "not an image"),
    ({"file": ("empty.png", b"", "image/png")}, 422, "empty"),
    ({"other": ("x.png", png_bytes(), "image/png")}, 422, "field named 'file'"),
])
def test_bad_uploads_get_a_json_reason(client, files, status, reason):
    response = client.post("/api/predict/upload", files=files)
    assert response.status_code == status and reason in response.json()["detail"]


def test_oversize_upload_is_refused(client):
    big = png_bytes() + b"\0" * (MAX_UPLOAD_BYTES + 1)
    response = client.post("/api/predict/upload", files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 413 and "too large" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py",
                                  "/static/%2e%2e%2f%2e%2e%2fpyproject.toml", "/static//etc/passwd", "/api/curves.png/../../config.json"])
def test_no_path_traversal(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert b"import" not in response.content and b"root:" not in response.content


def test_kernels_of_a_channel(client):
    kernels = client.get("/api/kernels/0/3").json()
    assert kernels["shape"] == [1, 5, 5] and len(kernels["kernels"]) == 1
    assert client.get("/api/kernels/3/0").status_code == 404  # a pooling layer
    assert client.get("/api/kernels/0/99").status_code == 404


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_activation(run, index: int, layer: str, channel: int, unit: tuple[int, int]) -> float:
    """The run's model on test image ``index``, read at one unit by a forward hook (independent of the explorer)."""
    import torch

    from cnnlab.data import Batches, load_dataset
    from cnnlab.train import load_run_model

    model, meta = load_run_model(run)
    data = load_dataset("fashion-mnist", FIXTURES, fetch=False)
    x, _, _ = next(Batches(data.test_images[index : index + 1], data.test_labels[index : index + 1], 1, mean=meta["mean"],
                           std=meta["std"], normalize=meta["normalize"]).epoch(0))
    seen = {}
    hook = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        model.eval()(x)
    hook.remove()
    return float(seen["out"][0, channel, unit[0], unit[1]])


def test_top_patches_of_a_channel(client):
    answer = client.get("/api/patches/3/5?k=4").json()
    assert answer["layer"] == "3" and answer["channel"] == 5 and len(answer["patches"]) == 4
    activations = [p["activation"] for p in answer["patches"]]
    assert activations == sorted(activations, reverse=True)
    first = answer["patches"][0]
    assert first["patch"].startswith("data:image/png;base64,") and 0 <= first["rows"][0] <= first["rows"][1] <= 27
    assert client.get("/api/patches/9/0").status_code == 404  # not a layer with feature maps
    assert "0..31" in client.get("/api/patches/0/99").json()["detail"]


def test_explanation_of_a_picture_names_class_and_layer(client):
    predicted = client.post("/api/predict/test/3").json()
    assert predicted["picture"] == "test-3"
    a = client.get("/api/explain/test-3").json()
    assert a["target"] == predicted["prediction"]["index"] and a["layer"] == "7" and a["gradcam"].startswith("data:image/png")
    assert client.get("/api/explain/test-3?target=2&layer=0").json()["target"] == 2
    assert client.get("/api/explain/test-3?target=10").status_code == 422
    assert client.get("/api/explain/upload-999").status_code == 404
    upload = client.post("/api/predict/upload", files={"file": ("x.png", png_bytes(), "image/png")}).json()
    assert upload["picture"].startswith("upload-") and client.get(f"/api/explain/{upload['picture']}").status_code == 200


def test_unit_computation_equals_the_models_activation(client, run):
    for layer, channel, unit in (("0", 4, (10, 11)), ("3", 7, (2, 3)), ("4", 1, (0, 4)), ("7", 0, (1, 1))):
        u = client.get(f"/api/unit/test-5/{layer}/{channel}/{unit[0]}/{unit[1]}").json()
        expected = model_activation(run, 5, layer, channel, unit)
        assert u["activation"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
        assert u["result"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert "outside" in client.get("/api/unit/test-5/0/0/99/0").json()["detail"]


@pytest.fixture(scope="module")
def server(run):
    """The real command, `cnnlab explore`, in a subprocess on loopback."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "explore", str(run), "--port", str(port), "--data-dir", str(FIXTURES)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "api/info", timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"explorer did not start: {proc.communicate()[0]}")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_several_requests_at_once(server):
    def ask(i):
        request = urllib.request.Request(server + f"api/predict/test/{i}", method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            return i, json.loads(response.read())["prediction"]["index"]

    with ThreadPoolExecutor(8) as pool:
        first = dict(pool.map(ask, [i % 4 for i in range(16)]))
        again = dict(pool.map(ask, range(4)))
    assert first == again  # the same answers, whatever the interleaving


def test_page_end_to_end_in_chromium(server, run, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root with apt)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server)
        page.wait_for_selector("#thumbs img")
        page.select_option("#class-filter", "7")
        page.wait_for_function("[...document.querySelectorAll('#thumbs img')].length > 2 && "
                               "[...document.querySelectorAll('#thumbs img')].every(img => img.dataset.label === '7')")
        thumb = page.locator("#thumbs img").nth(2)
        index = int(thumb.get_attribute("data-index"))
        thumb.click()
        page.wait_for_function(f"document.querySelector('#prediction').dataset.source === 'test:{index}'")
        shown = page.locator("#prediction").get_attribute("data-class")
        page.locator(".layer img").nth(3).click()
        page.wait_for_selector("#kernels img")
        assert "channel 3" in page.locator("#detail-title").inner_text()
        page.locator("#detail-map").scroll_into_view_if_needed()
        box = page.locator("#detail-map").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.4)
        assert page.locator("#field-overlay").get_attribute("data-unit")
        # what the channel responds to: its top test patches
        page.wait_for_function("document.querySelector('#patches').dataset.ready === '0:3'")
        assert page.locator("#patches img").count() == 8
        # how one value is computed: click a unit; the view's sum equals the activation the server reports
        page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.7)
        page.wait_for_selector("#unit-box:not([hidden])")
        result = page.locator("#unit-result")
        page.wait_for_function("document.querySelector('#unit-result').dataset.unit !== undefined")
        layer, channel, unit = result.get_attribute("data-unit").split(":")
        i, j = (int(v) for v in unit.split(","))
        assert (layer, channel) == ("0", "3") and page.locator("#unit-view table").count() == 3  # window, kernel, products
        reported = float(result.get_attribute("data-activation"))
        assert float(result.get_attribute("data-result")) == pytest.approx(reported, rel=1e-4, abs=1e-5)
        assert reported == pytest.approx(model_activation(run, index, "0", 3, (i, j)), rel=1e-6, abs=1e-6)
        # why this class: Grad-CAM for the predicted class, then for another chosen in the selector
        page.wait_for_function(f"document.querySelector('#cam-note').dataset.picture === 'test-{index}'")
        assert page.locator("#cam-class").input_value() == page.locator("#cam-note").get_attribute("data-target")
        page.select_option("#cam-class", "2")
        page.wait_for_function("document.querySelector('#cam-note').dataset.target === '2'")
        assert page.evaluate("document.querySelector('#cam-image').naturalWidth") > 0
        shot = tmp_path / "explorer.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    # the same image through the command line
    image = tmp_path / "test-image.png"
    with urllib.request.urlopen(server + f"api/test-image/{index}.png") as response:
        image.write_bytes(response.read())
    out = subprocess.run([sys.executable, "-m", "cnnlab", "predict", str(run), str(image), "--json"], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["predictions"][0]["class"] == shown


def test_explore_from_python_runs_in_the_background_and_a_second_call_replaces_the_first(run):
    import cnnlab

    first = cnnlab.explore(run, data_dir=str(FIXTURES), display=False)
    with urllib.request.urlopen(first.url + "api/info") as response:
        assert json.load(response)["model"] == "lenet-modern"
    second = cnnlab.explore(run, data_dir=str(FIXTURES), display=False)
    try:
        assert not first.running and second.running and second.url != first.url
        with pytest.raises(OSError):
            urllib.request.urlopen(first.url + "api/info", timeout=5)  # the first server is gone, its port closed
        with urllib.request.urlopen(second.url + "api/info") as response:
            assert json.load(response)["test_images"] == 200
    finally:
        second.stop()
    assert not second.running
