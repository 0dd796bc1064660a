"""deploy/nginx/ under the real nginx on loopback, in Debian's own layout (tests, benchmark).

nginx runs from a private prefix laid out as Debian's /etc/nginx: the host's own nginx.conf
(from Debian's nginx-common; only its pid, log, user and include paths moved into the prefix),
which reads conf.d/*.conf, then sites-enabled/* in sorted order. conf.d/ holds the project's
http-level file, snippets/ its JSON error pages, and sites-enabled/ links BOTH project sites,
the TLS one and the legacy plain-HTTP one, as a host in the middle of the migration has them.
The project files are used as they are, with only paths, listen ports and the upstream address
replaced by plain string replacement (see `render`). nginx is stopped by its PID. Two
departures exist, both asked for explicitly: several upstream servers (two gunicorn instances
behind one upstream) and, for benchmark runs only, the per-client rate limit lifted (wrk
floods from one address; the limit would answer most of it with 429).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.support import procs
from tests.support.http import Answer
from tests.support.servers import ROOT, free_port, wait_until

DEPLOY = ROOT / "deploy" / "nginx"
SITE = DEPLOY / "aibots.kz.conf"
LEGACY = DEPLOY / "aibots.kz-legacy-http.conf"
SHARED = DEPLOY / "conf.d" / "aibots.kz.conf"
SNIPPETS = sorted((DEPLOY / "snippets").glob("*.conf"))
CERTS_SH = ROOT / "deploy" / "certs.sh"
DEBIAN_NGINX_CONF = Path("/etc/nginx/nginx.conf")

# The production strings that are replaced, and nothing else.
LISTEN_V4 = "listen 8443 ssl;"
LISTEN_V6 = "listen [::]:8443 ssl;"
LEGACY_V4 = "listen 80;"
LEGACY_V6 = "listen [::]:80;"
CERTS_PATH = "/etc/ssl/aibots/"
LOGS_PATH = "/var/log/nginx/"
ALLOW_PATH = "/etc/nginx/aibots.kz.d/"
SNIPPETS_PATH = "/etc/nginx/snippets/"
UPSTREAM = "server 127.0.0.1:8000;"
BOT_UPSTREAM = "server 127.0.0.1:8081;"
RATE_LIMIT = "limit_req zone=aibots_kz_per_client burst=50 nodelay;"
RATE_LIMIT_LIFTED = (
    "# limit_req lifted for this benchmark run only: wrk floods from one address, which the "
    "per-client limit (10 r/s, burst 50) would answer with 429."
)
# Debian's nginx.conf, in this order: what makes a definition in one site unknown to another.
DEBIAN_INCLUDES = ("include /etc/nginx/conf.d/*.conf;", "include /etc/nginx/sites-enabled/*;")


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def missing(what: str, hint: str) -> NoReturn:
    """A deployment tool or file this test needs is absent: skipped, or under REQUIRE_NGINX=1
    (CI) a failure, so that no deployment suite is skipped in CI."""
    if os.environ.get("REQUIRE_NGINX") == "1":
        pytest.fail(f"{what}, and REQUIRE_NGINX=1 makes that a failure")
    pytest.skip(reason=f"{what} ({hint}); REQUIRE_NGINX=1 fails instead")


def nginx_binary() -> str:
    """nginx's path; without it the test is skipped, or fails under REQUIRE_NGINX=1."""
    found = find_nginx()
    if found is None:
        missing("nginx is not installed", "apt-get install nginx")
    assert found is not None
    return found


