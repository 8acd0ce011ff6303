"""The web playground at `/`: one static page (no build step), told where the API lives and
whether it needs a key."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

PAGE = Path(__file__).parent / "static" / "index.html"

# NOTE: the page's script and styles are inline; nothing else may load or be fetched.
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; media-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@cache
def _template() -> str:
    return PAGE.read_text(encoding="utf-8")


def page(root_path: str, keys_required: bool) -> str:
    """The page for an app mounted at `root_path` (Serve's route prefix)."""
    base = html.escape(root_path.rstrip("/") + "/", quote=True)
    return (
        _template().replace("{{BASE}}", base).replace("{{KEYS}}", "on" if keys_required else "off")
    )
