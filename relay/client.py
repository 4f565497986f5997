"""The commander HTTP client: the only place in relay-trainer that knows the commander's URLs.

Each call makes a single attempt and turns every failure into a
:class:`CommanderError` subclass whose ``str()`` is one line a person can act on;
the caller owns retry timing (see :func:`retry`).  Answers are parsed with the
models of ``relay.schema``, the same ones the commander answers with.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from relay.ids import id_problem
from relay.schema import (
    CLOSED_STATUSES,
    AcquireDenied,
    AcquireGranted,
    AcquireRequest,
    ErrorResponse,
    HealthResponse,
    LogsResponse,
    ReleaseRequest,
    ReleaseResponse,
    RenewRequest,
    RenewResponse,
    ReportRequest,
    ReportResponse,
    RunDetail,
    RunList,
    RunSpec,
    RunStatus,
    RunSummary,
)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class CommanderError(Exception):
    """Base of every client error; ``str()`` is one actionable line."""


class CommanderUnreachable(CommanderError):
    """Connection refused, timeout, a 5xx, or an answer that is not the commander's: worth retrying."""


class Unauthorized(CommanderError):
    """401: the shared secret is missing or wrong."""


class Fenced(CommanderError):
    """409 on renew/release/report: this lease is no longer the run's current one; stop writing."""


class LeaseHeld(CommanderError):
    """409 on acquire: another worker holds a live lease."""

    def __init__(self, message: str, holder: str | None, retry_after_s: float) -> None:
        super().__init__(message)
        self.holder = holder
        self.retry_after_s = retry_after_s


class RunClosed(CommanderError):
    """409: the run is completed or cancelled, or can never be granted again (``status`` says which)."""

    def __init__(self, message: str, status: RunStatus | None) -> None:
        super().__init__(message)
        self.status = status


class NoWaitingRun(CommanderError):
    """404 on acquire without a run id: no run waits for a worker (of this mode)."""


class NotFound(CommanderError):
    """404: no such run."""


class SpecConflict(CommanderError):
    """409 on submit: the run id exists with a different spec (``differs`` names the keys)."""

    def __init__(self, message: str, differs: list[str]) -> None:
        super().__init__(message)
        self.differs = differs


