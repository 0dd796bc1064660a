"""Reading one setting's value: its form and its range, refused with the variable's name."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T", bound=str)
N = TypeVar("N", int, float)


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


def database_url(value: str) -> str:
    scheme = value.split(":", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "postgres") or "://" not in value:
        raise SettingsError(
            f"DATABASE_URL: expected sqlite:///path or postgresql://user@host/db, got {scheme!r}"
        )
    if scheme != "sqlite" and not urlsplit(value).hostname and "host=" not in value:
        raise SettingsError("DATABASE_URL: a PostgreSQL URL needs a host")
    return value


def http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: expected an http:// or https:// URL, got {value!r}")
    return value


def app_id(name: str, value: str) -> str:
    # A path under FAL_QUEUE_URL: `owner/app` with an optional sub-path, nothing that could
    # leave the queue's host or carry a query.
    if not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+", value) or ".." in value:
        raise SettingsError(f"{name}: expected an app id like fal-ai/flux-lora, got {value!r}")
    return value


def choice(name: str, value: str, allowed: tuple[_T, ...]) -> _T:
    for option in allowed:
        if value == option:
            return option
    raise SettingsError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")


def words(value: str) -> tuple[str, ...]:
    return tuple(word.strip().lower() for word in value.split(",") if word.strip())


def networks(name: str, value: str) -> tuple[IPNetwork, ...]:
    networks = []
    for word in words(value):
        if word == "*":
            networks += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            continue
        try:
            networks.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise SettingsError(f"{name}: {word!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def origins(value: str) -> tuple[str, ...]:
    origins = tuple(word.strip() for word in value.split(",") if word.strip())
    for origin in origins:
        http_url("CORS_ORIGINS", origin)
    return origins


def bind(name: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    bare_ipv6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
    if not sep or not host or bare_ipv6 or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name}: expected HOST:PORT, got {value!r}")
    return value


def https_url(name: str, value: str) -> str:
    # Telegram delivers webhooks over HTTPS only (to ports 443, 80, 88 or 8443).
    if urlsplit(http_url(name, value)).scheme != "https":
        raise SettingsError(f"{name}: Telegram calls webhooks over https:// only, got {value!r}")
    if urlsplit(value).query or urlsplit(value).fragment:
        raise SettingsError(f"{name}: expected a base URL without query or fragment")
    return value.rstrip("/")


_SECRET_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def webhook_secret(value: str) -> str:
    # Telegram's rule for secret_token: 1-256 characters, A-Z a-z 0-9 _ and -.
    if len(value) > 256 or not set(value) <= _SECRET_CHARS:
        raise SettingsError(
            "TELEGRAM_WEBHOOK_SECRET: expected at most 256 of A-Z a-z 0-9 _ -, or empty"
        )
    return value


def integer(name: str, value: str, low: int, high: int) -> int:
    return _bounded(name, value, low, high, int, "a whole number")


def decimal(name: str, value: str, low: float, high: float) -> float:
    return _bounded(name, value, low, high, float, "a number")


def _bounded(name: str, value: str, low: N, high: N, parse: Callable[[str], N], expected: str) -> N:
    try:
        number = parse(value)
    except ValueError:
        raise SettingsError(f"{name}: expected {expected}, got {value!r}") from None
    if not low <= number <= high:
        raise SettingsError(f"{name}: expected {low}..{high}, got {number}")
    return number


def optional_decimal(name: str, value: str, low: float, high: float) -> float | None:
    """Empty means "not set": the default then comes from elsewhere (see its field)."""
    return decimal(name, value, low, high) if value else None
