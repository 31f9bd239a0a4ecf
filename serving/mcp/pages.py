"""Plain server-rendered HTML for the sign-in and consent pages: escaped values, no scripts, no
external assets, and headers that keep the pages out of frames and caches."""

from __future__ import annotations

from html import escape

from fastapi.responses import HTMLResponse

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;
color:#1c1c1c;line-height:1.45}
h1{font-size:1.4rem}fieldset{border:1px solid #ccc;border-radius:6px;margin:1rem 0}
label{display:block;margin:.35rem 0}input[type=text],input[type=email],input[type=password],
input[type=number]{width:100%;padding:.45rem;box-sizing:border-box}
button{padding:.55rem 1.1rem;margin-right:.5rem;border-radius:6px;border:1px solid #444;
cursor:pointer}button.primary{background:#1c1c1c;color:#fff}.error{color:#a40000}
.muted{color:#666;font-size:.9rem}code{background:#f2f2f2;padding:0 .2rem}
"""


def html_page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    """A complete page around already-escaped `body` HTML."""
    document = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
                f"<meta name=viewport content='width=device-width,initial-scale=1'>"
                f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
                f"<body>{body}</body></html>")
    return HTMLResponse(document, status_code=status_code, headers=PAGE_HEADERS)


def error_html(message: str | None) -> str:
    return f"<p class=error role=alert>{escape(message)}</p>" if message else ""


def hidden(name: str, value: str) -> str:
    return f"<input type=hidden name='{escape(name)}' value='{escape(value)}'>"


def message_page(title: str, message: str, status_code: int) -> HTMLResponse:
    return html_page(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>", status_code)
