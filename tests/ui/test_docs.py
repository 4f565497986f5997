"""The README shows the run page as the browser tests see it: the image exists and is their screenshot."""

from __future__ import annotations

import re
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_shows_a_screenshot_taken_by_the_browser_tests() -> None:
    readme = (REPO / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", readme)
    assert "docs/dashboard-run-page.png" in images
    data = (REPO / "docs" / "dashboard-run-page.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1440 and height > 1000  # tests/ui/browser.py's window, the whole page
    assert 'screenshot(driver, "run-page-handoff")' in (REPO / "tests" / "ui" / "test_browser.py").read_text()
