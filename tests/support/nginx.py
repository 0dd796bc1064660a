"""deploy/nginx/aibots.kz.conf under the real nginx, on loopback, for tests and the benchmark.

The site file is used as it is, with only paths, listen ports and the upstream address replaced
by plain string replacement (see `render_site`), inside a minimal nginx.conf that mimics the
http {} defaults of Debian's. nginx runs from a temporary prefix on a free loopback port and is
stopped by its PID. Two departures exist, both asked for explicitly: several upstream servers
(two gunicorn instances behind one upstream) and, for benchmark runs only, the per-client rate
limit lifted (wrk floods from one address; the limit would answer most of it with 429).
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
from typing import Any

import pytest

from tests.support import procs
from tests.support.http import Answer
from tests.support.servers import ROOT, free_port, wait_until

SITE = ROOT / "deploy" / "nginx" / "aibots.kz.conf"
CERTS_SH = ROOT / "deploy" / "certs.sh"

# The production strings that are replaced, and nothing else.
LISTEN_V4 = "listen 8443 ssl;"
LISTEN_V6 = "listen [::]:8443 ssl;"
CERTS_PATH = "/etc/ssl/aibots/"
LOGS_PATH = "/var/log/nginx/"
ALLOW_PATH = "/etc/nginx/aibots.kz.d/"
UPSTREAM = "server 127.0.0.1:8000;"
RATE_LIMIT = "limit_req zone=aibots_kz_per_client burst=50 nodelay;"
RATE_LIMIT_LIFTED = (
    "# limit_req lifted for this benchmark run only: wrk floods from one address, which the "
    "per-client limit (10 r/s, burst 50) would answer with 429."
)


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_binary() -> str:
    """nginx's path; without it the test is skipped, or fails under REQUIRE_NGINX=1."""
    found = find_nginx()
    if found is None:
        if os.environ.get("REQUIRE_NGINX") == "1":
            pytest.fail("nginx is not installed, and REQUIRE_NGINX=1 makes that a failure")
        pytest.skip("nginx is not installed (apt-get install nginx); REQUIRE_NGINX=1 fails instead")
    return found


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


def render_site(
    *,
    port: int,
    upstream: int | Sequence[int],
    certs: Path,
    logs: Path,
    allow: Path,
    ipv6: bool,
    lift_rate_limit: bool = False,
) -> str:
    """The production site file with only paths, ports and the upstream servers replaced."""
    text = SITE.read_text()
    for production in (LISTEN_V4, LISTEN_V6, CERTS_PATH, LOGS_PATH, ALLOW_PATH, UPSTREAM):
        assert production in text, f"{production!r} is gone from {SITE.name}: update this test"
    # Without IPv6 on loopback (some containers) the IPv6 listener is left out.
    v6 = f"listen [::1]:{port} ssl;" if ipv6 else "# (no IPv6 loopback here)"
    servers = "\n    ".join(f"server 127.0.0.1:{p};" for p in _ports(upstream))
    text = (
        text.replace(LISTEN_V4, f"listen 127.0.0.1:{port} ssl;")
        .replace(LISTEN_V6, v6)
        .replace(CERTS_PATH, f"{certs}/")
        .replace(LOGS_PATH, f"{logs}/")
        .replace(ALLOW_PATH, f"{allow}/")
        .replace(UPSTREAM, servers)
    )
    if lift_rate_limit:
        assert RATE_LIMIT in text, f"{RATE_LIMIT!r} is gone from {SITE.name}: update this module"
        text = text.replace(RATE_LIMIT, RATE_LIMIT_LIFTED)
    # Nothing of the host may be left in a directive: no port 8443, no system path.
    for line in text.splitlines():
        directive = line.split("#", 1)[0]
        # A whole number: a free port such as 48443 is not the production one.
        assert not re.search(r"(?<!\d)8443(?!\d)", directive), line
        assert "/etc/" not in directive and "/var/" not in directive, line
    return text


WRAPPER = """\
{user}
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log notice;
events {{ worker_connections 512; }}
http {{
    # As in Debian's /etc/nginx/nginx.conf: the site must hold its own against these.
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    {mime_types}
    default_type application/octet-stream;
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    access_log {prefix}/logs/access.log;
    gzip on;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {site};
}}
"""


@dataclass
class Nginx:
    prefix: Path
    port: int
    ipv6: bool
    process: subprocess.Popen[bytes]
    rate_limit_lifted: bool = False

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

    def pids(self) -> list[int]:
        """The master and its workers."""
        return [self.process.pid, *procs.children(self.process.pid)]

    def stop(self) -> None:
        procs.terminate(self.process)


def write_config(
    prefix: Path,
    certs: Path,
    upstream: int | Sequence[int],
    allow: Path | None = None,
    *,
    lift_rate_limit: bool = False,
) -> tuple[Path, int, bool]:
    for sub in ("logs", "tmp", "allow"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    ipv6 = ipv6_loopback()
    site = prefix / "aibots.kz.conf"
    site.write_text(
        render_site(
            port=port,
            upstream=upstream,
            certs=certs,
            logs=prefix / "logs",
            allow=allow or prefix / "allow",
            ipv6=ipv6,
            lift_rate_limit=lift_rate_limit,
        )
    )
    conf = prefix / "nginx.conf"
    # As root, nginx's workers would drop to `nobody`, who cannot enter pytest's private
    # temporary directories (request bodies over 1 MiB are buffered there).
    user = "user root;" if os.geteuid() == 0 else ""
    mime = Path("/etc/nginx/mime.types")
    mime_types = f"include {mime};" if mime.is_file() else ""
    conf.write_text(WRAPPER.format(user=user, prefix=prefix, site=site, mime_types=mime_types))
    return conf, port, ipv6


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
) -> Iterator[Nginx]:
    """nginx with the site in front of `upstream` (one port, or several for one upstream)."""
    conf, port, ipv6 = write_config(prefix, certs, upstream, allow, lift_rate_limit=lift_rate_limit)
    checked = nginx_test(conf)
    assert checked.returncode == 0, checked.stderr
    with (prefix / "nginx.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = Nginx(prefix, port, ipv6, process, rate_limit_lifted=lift_rate_limit)
    try:

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited: {server.stderr()}")
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

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
