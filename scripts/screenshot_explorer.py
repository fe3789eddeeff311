"""Take a screenshot of `cnnlab explore RUN` in headless Chromium (for the README).

    python scripts/screenshot_explorer.py RUN OUT.png [--test-index K] [--channel C]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("out")
    parser.add_argument("--class-index", type=int, default=9)
    parser.add_argument("--channel", type=int, default=4)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "cnnlab", "explore", args.run, "--port", str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "api/info", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.wait_for_selector("#thumbs img")
            page.select_option("#class-filter", str(args.class_index))
            page.wait_for_timeout(500)
            index = page.locator("#thumbs img").first.get_attribute("data-index")
            page.locator("#thumbs img").first.click()
            page.wait_for_function(f"document.querySelector('#prediction').dataset.source === 'test:{index}'")
            page.locator(".layer").nth(2).locator("img").nth(args.channel).click()  # the second convolution
            page.wait_for_timeout(500)
            box = page.locator("#detail-map").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.45)
            page.wait_for_timeout(200)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait()
    print(args.out)


if __name__ == "__main__":
    main()
