"""Take docs/status-page.png: `docgen-monitor demo` on a free port, Debian's chromium through
Playwright (pip install -e '.[test]'; apt-get install chromium), one full-page screenshot once
the page shows running batches and a failure group. Run from the repository root:

    .venv/bin/python docs/screenshot.py
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
OUT = Path(__file__).parent / "status-page.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    port = free_port()
    demo = subprocess.Popen(  # noqa: S603 - our own console script, fixed arguments
        [sys.executable, "-m", "monitor.cli", "demo", "--port", str(port), "--duration", "120"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for _ in range(30):
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except Exception:  # not listening yet
                    page.wait_for_timeout(500)
            expect(page.locator(".failure-group").nth(2)).to_be_visible(timeout=90_000)
            expect(page.locator("tr.batch").nth(1)).to_be_visible(timeout=30_000)
            page.locator(".failure-group details").first.evaluate("d => d.open = true")
            page.screenshot(path=str(OUT), full_page=True)
            browser.close()
    finally:
        demo.terminate()
        demo.wait(30)
    print(OUT)


if __name__ == "__main__":
    main()
