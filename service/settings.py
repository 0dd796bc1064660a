"""The one place that reads the environment: every setting, validated once at start."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
VerifyMode = Literal["required", "off"]
LogFormat = Literal["json", "console"]

DEFAULT_DATABASE_URL = "sqlite:///var/aisha.db"
MAX_BODY_BYTES = 10 * 1024 * 1024
_T = TypeVar("_T", bound=str)
N = TypeVar("N", int, float)


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    telegram_token: str = field(default="", repr=False)
    telegram_api_url: str = "https://api.telegram.org"
    fal_key: str = field(default="", repr=False)
    fal_queue_url: str = "https://queue.fal.run"
    fal_webhook_url: str = "https://aibots.kz:8443/api/v1/avatar/status_update"
    fal_jwks_url: str = "https://rest.fal.ai/.well-known/jwks.json"
    fal_webhook_verify: VerifyMode = "required"
    webhook_unsigned_from: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    allowed_hosts: tuple[str, ...] = ("aibots.kz", "localhost", "127.0.0.1")
    allowed_ips: tuple[IPNetwork, ...] = ()
    forwarded_allow_ips: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    cors_origins: tuple[str, ...] = ("https://aibots.kz",)
    bind: str = "127.0.0.1:8000"
    web_concurrency: int = 2
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    # Outbox pacing; Telegram's documented limits are the defaults.
    telegram_rate_per_second: float = 30.0
    telegram_chat_interval: float = 1.0
    # A send that gets no answer within the read timeout is "uncertain" (it may have arrived);
    # one that cannot connect within the connect timeout is retried.
    telegram_read_timeout_seconds: float = 10.0
    telegram_connect_timeout_seconds: float = 5.0
    # The outbox (service/outbox/). The lease is long enough for a send that waits its turn
    # behind the per-chat pacing and then times out.
    outbox_lease_seconds: float = 120.0
    # None: the database's own (service/store/dialect.py): often on SQLite, which cannot wake
    # another process, and as a fallback to NOTIFY on PostgreSQL.
    outbox_poll_seconds: float | None = None
    # How soon a worker that is not the dispatcher (or lost its lock) tries to lead again.
    outbox_election_retry_seconds: float = 2.0
    outbox_max_in_flight: int = 16
    # The longest a webhook waits for the database before answering 503 (FAL retries; its own
    # timeout is 15 s, nginx's 30 s): what bounds the answer when the database stalls.
    webhook_database_timeout_seconds: float = 5.0
    public_base_url: str = "https://aibots.kz:8443"
    # The bot's reconciler (service/bot/reconciler.py) and its training data (seconds).
    reconcile_interval_seconds: float = 300.0
    training_expected_seconds: float = 1800.0
    training_hard_limit_seconds: float = 6 * 3600.0
    training_data_ttl_seconds: float = 48 * 3600.0
    # `python -m service maintenance` (service/store/retention.py): raw events and delivered
    # notifications older than this many days are pruned.
    events_retention_days: int = 90
    notifications_retention_days: int = 30

    @property
    def telegram_configured(self) -> bool:
        return bool(self.telegram_token)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
    ) -> Settings:
        """Build settings from `.env` (if present) overlaid by the real environment."""
        values: dict[str, str] = {}
        if env_file is not None and env_file.is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> Settings:
        def get(name: str, default: str) -> str:
            value = env.get(name)
            return default if value is None else value.strip()

        def number(name: str, default: str, low: float, high: float) -> float:
            return _float(name, get(name, default), low, high)

        def maybe_number(name: str, default: str, low: float, high: float) -> float | None:
            return _optional_float(name, get(name, default), low, high)

        def count(name: str, default: str, low: int, high: int) -> int:
            return _int(name, get(name, default), low, high)

        defaults = cls()
        return cls(
            database_url=_database_url(get("DATABASE_URL", DEFAULT_DATABASE_URL)),
            telegram_token=get("TELEGRAM_TOKEN", ""),
            telegram_api_url=_http_url(
                "TELEGRAM_API_URL", get("TELEGRAM_API_URL", defaults.telegram_api_url)
            ),
            fal_key=get("FAL_KEY", ""),
            fal_queue_url=_http_url("FAL_QUEUE_URL", get("FAL_QUEUE_URL", defaults.fal_queue_url)),
            fal_webhook_url=_http_url(
                "FAL_WEBHOOK_URL", get("FAL_WEBHOOK_URL", defaults.fal_webhook_url)
            ),
            fal_jwks_url=_http_url("FAL_JWKS_URL", get("FAL_JWKS_URL", defaults.fal_jwks_url)),
            fal_webhook_verify=_choice(
                "FAL_WEBHOOK_VERIFY", get("FAL_WEBHOOK_VERIFY", "required"), ("required", "off")
            ),
            webhook_unsigned_from=_networks(
                "WEBHOOK_UNSIGNED_FROM", get("WEBHOOK_UNSIGNED_FROM", "127.0.0.1/32,::1/128")
            ),
            allowed_hosts=_words(get("ALLOWED_HOSTS", "aibots.kz,localhost,127.0.0.1")),
            allowed_ips=_networks("ALLOWED_IPS", get("ALLOWED_IPS", "")),
            forwarded_allow_ips=_networks(
                "FORWARDED_ALLOW_IPS", get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
            ),
            cors_origins=_origins(get("CORS_ORIGINS", "https://aibots.kz")),
            bind=_bind(get("BIND", defaults.bind)),
            web_concurrency=count("WEB_CONCURRENCY", "2", 1, 64),
            log_level=_choice(
                "LOG_LEVEL",
                get("LOG_LEVEL", "INFO").upper(),
                ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            ),
            log_format=_choice(
                "LOG_FORMAT", get("LOG_FORMAT", "json").lower(), ("json", "console")
            ),
            telegram_rate_per_second=number("TELEGRAM_RATE_PER_SECOND", "30", 0.1, 1000),
            telegram_chat_interval=number("TELEGRAM_CHAT_INTERVAL", "1.0", 0.0, 60),
            telegram_read_timeout_seconds=number("TELEGRAM_READ_TIMEOUT_SECONDS", "10", 0.1, 600),
            telegram_connect_timeout_seconds=number(
                "TELEGRAM_CONNECT_TIMEOUT_SECONDS", "5", 0.1, 600
            ),
            outbox_lease_seconds=number("OUTBOX_LEASE_SECONDS", "120", 1, 86400),
            outbox_poll_seconds=maybe_number("OUTBOX_POLL_SECONDS", "", 0.01, 60),
            outbox_election_retry_seconds=number("OUTBOX_ELECTION_RETRY_SECONDS", "2", 0.1, 600),
            outbox_max_in_flight=count("OUTBOX_MAX_IN_FLIGHT", "16", 1, 1000),
            webhook_database_timeout_seconds=number(
                "WEBHOOK_DATABASE_TIMEOUT_SECONDS", "5", 0.5, 60
            ),
            public_base_url=_http_url(
                "PUBLIC_BASE_URL", get("PUBLIC_BASE_URL", defaults.public_base_url)
            ).rstrip("/"),
            reconcile_interval_seconds=number("RECONCILE_INTERVAL_SECONDS", "300", 0.1, 86400),
            training_expected_seconds=number("TRAINING_EXPECTED_SECONDS", "1800", 0, 86400),
            training_hard_limit_seconds=number(
                "TRAINING_HARD_LIMIT_SECONDS", "21600", 1, 30 * 86400
            ),
            training_data_ttl_seconds=number("TRAINING_DATA_TTL_SECONDS", "172800", 1, 30 * 86400),
            events_retention_days=count("EVENTS_RETENTION_DAYS", "90", 1, 36500),
            notifications_retention_days=count("NOTIFICATIONS_RETENTION_DAYS", "30", 1, 36500),
        )


def _database_url(value: str) -> str:
    scheme = value.split(":", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "postgres") or "://" not in value:
        raise SettingsError(
            f"DATABASE_URL: expected sqlite:///path or postgresql://user@host/db, got {scheme!r}"
        )
    if scheme != "sqlite" and not urlsplit(value).hostname and "host=" not in value:
        raise SettingsError("DATABASE_URL: a PostgreSQL URL needs a host")
    return value


def _http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: expected an http:// or https:// URL, got {value!r}")
    return value


def _choice(name: str, value: str, allowed: tuple[_T, ...]) -> _T:
    for option in allowed:
        if value == option:
            return option
    raise SettingsError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")


def _words(value: str) -> tuple[str, ...]:
    return tuple(word.strip().lower() for word in value.split(",") if word.strip())


def _networks(name: str, value: str) -> tuple[IPNetwork, ...]:
    networks = []
    for word in _words(value):
        if word == "*":
            networks += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            continue
        try:
            networks.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise SettingsError(f"{name}: {word!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _origins(value: str) -> tuple[str, ...]:
    origins = tuple(word.strip() for word in value.split(",") if word.strip())
    for origin in origins:
        _http_url("CORS_ORIGINS", origin)
    return origins


def _bind(value: str) -> str:
    host, sep, port = value.rpartition(":")
    bare_ipv6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
    if not sep or not host or bare_ipv6 or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"BIND: expected HOST:PORT, got {value!r}")
    return value


def _int(name: str, value: str, low: int, high: int) -> int:
    return _bounded(name, value, low, high, int, "a whole number")


def _float(name: str, value: str, low: float, high: float) -> float:
    return _bounded(name, value, low, high, float, "a number")


def _bounded(name: str, value: str, low: N, high: N, parse: Callable[[str], N], expected: str) -> N:
    try:
        number = parse(value)
    except ValueError:
        raise SettingsError(f"{name}: expected {expected}, got {value!r}") from None
    if not low <= number <= high:
        raise SettingsError(f"{name}: expected {low}..{high}, got {number}")
    return number


def _optional_float(name: str, value: str, low: float, high: float) -> float | None:
    """Empty means "not set": the default then comes from elsewhere (see its field)."""
    return _float(name, value, low, high) if value else None
