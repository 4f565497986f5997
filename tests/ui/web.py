"""Small HTTP helpers for the dashboard tests: log in, read a page's CSRF token, send raw request lines."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from aiohttp.test_utils import TestClient

from relay.commander.ui.sessions import COOKIE, LOGIN_COOKIE

SECRET = "ui-secret-0123456789"
_META = re.compile(r'<meta name="csrf-token" content="([^"]*)">')
_LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]*)"')


@dataclass
class Login:
    """A logged-in browser as the tests see it: its session cookie and the CSRF token of its pages."""

    token: str
    csrf: str

    @property
    def cookie(self) -> dict[str, str]:
        return {"Cookie": f"{COOKIE}={self.token}"}


def set_cookie(resp, name: str) -> str | None:
    """The value a response sets for cookie ``name`` (None when it sets none)."""
    for header in resp.headers.getall("Set-Cookie", []):
        if header.startswith(f"{name}="):
            return header.split(";", 1)[0].split("=", 1)[1]
    return None


async def login_form(client: TestClient) -> str:
    """GET the login page; returns its login token (also set as the login cookie)."""
    resp = await client.get("/ui/login", allow_redirects=False)
    assert resp.status == 200, await resp.text()
    token = _LOGIN_TOKEN.search(await resp.text()).group(1)
    assert set_cookie(resp, LOGIN_COOKIE) == token
    return token


async def post_login(client: TestClient, secret: str, *, token: str | None = None, next_: str = "/ui/"):
    token = token if token is not None else await login_form(client)
    return await client.post(
        "/ui/login",
        data={"secret": secret, "login_token": token, "next": next_},
        headers={"Cookie": f"{LOGIN_COOKIE}={token}"},
        allow_redirects=False,
    )


async def page_csrf(client: TestClient, token: str) -> str:
    resp = await client.get("/ui/", headers={"Cookie": f"{COOKIE}={token}"}, allow_redirects=False)
    assert resp.status == 200, resp.status
    return _META.search(await resp.text()).group(1)


async def login(client: TestClient, secret: str = SECRET) -> Login:
    resp = await post_login(client, secret)
    assert resp.status == 303, await resp.text()
    token = set_cookie(resp, COOKIE)
    assert token
    return Login(token, await page_csrf(client, token))


async def raw_get(client: TestClient, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of '..' or %2e); (status, body)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def open_session(client: TestClient) -> Login:
    """The session a commander without a secret hands out on the first page."""
    resp = await client.get("/ui/", allow_redirects=False)
    assert resp.status == 200, resp.status
    token = set_cookie(resp, COOKIE)
    assert token
    return Login(token, _META.search(await resp.text()).group(1))
