#!/usr/bin/env python3
"""Render a report.html in headless Chromium, save a screenshot, and check the page is not blank.

Usage:  python scripts/screenshot_report.py RUN_DIR/report.html [--out shot.png] [--height 4000]
        (needs Chromium: `apt-get install -y chromium` on Debian; exit 0 = rendered with figures)

The page must open from disk with no network: Chromium runs with networking side-channels off
and a throwaway profile. "Not blank" means real contrast (pixel standard deviation) and enough
strongly coloured pixels, which only the embedded figures produce: a page whose images failed to
load is text on white and fails the check.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MIN_STD = 20.0
"""Grey-level standard deviation (0-255) below which the screenshot counts as blank."""
MIN_COLOURFUL = 0.01
"""Share of pixels with strong saturation that the figures must bring (text and tables have ~0)."""


def find_browser() -> str | None:
    return next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 4000, browser: str | None = None) -> None:
    """Chromium's own --screenshot of ``page`` at width x height pixels (the top of the page)."""
    browser = browser or find_browser()
    if browser is None:
        raise SystemExit("no Chromium found: install it with `apt-get install -y chromium`")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={width},{height}",
             page.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )


def measure(png: Path) -> tuple[float, float]:
    """(grey-level standard deviation, share of strongly coloured pixels) of a screenshot."""
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    grey = rgb.mean(axis=2)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    return float(grey.std()), float((saturation > 80).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="report.html to render")
    parser.add_argument("--out", type=Path, default=None, help="screenshot file (default: beside the page)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=4000, help="viewport height: the figures must start inside it")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(f"no such page: {args.page}", file=sys.stderr)
        return 2
    out = args.out or args.page.with_name("report-screenshot.png")
    figures = args.page.read_text(encoding="utf-8").count('<img src="data:image/png;base64,')
    screenshot(args.page, out, args.width, args.height)
    std, colourful = measure(out)
    need_colour = MIN_COLOURFUL if figures else 0.0  # a run with nothing finished has no figures to show
    verdict = "ok" if std >= MIN_STD and colourful >= need_colour else "BLANK"
    print(f"{out}: {verdict} ({figures} embedded figure(s); grey std={std:.1f}, colourful={colourful:.4f}; "
          f"need std >= {MIN_STD}, colourful >= {need_colour})")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