class BadRequest(CommanderError):
    """400/413/422: the commander rejected the request; ``field`` names what was wrong."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


class CommanderClient:
    """Async client for one commander.  Use as ``async with CommanderClient(url, secret) as c:``."""

    def __init__(
        self,
        base_url: str,
        secret: str | None = None,
        *,
        timeout_s: float = 5.0,
        secret_hint: str = "set RELAY_SHARED_SECRET or pass --secret with the commander's secret",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"commander URL must start with http:// or https:// (got {base_url!r})")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.secret_hint = secret_hint  # what the caller's user can do about a 401 (flags differ per tool)
        self._headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CommanderClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ API

    async def health(self) -> HealthResponse:
        status, body = await self._call("GET", "/api/health")
        self._raise_common(status, body)
        return self._parse(HealthResponse, body)

    async def acquire(self, req: AcquireRequest) -> AcquireGranted:
        """Raises LeaseHeld, RunClosed, NoWaitingRun (and the common errors).  A long poll (``wait_s``)
        gets that much longer to answer; unset fields are not sent, so a commander that predates a field
        is only sent it when it is used (and answers 422 naming it: ``BadRequest.field``)."""
        wait = req.wait_s or 0.0
        status, body = await self._call(
            "POST", "/api/lease/acquire", req, exclude_none=True, timeout_s=self.timeout_s + wait
        )
        if status == 409:
            denied = self._parse(AcquireDenied, body)
            # a closed run, or a failed one nobody holds: it can never be granted again (its epoch is exhausted)
            if denied.status in CLOSED_STATUSES or (
                denied.holder is None and denied.status is RunStatus.failed
            ):
                raise RunClosed(denied.detail or f"run {req.run_id} is {denied.status}", denied.status)
            raise LeaseHeld(
                denied.detail or f"run {req.run_id} is held by {denied.holder}",
                denied.holder,
                denied.retry_after_s,
            )
        if status == 404:
            raise NoWaitingRun(self._message(body, "no run is waiting for a worker"))
        self._raise_common(status, body)
        return self._parse(AcquireGranted, body)

    async def renew(self, req: RenewRequest) -> RenewResponse:
        """Raises Fenced when the lease is no longer current."""
        status, body = await self._call("POST", "/api/lease/renew", req)
        self._raise_fenced(status, body)
        self._raise_common(status, body)
        return self._parse(RenewResponse, body)

    async def release(self, req: ReleaseRequest) -> ReleaseResponse:
        """Raises Fenced when the lease is no longer current."""
        status, body = await self._call("POST", "/api/lease/release", req)
        self._raise_fenced(status, body)
        self._raise_common(status, body)
        return self._parse(ReleaseResponse, body)

    async def report(self, run_id: str, req: ReportRequest) -> ReportResponse:
        """Raises Fenced when the lease is no longer current."""
        status, body = await self._call("POST", f"/api/runs/{self._id(run_id)}/report", req)
        self._raise_fenced(status, body)
        self._raise_common(status, body)
        return self._parse(ReportResponse, body)

    async def get_run(self, run_id: str) -> RunDetail:
        status, body = await self._call("GET", f"/api/runs/{self._id(run_id)}")
        self._raise_common(status, body)
        return self._parse(RunDetail, body)

    async def list_runs(self) -> list[RunSummary]:
        status, body = await self._call("GET", "/api/runs")
        self._raise_common(status, body)
        return self._parse(RunList, body).runs

    async def cancel(self, run_id: str) -> RunSummary:
        """Raises NotFound, or RunClosed when the run already completed."""
        status, body = await self._call("POST", f"/api/runs/{self._id(run_id)}/cancel")
        if status == 409:
            err = self._error(body)
            raise RunClosed(
                err.error if err else f"run {run_id} cannot be cancelled", err.status if err else None
            )
        self._raise_common(status, body)
        return self._parse(RunSummary, body)

    async def submit_run(self, spec: RunSpec) -> tuple[RunDetail, bool]:
        """Submit a run spec: (the run, True when it was created; False: the same spec was there already).

        Raises SpecConflict when the run id exists with another spec, BadRequest for an invalid one.
        """
        status, body = await self._call("POST", "/api/runs", spec, exclude_unset=True)
        if status == 409:
            err = self._error(body)
            detail = err.detail if err is not None and isinstance(err.detail, dict) else {}
            differs = [str(k) for k in detail.get("differs", [])]
            raise SpecConflict(err.error if err else f"run {spec.run_id} exists with another spec", differs)
        self._raise_common(status, body)
        return self._parse(RunDetail, body), status == 201

    async def get_logs(
        self, run_id: str, since: int | None = None, *, limit: int | None = None, tail: int | None = None
    ) -> LogsResponse:
        """A page of the run's log timeline after the cursor ``since`` (``next_cursor`` of the last page)."""
        query = {k: str(v) for k, v in (("since", since), ("limit", limit), ("tail", tail)) if v is not None}
        status, body = await self._call("GET", f"/api/runs/{self._id(run_id)}/logs", params=query)
        self._raise_common(status, body)
        return self._parse(LogsResponse, body)

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _id(run_id: str) -> str:
        """Check an id before it goes into a URL path, where '..' would be resolved away."""
        reason = id_problem(run_id)
        if reason is not None:
            raise BadRequest(400, "run_id", f"run_id: {reason} (got {run_id!r})")
        return run_id

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # One connection per call (force_close): calls are seconds apart, and a pooled keep-alive
            # connection would be dead after a commander restart, failing the first call after it.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers=self._headers,
                connector=aiohttp.TCPConnector(force_close=True),
            )
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        body: BaseModel | None = None,
        *,
        params: dict[str, str] | None = None,
        exclude_unset: bool = False,
        exclude_none: bool = False,
        timeout_s: float | None = None,
    ) -> tuple[int, bytes]:
        data = (
            body.model_dump_json(exclude_unset=exclude_unset, exclude_none=exclude_none).encode()
            if body is not None
            else None
        )
        headers = {"Content-Type": "application/json"} if data is not None else None
        url = self.base_url + path
        # a call's own limit when given (a long poll), else the session's (None would mean no limit at all)
        extra = {"timeout": aiohttp.ClientTimeout(total=timeout_s)} if timeout_s is not None else {}
        try:
            async with self._session_now().request(
                method, url, data=data, headers=headers, params=params, **extra
            ) as resp:
                payload = await resp.read()
                status = resp.status
        except asyncio.TimeoutError:
            limit = timeout_s if timeout_s is not None else self.timeout_s
            raise CommanderUnreachable(
                f"commander at {self.base_url} did not answer {method} {path} within {limit:g}s"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise CommanderUnreachable(
                f"commander at {self.base_url} is unreachable: {exc.os_error.strerror or exc.os_error}"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise CommanderUnreachable(
                f"commander at {self.base_url} is unreachable: {exc or type(exc).__name__}"
            ) from None
        if status >= 500:
            raise CommanderUnreachable(
                f"commander at {self.base_url} answered {status} to {method} {path}: "
                f"{self._message(payload, 'server error')}"
            )
        return status, payload

    def _parse(self, model: type[M], body: bytes) -> M:
        try:
            return model.model_validate_json(body)
        except ValidationError:
            raise CommanderUnreachable(
                f"{self.base_url} answered with something that is not a commander {model.__name__}"
            ) from None

    @staticmethod
    def _error(body: bytes) -> ErrorResponse | None:
        try:
            return ErrorResponse.model_validate_json(body)
        except ValidationError:
            return None

    def _message(self, body: bytes, default: str) -> str:
        err = self._error(body)
        return err.error if err else default

    def _raise_fenced(self, status: int, body: bytes) -> None:
        if status == 409:
            raise Fenced(self._message(body, "lease is no longer current"))

    def _raise_common(self, status: int, body: bytes) -> None:
        if status < 400:
            return
        if status == 401:
            raise Unauthorized(
                f"commander at {self.base_url} rejected the shared secret (401): {self.secret_hint}"
            )
        err = self._error(body)
        if status == 404:
            raise NotFound(err.error if err else f"not found at {self.base_url}")
        if status == 409:
            raise RunClosed(err.error if err else "conflict", err.status if err else None)
        if status in (400, 413, 422) or err is not None:
            field = err.field if err else None
            raise BadRequest(
                status, field, err.error if err else f"commander rejected the request ({status})"
            )
        raise CommanderUnreachable(f"{self.base_url} answered {status}, not a commander answer")
