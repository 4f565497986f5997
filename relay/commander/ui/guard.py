"""The dashboard's door: which session a request carries, whether a state change is same-site, and the
headers every dashboard answer wears.

A state-changing request (cancel, submit, logout) must carry the session's CSRF token (header
``X-CSRF-Token``, or form field ``csrf`` for plain HTML forms) and, when the browser says where it
comes from (``Origin``, ``Sec-Fetch-Site``), come from the commander's own origin.  The session cookie
is ``SameSite=Strict`` as well, so a cross-site request arrives without it in the first place: three
locks, each enough on its own.
"""

from __future__ import annotations

from aiohttp import web

from relay.commander.ui.sessions import COOKIE, COOKIE_PATH, Session, same_token

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"

#: Scripts, styles and connections only from the commander itself; no framing, no inline script.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class Refused(Exception):
    """A request the dashboard refuses; becomes a JSON (or HTML) answer with ``http_status``."""

    def __init__(self, http_status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code


def harden(response: web.StreamResponse, *, cache: bool = False) -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    if not cache:
        response.headers["Cache-Control"] = "no-store"
    return response


def set_session_cookie(response: web.StreamResponse, request: web.Request, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        session.token,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def clear_cookie(response: web.StreamResponse, name: str = COOKIE) -> None:
    response.del_cookie(name, path=COOKIE_PATH)


def own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def check_same_site(request: web.Request) -> None:
    """Refuse a request the browser marks as coming from another site (Origin / Sec-Fetch-Site)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != own_origin(request):
        raise Refused(403, "cross_site", f"cross-site request refused (Origin {origin!r})")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise Refused(403, "cross_site", f"cross-site request refused (Sec-Fetch-Site {fetch_site})")


async def check_csrf(request: web.Request, session: Session) -> None:
    """A state change: same site, and the session's CSRF token in the header or the form."""
    check_same_site(request)
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not same_token(given, session.csrf):
        raise Refused(403, "csrf", "missing or wrong CSRF token: reload the page and try again")