def debian_nginx_conf() -> str:
    """The host's /etc/nginx/nginx.conf, which must be Debian's (both includes, in order)."""
    if not DEBIAN_NGINX_CONF.is_file():
        missing(f"{DEBIAN_NGINX_CONF} is missing", "Debian's nginx-common installs it")
    text = DEBIAN_NGINX_CONF.read_text()
    directives = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    positions = [directives.index(i) if i in directives else -1 for i in DEBIAN_INCLUDES]
    assert -1 not in positions and positions == sorted(positions), (
        f"{DEBIAN_NGINX_CONF} does not include conf.d/*.conf then sites-enabled/* as Debian's "
        "does: these tests need Debian's layout"
    )
    return text


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def dev_certs(target: Path) -> Path:
    """`deploy/certs.sh dev TARGET`: a throw-away root (ca.crt), intermediate and chain."""
    made = subprocess.run(
        ["bash", str(CERTS_SH), "dev", str(target)], capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    return target


def _ports(upstream: int | Sequence[int]) -> list[int]:
    ports = [upstream] if isinstance(upstream, int) else list(upstream)
    assert ports, "at least one upstream server"
    return ports


def render(source: Path, replacements: dict[str, str]) -> str:
    """A project file with exactly these production strings replaced, each of which must be
    in it; afterwards no directive may name a host path or a production port."""
    text = source.read_text()
    for production, replacement in replacements.items():
        assert production in text, f"{production!r} is gone from {source.name}: update this test"
        text = text.replace(production, replacement)
    for line in text.splitlines():
        directive = line.split("#", 1)[0]
        # A whole number: a free port such as 48443 is not the production one.
        assert not re.search(r"(?<!\d)8443(?!\d)", directive), line
        assert not re.search(r"listen\s+(\[::\]:)?80;", directive), line
        assert "/etc/" not in directive and "/var/" not in directive, line
    return text


def render_nginx_conf(prefix: Path) -> str:
    """Debian's nginx.conf with its pid, logs, user and the two includes moved into `prefix`."""
    text = debian_nginx_conf()
    # As root, nginx's workers would drop to www-data, who cannot enter pytest's private
    # temporary directories (request bodies over 1 MiB are buffered there).
    user = "user root;" if os.geteuid() == 0 else ""
    text, users = re.subn(r"(?m)^\s*user\s+[^;]+;", user, text)
    assert users <= 1
    text = (
        text.replace("/run/nginx.pid", f"{prefix}/nginx.pid")
        .replace("/var/log/nginx/", f"{prefix}/logs/")
        .replace("/etc/nginx/conf.d/", f"{prefix}/conf.d/")
        .replace("/etc/nginx/sites-enabled/", f"{prefix}/sites-enabled/")
    )
    # Debian's package writes its temporary files under /var/lib/nginx: into the prefix too.
    temp = "".join(
        f"\n    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text, opened = re.subn(r"(?m)^http\s*\{", "http {" + temp, text, count=1)
    assert opened == 1, "no http { block in Debian's nginx.conf"
    for line in text.splitlines():
        directive = line.split("#", 1)[0]
        assert "/var/" not in directive and "/run/" not in directive, line
    return text


@dataclass
class Nginx:
    prefix: Path
    port: int
    ipv6: bool
    process: subprocess.Popen[bytes]
    rate_limit_lifted: bool = False
    legacy_port: int = 0

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "aibots.kz.access.log"

    def entries(self) -> list[dict[str, Any]]:
        if not self.access_log.exists():
            return []
        # escape=json escapes control characters but passes other bytes as they came: a
        # client's invalid UTF-8 in a logged header lands in the log as it is.
        text = self.access_log.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line]

    def entry(self, marker: str) -> dict[str, Any]:
        """The access log line of the one request whose URI holds `marker`."""
        found: list[dict[str, Any]] = []

        def logged() -> bool:
            found[:] = [e for e in self.entries() if marker in e["uri"]]
            return bool(found)

        wait_until(logged, 5, what=f"access log line for {marker}")
        assert len(found) == 1, found
        return found[0]

    def stderr(self) -> str:
        return (self.prefix / "nginx.stderr").read_text(errors="replace")

    def error_log(self) -> str:
        """The site's own error log (aibots.kz.error.log), empty before its first line."""
        path = self.prefix / "logs" / "aibots.kz.error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> list[int]:
        """The master and its workers."""
        return [self.process.pid, *procs.children(self.process.pid)]

    def stop(self) -> None:
        procs.terminate(self.process)


@dataclass
class Layout:
    """A private copy of Debian's /etc/nginx with the project's files in it."""

    prefix: Path
    conf: Path
    port: int
    legacy_port: int
    ipv6: bool


def write_config(
    prefix: Path,
    certs: Path,
    upstream: int | Sequence[int],
    allow: Path | None = None,
    *,
    lift_rate_limit: bool = False,
    bot: int | None = None,
) -> Layout:
    """Debian's layout under `prefix`: nginx.conf, conf.d/, snippets/, sites-available/ and
    sites-enabled/ with both project sites linked; the bot's upstream is `bot` (default: a
    port where nothing listens)."""
    for sub in ("logs", "tmp", "aibots.kz.d/telegram", "conf.d", "snippets", "sites-available",
                "sites-enabled"):  # fmt: skip
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    port, legacy_port = free_port(), free_port()
    ipv6 = ipv6_loopback()
    allow = allow or prefix / "aibots.kz.d"
    paths = {
        CERTS_PATH: f"{certs}/",
        LOGS_PATH: f"{prefix}/logs/",
        ALLOW_PATH: f"{allow}/",
        SNIPPETS_PATH: f"{prefix}/snippets/",
    }
    # Without IPv6 on loopback (some containers) the IPv6 listeners are left out.
    no_v6 = "# (no IPv6 loopback here)"
    site = render(SITE, {
        LISTEN_V4: f"listen 127.0.0.1:{port} ssl;",
        LISTEN_V6: f"listen [::1]:{port} ssl;" if ipv6 else no_v6,
        **paths,
    })  # fmt: skip
    if lift_rate_limit:
        assert RATE_LIMIT in site, f"{RATE_LIMIT!r} is gone from {SITE.name}: update this module"
        site = site.replace(RATE_LIMIT, RATE_LIMIT_LIFTED)
    legacy = render(LEGACY, {
        LEGACY_V4: f"listen 127.0.0.1:{legacy_port};",
        LEGACY_V6: f"listen [::1]:{legacy_port};" if ipv6 else no_v6,
        LOGS_PATH: paths[LOGS_PATH],
        ALLOW_PATH: paths[ALLOW_PATH],
        SNIPPETS_PATH: paths[SNIPPETS_PATH],
    })  # fmt: skip
    servers = "\n    ".join(f"server 127.0.0.1:{p};" for p in _ports(upstream))
    bot_server = f"server 127.0.0.1:{bot or free_port()};"
    shared = render(SHARED, {UPSTREAM: servers, BOT_UPSTREAM: bot_server})
    (prefix / "conf.d" / SHARED.name).write_text(shared)
    for snippet in SNIPPETS:
        (prefix / "snippets" / snippet.name).write_text(render(snippet, {}))
    for source, text in ((SITE, site), (LEGACY, legacy)):
        (prefix / "sites-available" / source.name).write_text(text)
        link = prefix / "sites-enabled" / source.name
        if not link.is_symlink():
            link.symlink_to(f"../sites-available/{source.name}")
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf(prefix))
    return Layout(prefix, conf, port, legacy_port, ipv6)


def nginx_test(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(conf.parent), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@contextlib.contextmanager
def running_nginx(
    prefix: Path,
    certs: Path,
    upstream: int | Sequence[int],
    allow: Path | None = None,
    *,
    lift_rate_limit: bool = False,
    bot: int | None = None,
) -> Iterator[Nginx]:
    """nginx with both sites in front of `upstream` (one port, or several for one upstream),
    and the bot's webhook location in front of `bot`."""
    layout = write_config(prefix, certs, upstream, allow, lift_rate_limit=lift_rate_limit, bot=bot)
    checked = nginx_test(layout.conf)
    assert checked.returncode == 0, checked.stderr
    with (prefix / "nginx.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [nginx_binary(), "-p", str(prefix), "-c", str(layout.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = Nginx(prefix, layout.port, layout.ipv6, process, lift_rate_limit, layout.legacy_port)
    try:

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited: {server.stderr()}")
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", layout.port)) == 0

        wait_until(listening, 10, what="nginx")
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# An HTTPS client for the site (http.client over TLS to 127.0.0.1, SNI and Host aibots.kz)


# An answer over TLS has the same shape as one over plain HTTP (header names in lower case).
Reply = Answer


class TLSConnection(http.client.HTTPConnection):
    """HTTP/1.1 over TLS to a loopback address, from a chosen source address, for aibots.kz."""

    def __init__(
        self,
        port: int,
        context: ssl.SSLContext,
        source: str = "127.0.0.1",
        address: str = "127.0.0.1",
        hostname: str = "aibots.kz",
        timeout: float = 30,
    ) -> None:
        super().__init__(hostname, port, timeout=timeout)
        self._context = context
        self._source = source
        self._address = address
        self._hostname = hostname

    def connect(self) -> None:
        raw = socket.create_connection(
            (self._address, self.port), timeout=self.timeout, source_address=(self._source, 0)
        )
        # As http.client's own connect() does: headers and body leave in two writes, and with
        # Nagle the body would wait for the server's delayed ACK (~40 ms a request).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = self._context.wrap_socket(raw, server_hostname=self._hostname)
        except BaseException:
            raw.close()
            raise

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str | bytes] | None = None,
    ) -> Reply:
        self.request(method, path, body=body, headers=headers or {})
        response = self.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)


def call_once(
    port: int,
    context: ssl.SSLContext,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    timeout: float = 30,
) -> Reply:
    """One request on a connection of its own, closed afterwards."""
    connection = TLSConnection(port, context, source=source, timeout=timeout)
    try:
        return connection.call(method, path, body, headers)
    finally:
        connection.close()


class TLSFront:
    """Requests to a site behind nginx, on the `port` and with the `context` of the subclass."""

    context: ssl.SSLContext

    @property
    def port(self) -> int:
        raise NotImplementedError

    def connection(self, source: str = "127.0.0.1", timeout: float = 30) -> TLSConnection:
        return TLSConnection(self.port, self.context, source=source, timeout=timeout)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        source: str = "127.0.0.1",
    ) -> Reply:
        return call_once(self.port, self.context, method, path, body, headers, source)
