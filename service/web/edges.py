"""The HTTP edge: who is calling, from which host, with how big a body; JSON errors."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.settings import IPNetwork


class RequestRefused(Exception):
    """Refuse the request with this status and JSON body; raised anywhere below the edge."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


def error_response(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# Every webhook asks about the same few addresses (nginx's, FAL's) against the same settings;
# parsing one took a few percent of a webhook. Bounded: a stranger's addresses only churn it.
@functools.lru_cache(maxsize=1024)
def in_networks(address: str | None, networks: tuple[IPNetwork, ...]) -> bool:
    ip = parse_ip(address) if address else None
    return ip is not None and any(ip in network for network in networks)


def client_address(scope: Scope, trusted: tuple[IPNetwork, ...]) -> str | None:
    """The peer, or, when the peer is a trusted proxy, the right-most untrusted X-Forwarded-For.

    Right-most, because each proxy appends what it saw: everything to the left of the last
    untrusted hop was written by the client itself and may be forged.
    """
    peer = scope.get("client")
    address: str | None = str(peer[0]) if peer else None
    if not in_networks(address, trusted):
        return address
    forwarded = [
        value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name == b"x-forwarded-for"
    ]
    hops: list[str] = [hop.strip() for line in forwarded for hop in line.split(",") if hop.strip()]
    for hop in reversed(hops):
        if parse_ip(hop) is None:
            # Garbage in the chain: stop believing it at this point.
            return address
        address = hop
        if not in_networks(hop, trusted):
            return hop
    return address


class HostCheck:
    """Answers 400 to a Host header that is not in ALLOWED_HOSTS (port ignored)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = frozenset(host.lower() for host in allowed)
        self.any = "*" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any:
            await self.app(scope, receive, send)
            return
        host = ""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1").lower()
                break
        if host.startswith("["):
            host = host[1 : host.find("]")]
        else:
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if host in self.allowed:
            await self.app(scope, receive, send)
            return
        response = error_response(400, "bad_host", "the Host header is not served here")
        await response(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes `limit`, chunked bodies included.

    Each chunk is appended to one buffer as it arrives and freed at once: a list of chunks
    joined at the end held the body twice, in many pieces the allocator kept after a big
    request. Not sized from Content-Length up front, so a client that declares 10 MiB and
    sends nothing costs nothing.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestRefused(400, "bad_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise RequestRefused(413, "too_large", f"the body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise RequestRefused(413, "too_large", f"the body is over {limit} bytes")
        body += chunk
    return bytes(body)
