"""Plain server-rendered HTML for the sign-in and consent pages: escaped values, no scripts, no
inline styles (one same-origin stylesheet), and headers that keep the pages out of frames and
caches."""

from __future__ import annotations

from html import escape

from fastapi.responses import HTMLResponse

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    # Not `no-referrer`: under it browsers send `Origin: null` with the page's own form POSTs,
    # which the cross-site check (`signin.from_this_site`) must refuse.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

STYLESHEET = "/dashboard/static/signin.css"


def html_page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    """A complete page around already-escaped `body` HTML."""
    document = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
                f"<meta name=viewport content='width=device-width,initial-scale=1'>"
                f"<title>{escape(title)}</title><link rel=stylesheet href='{STYLESHEET}'></head>"
                f"<body>{body}</body></html>")
    return HTMLResponse(document, status_code=status_code, headers=PAGE_HEADERS)


def error_html(message: str | None) -> str:
    return f"<p class=error role=alert>{escape(message)}</p>" if message else ""


def hidden(name: str, value: str) -> str:
    return f"<input type=hidden name='{escape(name)}' value='{escape(value)}'>"


def message_page(title: str, message: str, status_code: int) -> HTMLResponse:
    return html_page(title, f"<h1>{escape(title)}</h1><p>{escape(message)}</p>", status_code)
