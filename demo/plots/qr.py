"""QR codes a teacher can project: one for a link to the view, one for the page's own address. A
phone's camera opens them; nobody types a 600-character link from a slide. Drawn by segno as inline
SVG (sharp at any size); the addresses shown under them are escaped."""

from __future__ import annotations

import html
import ipaddress
from urllib.parse import urlsplit

import segno

from demo.core.errors import ValidationError
from demo.core.validation import well_formed

# A QR code holds at most 2,953 bytes (version 40, low error correction); past ~1,200 a code is too
# dense for a phone to read from a projected slide, so a longer link gets only the page's code.
MAX_QR_BYTES = 1_200
MAX_URL_CHARS = 40_000  # what the server reads at all (a link is at most 32,000 characters, plus its address)


def page_address(url: str) -> str:
    """The page's own address: the link without its fragment (the view)."""
    return url.split("#", 1)[0]


def check_url(url) -> str:
    """The URL the page sent: an http(s) address, else a clear error."""
    if not isinstance(url, str) or not url.strip():
        raise ValidationError("copy a link first: the QR codes show the link and the page's address")
    url = well_formed(url.strip())
    if len(url) > MAX_URL_CHARS:
        raise ValidationError(f"the link is too long for a QR code ({len(url):,} characters)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a malformed address, such as an unclosed [IPv6 host
        raise ValidationError(f"this is not an address a QR code can open: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("a QR code is made for the page's own http(s) address only")
    return url


def only_this_computer(url: str) -> bool:
    """Whether the address reaches only the computer it was opened on (localhost, 127.x, 0.0.0.0, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def qr_svg(text: str) -> str:
    """An SVG QR code of ``text``, sized by the page's CSS (no width or height of its own)."""
    return segno.make(text, micro=False).svg_inline(scale=1, border=4, omitsize=True, dark="#000", light="#fff")


def _card(svg: str, title: str, address: str) -> str:
    return (f"<figure class='qr'>{svg}<figcaption><b>{html.escape(title)}</b><br>"
            f"<span class='qr-address'>{html.escape(address)}</span></figcaption></figure>")


def qr_codes_html(url: str) -> str:
    """The QR codes of a link (when it is short enough to scan) and of the page's address, with a warning
    when the address reaches only this computer."""
    url = check_url(url)
    page = page_address(url)
    cards = []
    if url != page and len(url.encode()) <= MAX_QR_BYTES:
        cards.append(_card(qr_svg(url), "This view (the link)", url if len(url) <= 120 else url[:117] + "…"))
    cards.append(_card(qr_svg(page), "The page", page))
    notes = []
    if url != page and len(url.encode()) > MAX_QR_BYTES:
        notes.append(f"The link is too long to scan from a slide ({len(url):,} characters): the code opens the "
                     "page; share the link itself in a chat, or shorten the prompt.")
    if only_this_computer(url):
        notes.append("⚠️ This address opens the app only on this computer: students' phones cannot reach it. Start "
                     "the app with <code>--host 0.0.0.0</code> and open it at this computer's network address "
                     "(or <code>--share</code>, or a Space), then copy the link again.")
    note = "".join(f"<p class='qr-note'>{n}</p>" for n in notes)
    return f"<div class='qr-codes'>{''.join(cards)}</div>{note}"
