"""The dashboard's files: read once from the package at start-up, served from memory by name.

Serving from a table of names read at start-up (rather than joining a URL path onto a directory) makes
path traversal impossible by construction: ``/ui/static/../../state.db`` or ``%2e%2e%2f`` are simply not
names in the table.  Every file ships inside the package (no build step, no CDN); the charts and the
timeline are drawn as SVG by ``js/chart.js`` and ``js/timeline.js``, so there is no charting library.

Only :data:`PUBLIC` files are served without a session: what the login page itself needs.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
PUBLIC = frozenset({"style.css", "favicon.svg"})
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
TEMPLATES = ("app.html", "login.html")  # pages, rendered with values; never served as files


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    content_type: str
    etag: str
    public: bool


def load_assets(root: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every servable file under ``root`` by its relative name (``js/app.js``); templates excluded."""
    table: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if not path.is_file() or path.suffix not in TYPES or name in TEMPLATES:
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        table[name] = Asset(name, body, TYPES[path.suffix], etag, name in PUBLIC)
    return table


def load_template(name: str, root: Path = STATIC_DIR) -> str:
    return (root / name).read_text(encoding="utf-8")


def render(template: str, **values: str) -> str:
    """Fill ``{{name}}`` placeholders with HTML-escaped values (the only dynamic part of a page)."""
    out = template
    for key, value in values.items():
        out = out.replace("{{" + key + "}}", html.escape(value, quote=True))
    return out
