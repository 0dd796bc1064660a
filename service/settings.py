"""The one place that reads the environment: every setting, validated once at start."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values

from service import setting_values as check
from service.setting_values import IPNetwork, SettingsError

VerifyMode = Literal["required", "off"]
BotUpdates = Literal["polling", "webhook"]
LogFormat = Literal["json", "console"]

DEFAULT_DATABASE_URL = "sqlite:///var/aisha.db"
MAX_BODY_BYTES = 10 * 1024 * 1024


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
    # A conversation (creating an avatar, making photos) left this long ends, and what it
    # had half made with it.
    conversation_timeout_seconds: float = 3600.0
    # Generations (service/bot/generation.py): FAL's app, the LoRA's weight, and the limits per
    # person, enforced in the database: photos in the last 24 hours, jobs at once.
    fal_generation_app: str = "fal-ai/flux-lora"
    generation_lora_scale: float = 1.0
    generations_per_day: int = 20
    generations_in_flight: int = 2
    generation_expected_seconds: float = 120.0
    generation_hard_limit_seconds: float = 1800.0
    # `python -m service maintenance` (service/store/retention.py): raw events and delivered
    # notifications older than this many days are pruned.
    events_retention_days: int = 90
    notifications_retention_days: int = 30
    # How the bot gets Telegram's updates (service/bot/webhook.py): getUpdates, or a webhook
    # at BOT_WEBHOOK_URL/<path> that nginx forwards to BOT_BIND.
    bot_updates: BotUpdates = "polling"
    bot_bind: str = "127.0.0.1:8081"
    bot_webhook_url: str = "https://aibots.kz:8443/telegram"
    # Empty: derived from the token (service/bot/webhook.py says why that is enough).
    telegram_webhook_secret: str = field(default="", repr=False)
    bot_webhook_max_connections: int = 40
    # A submission whose answer was lost may have reached FAL: its avatar keeps the slot this
    # long, waiting for a callback, before it returns to draft (service/bot/reconciler.py).
    submission_unconfirmed_seconds: float = 3600.0

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
            return check.decimal(name, get(name, default), low, high)

        def maybe_number(name: str, default: str, low: float, high: float) -> float | None:
            return check.optional_decimal(name, get(name, default), low, high)

        def count(name: str, default: str, low: int, high: int) -> int:
            return check.integer(name, get(name, default), low, high)

        defaults = cls()
        return cls(
            database_url=check.database_url(get("DATABASE_URL", DEFAULT_DATABASE_URL)),
            telegram_token=get("TELEGRAM_TOKEN", ""),
            telegram_api_url=check.http_url(
                "TELEGRAM_API_URL", get("TELEGRAM_API_URL", defaults.telegram_api_url)
            ),
            fal_key=get("FAL_KEY", ""),
            fal_queue_url=check.http_url(
                "FAL_QUEUE_URL", get("FAL_QUEUE_URL", defaults.fal_queue_url)
            ),
            fal_webhook_url=check.http_url(
                "FAL_WEBHOOK_URL", get("FAL_WEBHOOK_URL", defaults.fal_webhook_url)
            ),
            fal_jwks_url=check.http_url("FAL_JWKS_URL", get("FAL_JWKS_URL", defaults.fal_jwks_url)),
            fal_webhook_verify=check.choice(
                "FAL_WEBHOOK_VERIFY", get("FAL_WEBHOOK_VERIFY", "required"), ("required", "off")
            ),
            webhook_unsigned_from=check.networks(
                "WEBHOOK_UNSIGNED_FROM", get("WEBHOOK_UNSIGNED_FROM", "127.0.0.1/32,::1/128")
            ),
            allowed_hosts=check.words(get("ALLOWED_HOSTS", "aibots.kz,localhost,127.0.0.1")),
            allowed_ips=check.networks("ALLOWED_IPS", get("ALLOWED_IPS", "")),
            forwarded_allow_ips=check.networks(
                "FORWARDED_ALLOW_IPS", get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
            ),
            cors_origins=check.origins(get("CORS_ORIGINS", "https://aibots.kz")),
            bind=check.bind("BIND", get("BIND", defaults.bind)),
            web_concurrency=count("WEB_CONCURRENCY", "2", 1, 64),
            log_level=check.choice(
                "LOG_LEVEL",
                get("LOG_LEVEL", "INFO").upper(),
                ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            ),
            log_format=check.choice(
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
            public_base_url=check.http_url(
                "PUBLIC_BASE_URL", get("PUBLIC_BASE_URL", defaults.public_base_url)
            ).rstrip("/"),
            reconcile_interval_seconds=number("RECONCILE_INTERVAL_SECONDS", "300", 0.1, 86400),
            training_expected_seconds=number("TRAINING_EXPECTED_SECONDS", "1800", 0, 86400),
            training_hard_limit_seconds=number(
                "TRAINING_HARD_LIMIT_SECONDS", "21600", 1, 30 * 86400
            ),
            training_data_ttl_seconds=number("TRAINING_DATA_TTL_SECONDS", "172800", 1, 30 * 86400),
            conversation_timeout_seconds=number(
                "CONVERSATION_TIMEOUT_SECONDS", "3600", 1, 7 * 86400
            ),
            fal_generation_app=check.app_id(
                "FAL_GENERATION_APP", get("FAL_GENERATION_APP", defaults.fal_generation_app)
            ),
            generation_lora_scale=number("GENERATION_LORA_SCALE", "1.0", 0.0, 4.0),
            generations_per_day=count("GENERATIONS_PER_DAY", "20", 1, 1000),
            generations_in_flight=count("GENERATIONS_IN_FLIGHT", "2", 1, 100),
            generation_expected_seconds=number("GENERATION_EXPECTED_SECONDS", "120", 0, 86400),
            generation_hard_limit_seconds=number(
                "GENERATION_HARD_LIMIT_SECONDS", "1800", 1, 7 * 86400
            ),
            events_retention_days=count("EVENTS_RETENTION_DAYS", "90", 1, 36500),
            notifications_retention_days=count("NOTIFICATIONS_RETENTION_DAYS", "30", 1, 36500),
            bot_updates=check.choice(
                "BOT_UPDATES", get("BOT_UPDATES", "polling").lower(), ("polling", "webhook")
            ),
            bot_bind=check.bind("BOT_BIND", get("BOT_BIND", defaults.bot_bind)),
            bot_webhook_url=check.https_url(
                "BOT_WEBHOOK_URL", get("BOT_WEBHOOK_URL", defaults.bot_webhook_url)
            ),
            telegram_webhook_secret=check.webhook_secret(get("TELEGRAM_WEBHOOK_SECRET", "")),
            bot_webhook_max_connections=count("BOT_WEBHOOK_MAX_CONNECTIONS", "40", 1, 100),
            submission_unconfirmed_seconds=number(
                "SUBMISSION_UNCONFIRMED_SECONDS", "3600", 0, 7 * 86400
            ),
        )


__all__ = ["IPNetwork", "Settings", "SettingsError"]
