"""Settings: the contract's defaults, refusals that name the variable, `.env`, and `check`."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError
from tests.support.servers import base_env, run_cli

CONFIG_NAMES = (
    "DATABASE_URL",
    "TELEGRAM_TOKEN",
    "TELEGRAM_API_URL",
    "FAL_KEY",
    "FAL_QUEUE_URL",
    "FAL_WEBHOOK_URL",
    "FAL_JWKS_URL",
    "FAL_WEBHOOK_VERIFY",
    "WEBHOOK_UNSIGNED_FROM",
    "ALLOWED_HOSTS",
    "ALLOWED_IPS",
    "FORWARDED_ALLOW_IPS",
    "BIND",
    "WEB_CONCURRENCY",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "TELEGRAM_READ_TIMEOUT_SECONDS",
    "TELEGRAM_CONNECT_TIMEOUT_SECONDS",
    "OUTBOX_LEASE_SECONDS",
    "OUTBOX_POLL_SECONDS",
    "OUTBOX_ELECTION_RETRY_SECONDS",
    "OUTBOX_MAX_IN_FLIGHT",
)


def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def test_defaults_match_the_architecture_table() -> None:
    settings = Settings.from_mapping({})
    assert settings.database_url == "sqlite:///var/aisha.db"
    assert settings.telegram_token == ""
    assert settings.telegram_api_url == "https://api.telegram.org"
    assert settings.fal_key == ""
    assert settings.fal_queue_url == "https://queue.fal.run"
    assert settings.fal_webhook_url == "https://aibots.kz:8443/api/v1/avatar/status_update"
    assert settings.fal_jwks_url == "https://rest.fal.ai/.well-known/jwks.json"
    assert settings.fal_webhook_verify == "required"
    assert settings.webhook_unsigned_from == nets("127.0.0.1/32", "::1/128")
    assert settings.allowed_hosts == ("aibots.kz", "localhost", "127.0.0.1")
    assert settings.allowed_ips == ()
    assert settings.forwarded_allow_ips == nets("127.0.0.1/32", "::1/128")
    assert settings.bind == "127.0.0.1:8000"
    assert settings.web_concurrency == 2
    assert settings.log_level == "INFO"
    assert settings.log_format == "json"
    assert not settings.telegram_configured
    assert settings.fal_generation_app == "fal-ai/flux-lora"
    assert settings.generation_lora_scale == 1.0
    assert settings.generations_per_day == 20
    assert settings.generations_in_flight == 2


def test_outbox_and_telegram_timing_defaults_are_the_values_the_code_had() -> None:
    settings = Settings.from_mapping({})
    assert settings.telegram_read_timeout_seconds == 10.0
    assert settings.telegram_connect_timeout_seconds == 5.0
    assert settings.outbox_lease_seconds == 120.0
    assert settings.outbox_election_retry_seconds == 2.0
    assert settings.outbox_max_in_flight == 16
    # Unset: the dispatcher takes the database's own interval (service/store/dialect.py).
    assert settings.outbox_poll_seconds is None
    assert Settings.from_mapping({"OUTBOX_POLL_SECONDS": ""}).outbox_poll_seconds is None


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [("sqlite:///var/aisha.db", 0.2), ("postgresql://u@db/aisha", 1.0)],
)
def test_the_poll_interval_defaults_to_the_databases_own(
    database_url: str, expected: float
) -> None:
    from service.outbox.dispatcher import poll_seconds

    assert poll_seconds(Settings.from_mapping({"DATABASE_URL": database_url})) == expected
    chosen = Settings.from_mapping({"DATABASE_URL": database_url, "OUTBOX_POLL_SECONDS": "0.5"})
    assert poll_seconds(chosen) == 0.5


def test_from_mapping_equals_the_dataclass_defaults() -> None:
    assert Settings.from_mapping({}) == Settings()


def test_from_env_without_a_file_and_with_an_empty_environment_gives_the_defaults(
    tmp_path: Path,
) -> None:
    assert Settings.from_env({}, env_file=tmp_path / "absent.env") == Settings()


def test_secrets_do_not_appear_in_the_repr() -> None:
    settings = Settings.from_mapping(
        {
            "TELEGRAM_TOKEN": "123:SECRET-TOKEN",
            "FAL_KEY": "fal-KEY",
            "TELEGRAM_WEBHOOK_SECRET": "hook-SECRET",
        }
    )
    assert settings.telegram_configured
    assert "SECRET-TOKEN" not in repr(settings)
    assert "fal-KEY" not in repr(settings)
    assert "hook-SECRET" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://user:pass@localhost/db"),
        ("DATABASE_URL", "var/aisha.db"),
        ("DATABASE_URL", "postgresql:///nohost"),
        ("TELEGRAM_API_URL", "not a url"),
        ("TELEGRAM_API_URL", "ftp://api.telegram.org"),
        ("FAL_QUEUE_URL", "queue.fal.run"),
        ("FAL_WEBHOOK_URL", "https://"),
        ("FAL_JWKS_URL", "file:///etc/jwks.json"),
        ("FAL_WEBHOOK_VERIFY", "maybe"),
        ("FAL_WEBHOOK_VERIFY", "REQUIRED-ish"),
        ("WEBHOOK_UNSIGNED_FROM", "10.0.0.300/8"),
        ("WEBHOOK_UNSIGNED_FROM", "127.0.0.1/33"),
        ("ALLOWED_IPS", "garbage"),
        ("ALLOWED_IPS", "10.0.0.0/8,garbage"),
        ("FORWARDED_ALLOW_IPS", "garbage"),
        ("FORWARDED_ALLOW_IPS", "127.0.0.1;::1"),
        ("BIND", "127.0.0.1"),
        ("BIND", "localhost"),
        ("BIND", "127.0.0.1:"),
        ("BIND", ":8000"),
        ("BIND", "127.0.0.1:http"),
        ("BIND", "127.0.0.1:70000"),
        ("BIND", "::1"),
        ("BOT_UPDATES", "push"),
        ("BOT_BIND", "8081"),
        ("BOT_WEBHOOK_URL", "http://aibots.kz:8443/telegram"),
        ("BOT_WEBHOOK_URL", "https://aibots.kz:8443/telegram?x=1"),
        ("TELEGRAM_WEBHOOK_SECRET", "has space"),
        ("TELEGRAM_WEBHOOK_SECRET", "x" * 257),
        ("BOT_WEBHOOK_MAX_CONNECTIONS", "0"),
        ("BOT_WEBHOOK_MAX_CONNECTIONS", "101"),
        ("SUBMISSION_UNCONFIRMED_SECONDS", "-1"),
        ("WEB_CONCURRENCY", "zero"),
        ("WEB_CONCURRENCY", "0"),
        ("WEB_CONCURRENCY", "-2"),
        ("WEB_CONCURRENCY", "2.5"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("OUTBOX_LEASE_SECONDS", "two minutes"),
        ("OUTBOX_LEASE_SECONDS", "0"),
        ("OUTBOX_POLL_SECONDS", "fast"),
        ("OUTBOX_POLL_SECONDS", "0"),
        ("OUTBOX_POLL_SECONDS", "-1"),
        ("OUTBOX_ELECTION_RETRY_SECONDS", "soon"),
        ("OUTBOX_ELECTION_RETRY_SECONDS", "0"),
        ("OUTBOX_MAX_IN_FLIGHT", "many"),
        ("OUTBOX_MAX_IN_FLIGHT", "0"),
        ("OUTBOX_MAX_IN_FLIGHT", "1.5"),
        ("TELEGRAM_READ_TIMEOUT_SECONDS", "ten"),
        ("TELEGRAM_READ_TIMEOUT_SECONDS", "0"),
        ("TELEGRAM_CONNECT_TIMEOUT_SECONDS", "-5"),
        ("TELEGRAM_CONNECT_TIMEOUT_SECONDS", "nan"),
        ("FAL_GENERATION_APP", ""),
        ("FAL_GENERATION_APP", "flux-lora"),
        ("FAL_GENERATION_APP", "https://evil.example/flux"),
        ("FAL_GENERATION_APP", "fal-ai/../other"),
        ("FAL_GENERATION_APP", "fal-ai/flux-lora?x=1"),
        ("GENERATION_LORA_SCALE", "strong"),
        ("GENERATION_LORA_SCALE", "-0.5"),
        ("GENERATIONS_PER_DAY", "0"),
        ("GENERATIONS_PER_DAY", "lots"),
        ("GENERATIONS_IN_FLIGHT", "0"),
        ("GENERATIONS_IN_FLIGHT", "1.5"),
        ("GENERATION_EXPECTED_SECONDS", "-1"),
        ("GENERATION_HARD_LIMIT_SECONDS", "0"),
    ],
)
def test_a_bad_value_is_refused_with_a_message_starting_with_its_name(
    name: str, value: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_mapping({name: value})
    assert str(caught.value).startswith(name)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("DATABASE_URL", "sqlite:////abs/path.db", "database_url", "sqlite:////abs/path.db"),
        (
            "DATABASE_URL",
            "sqlite+aiosqlite:///rel.db",
            "database_url",
            "sqlite+aiosqlite:///rel.db",
        ),
        (
            "DATABASE_URL",
            "postgresql+psycopg://u:p@db:5432/aisha",
            "database_url",
            "postgresql+psycopg://u:p@db:5432/aisha",
        ),
        ("TELEGRAM_API_URL", "http://127.0.0.1:8081", "telegram_api_url", "http://127.0.0.1:8081"),
        ("FAL_WEBHOOK_VERIFY", "off", "fal_webhook_verify", "off"),
        ("BIND", "0.0.0.0:8443", "bind", "0.0.0.0:8443"),
        ("BIND", "[::1]:8000", "bind", "[::1]:8000"),
        ("BOT_UPDATES", "Webhook", "bot_updates", "webhook"),
        ("BOT_BIND", "[::1]:9000", "bot_bind", "[::1]:9000"),
        ("BOT_WEBHOOK_URL", "https://x.kz:88/tg/", "bot_webhook_url", "https://x.kz:88/tg"),
        ("TELEGRAM_WEBHOOK_SECRET", "A-z_09", "telegram_webhook_secret", "A-z_09"),
        ("SUBMISSION_UNCONFIRMED_SECONDS", "30", "submission_unconfirmed_seconds", 30.0),
        ("WEB_CONCURRENCY", "4", "web_concurrency", 4),
        ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("LOG_FORMAT", "console", "log_format", "console"),
        ("OUTBOX_LEASE_SECONDS", "3", "outbox_lease_seconds", 3.0),
        ("OUTBOX_POLL_SECONDS", "0.05", "outbox_poll_seconds", 0.05),
        ("OUTBOX_ELECTION_RETRY_SECONDS", "0.5", "outbox_election_retry_seconds", 0.5),
        ("OUTBOX_MAX_IN_FLIGHT", "64", "outbox_max_in_flight", 64),
        ("TELEGRAM_READ_TIMEOUT_SECONDS", "30", "telegram_read_timeout_seconds", 30.0),
        ("TELEGRAM_CONNECT_TIMEOUT_SECONDS", "2.5", "telegram_connect_timeout_seconds", 2.5),
        ("FAL_GENERATION_APP", "fal-ai/flux-lora", "fal_generation_app", "fal-ai/flux-lora"),
        ("FAL_GENERATION_APP", "fal-ai/flux/dev", "fal_generation_app", "fal-ai/flux/dev"),
        ("GENERATION_LORA_SCALE", "0.8", "generation_lora_scale", 0.8),
        ("GENERATIONS_PER_DAY", "50", "generations_per_day", 50),
        ("GENERATIONS_IN_FLIGHT", "1", "generations_in_flight", 1),
        ("GENERATION_EXPECTED_SECONDS", "5", "generation_expected_seconds", 5.0),
        ("GENERATION_HARD_LIMIT_SECONDS", "600", "generation_hard_limit_seconds", 600.0),
        (
            "ALLOWED_HOSTS",
            " AIBOTS.KZ , example.org ",
            "allowed_hosts",
            ("aibots.kz", "example.org"),
        ),
    ],
)
def test_good_values_are_taken(name: str, value: str, field: str, expected: object) -> None:
    assert getattr(Settings.from_mapping({name: value}), field) == expected


def test_network_lists_accept_addresses_and_cidrs() -> None:
    settings = Settings.from_mapping(
        {"ALLOWED_IPS": "10.0.0.0/8, 192.168.1.7 ,2001:db8::/32", "WEBHOOK_UNSIGNED_FROM": "::1"}
    )
    assert settings.allowed_ips == nets("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32")
    assert settings.webhook_unsigned_from == nets("::1/128")


def test_an_empty_unsigned_from_accepts_unsigned_webhooks_from_nobody() -> None:
    assert Settings.from_mapping({"WEBHOOK_UNSIGNED_FROM": ""}).webhook_unsigned_from == ()
    assert Settings.from_mapping({"WEBHOOK_UNSIGNED_FROM": "  "}).webhook_unsigned_from == ()


def test_dotenv_values_are_used(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment line\n"
        "DATABASE_URL=sqlite:///from-dotenv.db\n"
        'BIND="127.0.0.1:9001"\n'
        "FAL_WEBHOOK_VERIFY=off\n"
        "WEBHOOK_UNSIGNED_FROM=\n",
        encoding="utf-8",
    )
    settings = Settings.from_env({}, env_file=env_file)
    assert settings.database_url == "sqlite:///from-dotenv.db"
    assert settings.bind == "127.0.0.1:9001"
    assert settings.fal_webhook_verify == "off"
    assert settings.webhook_unsigned_from == ()


def test_the_environment_wins_over_dotenv(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BIND=127.0.0.1:9001\nWEB_CONCURRENCY=3\n", encoding="utf-8")
    settings = Settings.from_env({"BIND": "127.0.0.1:9002"}, env_file=env_file)
    assert settings.bind == "127.0.0.1:9002"
    assert settings.web_concurrency == 3  # not overridden: still from the file


def test_an_empty_environment_value_still_wins_over_dotenv(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ALLOWED_IPS=10.0.0.0/8\n", encoding="utf-8")
    assert Settings.from_env({"ALLOWED_IPS": ""}, env_file=env_file).allowed_ips == ()


def test_a_bad_value_in_dotenv_is_refused_by_name(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FAL_WEBHOOK_VERIFY=maybe\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"^FAL_WEBHOOK_VERIFY"):
        Settings.from_env({}, env_file=env_file)


def test_a_good_environment_value_overrides_a_bad_dotenv_one(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FAL_WEBHOOK_VERIFY=maybe\n", encoding="utf-8")
    settings = Settings.from_env({"FAL_WEBHOOK_VERIFY": "off"}, env_file=env_file)
    assert settings.fal_webhook_verify == "off"


# --- the real CLI ---------------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = base_env(**extra)
    for name in CONFIG_NAMES:
        if name not in extra:
            env.pop(name, None)
    return env


def test_check_refuses_a_bad_setting_with_one_line_naming_it(tmp_path: Path) -> None:
    result = run_cli(
        "check",
        env=cli_env(FAL_WEBHOOK_VERIFY="maybe", DATABASE_URL=f"sqlite:///{tmp_path}/x.db"),
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "FAL_WEBHOOK_VERIFY" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_on_an_unmigrated_database_says_to_migrate_then_passes_after(
    tmp_path: Path,
) -> None:
    env = cli_env(DATABASE_URL=f"sqlite:///{tmp_path}/fresh.db")

    before = run_cli("check", env=env, cwd=tmp_path, check=False)
    assert before.returncode == 1, before.stderr
    assert "python -m service migrate" in before.stderr
    assert "Traceback" not in before.stderr

    migrated = run_cli("migrate", env=env, cwd=tmp_path, check=False)
    assert migrated.returncode == 0, migrated.stderr
    assert (tmp_path / "fresh.db").is_file()

    after = run_cli("check", env=env, cwd=tmp_path, check=False)
    assert after.returncode == 0, after.stderr
    assert "python -m service migrate" not in after.stderr
    assert after.stdout == ""


@pytest.mark.parametrize(
    ("name", "value"), [("OUTBOX_LEASE_SECONDS", "soon"), ("TELEGRAM_READ_TIMEOUT_SECONDS", "0")]
)
@pytest.mark.parametrize("command", ["check", "serve", "bot", "migrate"])
def test_every_command_refuses_a_bad_outbox_setting_by_name(
    tmp_path: Path, command: str, name: str, value: str
) -> None:
    env = cli_env(DATABASE_URL=f"sqlite:///{tmp_path}/x.db", **{name: value})
    result = run_cli(command, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"configuration error: {name}: expected"), line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_check_reads_a_dotenv_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WEB_CONCURRENCY=zero\n", encoding="utf-8")
    result = run_cli(
        "check", env=cli_env(DATABASE_URL=f"sqlite:///{tmp_path}/x.db"), cwd=tmp_path, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "WEB_CONCURRENCY" in result.stderr


def test_every_setting_read_is_documented_in_the_readme_and_env_example() -> None:
    asked: set[str] = set()

    class Recording(dict[str, str]):
        def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
            asked.add(key)
            return super().get(key, default)

    Settings.from_mapping(Recording())
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    example = (root / ".env.example").read_text(encoding="utf-8")
    assert "OUTBOX_LEASE_SECONDS" in asked
    assert sorted(n for n in asked if f"`{n}`" not in readme) == []
    assert sorted(n for n in asked if f"{n}=" not in example) == []
