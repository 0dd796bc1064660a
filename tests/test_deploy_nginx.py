"""deploy/nginx/ under the real nginx, in Debian's layout, with TLS from `deploy/certs.sh dev`.

The project's files are used as they are, with only paths, listen ports and the upstream
address replaced by plain string replacement (see `render` in tests/support/nginx.py), inside
the host's own Debian nginx.conf (conf.d/*.conf, then sites-enabled/* in sorted order), both
sites enabled. nginx runs from a temporary prefix on free loopback ports and is stopped by its
PID. Behind it is either a small recording stand-in (for what only nginx decides) or the real
app: `python -m service serve`, gunicorn with 2 workers.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import itertools
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support.nginx import (
    LEGACY,
    SHARED,
    SITE,
    Nginx,
    Reply,
    TLSFront,
    missing,
    nginx_test,
    running_nginx,
    write_config,
)
from tests.support.servers import GunicornServer, base_env, free_port, run_cli
from tests.support.webhooks import fal_ok, new_request_id, signed

pytestmark = pytest.mark.nginx

ROOT = Path(__file__).resolve().parents[1]
FAL_NETWORKS_SH = ROOT / "deploy" / "fal-networks.sh"
LIMIT = 10 * 1024 * 1024  # the webhook body limit, nginx's and the app's
SEED_TEST_BODY = b'{"request_id": "test_123", "status": "completed", "training_type": "portrait"}'

# --------------------------------------------------------------------------------------------
# Requests that can be found again in the access log, from addresses of their own


def probe(path: str) -> tuple[str, str]:
    """`path` with a unique query marker, to find its access log line; and the marker."""
    marker = uuid.uuid4().hex
    separator = "&" if "?" in path else "?"
    return f"{path}{separator}probe={marker}", marker


_sources = itertools.count(10)


def fresh_source() -> str:
    """A loopback source address no other test uses, so rate-limit buckets never mix."""
    number = next(_sources)
    assert number < 250
    return f"127.0.0.{number}"


# --------------------------------------------------------------------------------------------
# Upstreams


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    length: int


@dataclass
class StandIn:
    """A tiny recording HTTP/1.1 upstream for what only nginx decides."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self) -> list[str]:
        with self.lock:
            return [s.path for s in self.seen]

    def last(self, marker: str) -> Seen:
        with self.lock:
            matches = [s for s in self.seen if marker in s.path]
        assert len(matches) == 1, matches
        return matches[0]


@contextlib.contextmanager
def stand_in() -> Iterator[StandIn]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The head and the body leave in two writes: with Nagle the body would wait for nginx's
        # delayed ACK (~40 ms a request), so a "flood" through the stand-in was ~40 requests/s.
        disable_nagle_algorithm = True
        record: StandIn

        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            remaining = length
            while remaining:
                remaining -= len(self.rfile.read(min(remaining, 1 << 20)))
            with self.record.lock:
                self.record.seen.append(
                    Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                         length)
                )  # fmt: skip
            body = json.dumps({"status": "ok", "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_HEAD = do_PUT = handle_any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    Handler.record = StandIn(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Handler.record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Site(TLSFront):
    """nginx in front of an upstream: the stand-in or the real app."""

    kind: str
    nginx: Nginx
    context: ssl.SSLContext
    app: GunicornServer | None = None
    stub: StandIn | None = None

    @property
    def port(self) -> int:
        return self.nginx.port

    def reached_upstream(self, marker: str) -> bool:
        return bool(self.nginx.entry(marker)["upstream_addr"])


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def fal_signer() -> FalSigner:
    return FalSigner()


@pytest.fixture(scope="module")
def fal_keys(fal_signer: FalSigner) -> Iterator[JwksServer]:
    with JwksServer() as server:
        server.add(fal_signer)
        yield server


@pytest.fixture(scope="module")
def stub_site(
    tmp_path_factory: pytest.TempPathFactory, certs: Path, client_context: ssl.SSLContext
) -> Iterator[Site]:
    with (
        stand_in() as stub,
        running_nginx(tmp_path_factory.mktemp("nginx-stub"), certs, stub.port) as nginx,
    ):
        yield Site("stub", nginx, client_context, stub=stub)


@contextlib.contextmanager
def app_behind_nginx(
    prefix: Path, certs: Path, context: ssl.SSLContext, env: dict[str, str]
) -> Iterator[Site]:
    with GunicornServer(env, workers=2) as app, running_nginx(prefix, certs, app.port) as nginx:
        yield Site("app", nginx, context, app=app)


@pytest.fixture(scope="module")
def app_site(
    tmp_path_factory: pytest.TempPathFactory,
    certs: Path,
    client_context: ssl.SSLContext,
    fal_keys: JwksServer,
) -> Iterator[Site]:
    env = {"FAL_JWKS_URL": fal_keys.jwks_url}
    with app_behind_nginx(tmp_path_factory.mktemp("nginx-app"), certs, client_context, env) as s:
        yield s


@pytest.fixture(params=["stub", "app"])
def site(request: pytest.FixtureRequest) -> Site:
    """The checks of the issue's list that hold for nginx alone and end to end alike."""
    fixture = "stub_site" if request.param == "stub" else "app_site"
    value: Site = request.getfixturevalue(fixture)
    return value


# --------------------------------------------------------------------------------------------
# The configuration itself


def test_nginx_t_accepts_the_real_site_file(tmp_path: Path, certs: Path) -> None:
    layout = write_config(tmp_path, certs, upstream=free_port())
    result = nginx_test(layout.conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr, result.stderr


def test_nginx_t_fails_on_a_broken_site(tmp_path: Path, certs: Path) -> None:
    """The check above can fail: a missing certificate and a bad directive are caught."""
    layout = write_config(tmp_path, tmp_path / "no-certs", upstream=free_port())
    assert nginx_test(layout.conf).returncode != 0
    layout = write_config(tmp_path, certs, upstream=free_port())
    site = tmp_path / "sites-available" / SITE.name
    site.write_text(site.read_text().replace("limit_req_status 429;", "limit_req_status 99;"))
    assert nginx_test(layout.conf).returncode != 0


def test_debian_reads_the_legacy_site_first_and_both_sites_still_load(
    tmp_path: Path, certs: Path
) -> None:
    """sites-enabled/* is read in sorted order, so the legacy site comes before the main one:
    every definition they share must come from conf.d/, which Debian reads before any site."""
    layout = write_config(tmp_path, certs, upstream=free_port())
    enabled = sorted(p.name for p in (tmp_path / "sites-enabled").iterdir())
    assert enabled == [LEGACY.name, SITE.name], "the order this test is about"
    conf = layout.conf.read_text()
    assert conf.index(f"{tmp_path}/conf.d/*.conf") < conf.index(f"{tmp_path}/sites-enabled/*")
    assert nginx_test(layout.conf).returncode == 0

    # Each site alone works too (the legacy one left behind, the main one before migration).
    for name in enabled:
        (tmp_path / "sites-enabled" / name).rename(tmp_path / name)
        result = nginx_test(layout.conf)
        assert result.returncode == 0, (name, result.stderr)
        (tmp_path / name).rename(tmp_path / "sites-enabled" / name)

    # The layout of the issue: the shared definitions inside the main site, none in conf.d.
    # Debian's order then reads the legacy site before the log format it uses.
    shared = tmp_path / "conf.d" / SHARED.name
    main = tmp_path / "sites-available" / SITE.name
    main.write_text(shared.read_text() + main.read_text())
    shared.unlink()
    broken = nginx_test(layout.conf)
    assert broken.returncode != 0
    assert 'unknown log format "aibots_kz_json"' in broken.stderr, broken.stderr


def test_the_sites_load_beside_debians_default_site(tmp_path: Path, certs: Path) -> None:
    """KEEP_DEFAULT_SITE=1 (a host serving other sites) leaves Debian's own default site
    enabled: read after both aibots.kz sites, and everything still loads."""
    default = Path("/etc/nginx/sites-available/default")
    if not default.is_file():
        missing("Debian's default site is not installed here", "apt-get install nginx")
    layout = write_config(tmp_path, certs, upstream=free_port())
    port = free_port()
    text = default.read_text()
    for listen in ("listen 80 default_server;", "listen [::]:80 default_server;"):
        assert listen in text, f"{listen!r} is gone from Debian's default site"
    text = text.replace("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;")
    text = text.replace("listen [::]:80 default_server;", "")
    (tmp_path / "sites-enabled" / "default").write_text(text)
    assert sorted(p.name for p in (tmp_path / "sites-enabled").iterdir())[-1] == "default"
    result = nginx_test(layout.conf)
    assert result.returncode == 0, result.stderr


def test_only_prefixed_names_are_defined_at_http_level() -> None:
    """conf.d/ is read for every site of the host: nothing there may touch the others."""
    defined = re.findall(r"^(?:log_format|upstream)\s+(\S+)|zone=(\w+)", SHARED.read_text(), re.M)
    names = [a or b for a, b in defined]
    assert names and all(n.startswith("aibots_kz_") for n in names), names
    for line in SHARED.read_text().splitlines():
        directive = line.split("#", 1)[0].strip()
        assert not directive.startswith(("server {", "error_page", "add_header", "ssl_")), line


# --------------------------------------------------------------------------------------------
# TLS


def tls_handshake(
    port: int,
    context: ssl.SSLContext,
    hostname: str = "aibots.kz",
    address: str = "127.0.0.1",
    session: ssl.SSLSession | None = None,
) -> tuple[str | None, str | None, bool, ssl.SSLSession | None]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as raw:
        raw.settimeout(10)
        raw.connect((address, port))
        with context.wrap_socket(raw, server_hostname=hostname, session=session) as tls:
            cipher = tls.cipher()
            # TLS 1.3 session tickets arrive after the handshake: read a response first.
            tls.sendall(b"GET /nowhere HTTP/1.1\r\nHost: aibots.kz\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):
                pass
            reused = bool(tls.session_reused)
            return tls.version(), cipher[0] if cipher else None, reused, tls.session


def permissive_client(version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    """A client that would speak `version` (old ones too): no verification, any cipher."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers(ciphers or "ALL:@SECLEVEL=0")
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    return context


def test_only_tls_1_2_and_1_3_are_offered(stub_site: Site, certs: Path) -> None:
    port = stub_site.nginx.port
    for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        assert tls_handshake(port, permissive_client(version))[0] == name

    # Control: this client can speak TLS 1.1 and 1.0 to a server that offers them ...
    for old in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.set_ciphers("ALL:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            server.minimum_version = server.maximum_version = old
        server.load_cert_chain(certs / "aibots_kz.chain.crt", certs / "aibots.kz.key")
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)

            def serve_one(
                listener: socket.socket = listener, server: ssl.SSLContext = server
            ) -> None:
                conn, _ = listener.accept()
                with contextlib.suppress(OSError), server.wrap_socket(conn, server_side=True) as s:
                    s.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
                conn.close()

            thread = threading.Thread(target=serve_one, daemon=True)
            thread.start()
            try:
                with socket.create_connection(listener.getsockname(), timeout=10) as raw:
                    client = permissive_client(old)
                    with client.wrap_socket(raw, server_hostname="aibots.kz") as tls:
                        assert tls.version() in ("TLSv1.1", "TLSv1")
            except ssl.SSLError as exc:
                pytest.fail(f"the control client cannot speak {old.name} at all: {exc}")
            finally:
                thread.join(10)
        # ... and nginx, though Debian's http {} defaults list them, refuses them.
        with pytest.raises(ssl.SSLError):
            tls_handshake(port, permissive_client(old))


def test_only_forward_secret_aead_ciphers_with_tls_1_2(stub_site: Site) -> None:
    port = stub_site.nginx.port
    tls12 = ssl.TLSVersion.TLSv1_2
    for good in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                 "ECDHE-RSA-CHACHA20-POLY1305"):  # fmt: skip
        assert tls_handshake(port, permissive_client(tls12, good))[1] == good
    for bad in ("AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA", "DHE-RSA-AES128-SHA"):
        with pytest.raises(ssl.SSLError):
            tls_handshake(port, permissive_client(tls12, bad))


def test_the_chain_is_served_and_the_name_aibots_kz_verifies(
    stub_site: Site, certs: Path, client_context: ssl.SSLContext
) -> None:
    port = stub_site.nginx.port
    # The root alone cannot verify the certificate: the intermediate must come from nginx.
    alone = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "aibots_kz.crt")],
        capture_output=True,
        text=True,
    )
    assert alone.returncode != 0
    version, _, _, _ = tls_handshake(port, client_context, hostname="aibots.kz")
    assert version in ("TLSv1.2", "TLSv1.3")
    if stub_site.nginx.ipv6:
        assert tls_handshake(port, client_context, address="::1")[0] is not None

    # The same client refuses another name, and a client of the public trust store refuses
    # the throw-away CA: the verification above is real.
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(port, client_context, hostname="evil.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(port, ssl.create_default_context(), hostname="aibots.kz")


def test_tls_sessions_are_resumed_from_the_server_cache(stub_site: Site) -> None:
    context = permissive_client(ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256")
    _, _, reused, session = tls_handshake(stub_site.nginx.port, context)
    assert not reused and session is not None
    _, _, reused, _ = tls_handshake(stub_site.nginx.port, context, session=session)
    assert reused


# --------------------------------------------------------------------------------------------
# What nginx does by itself (the stand-in upstream records what reaches it)


def test_proxy_headers_carry_the_real_client_and_drop_forged_ones(stub_site: Site) -> None:
    source = fresh_source()
    path, marker = probe("/api/v1/webhook/status")
    reply = stub_site.call(
        "GET",
        path,
        headers={"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9"},
        source=source,
    )
    assert reply.status == 200
    assert reply.headers["strict-transport-security"] == "max-age=63072000"
    assert stub_site.stub is not None
    seen = stub_site.stub.last(marker).headers
    assert seen["x-forwarded-for"] == source
    assert seen["x-forwarded-proto"] == "https"
    assert seen["host"] == "aibots.kz"
    assert "forwarded" not in seen
    assert len(seen["x-request-id"]) == 32
    assert stub_site.nginx.entry(marker)["request_id"] == seen["x-request-id"]


def test_only_the_service_paths_are_exposed(stub_site: Site) -> None:
    source = fresh_source()
    for path in ("/", "/api", "/health/", "/healthz", "/.env", "/index.html", "/metrics/",
                 "/static/app.js", "/server-status", "/telegram", "/telegramx"):  # fmt: skip
        target, marker = probe(path)
        reply = stub_site.call("GET", target, source=source)
        assert reply.status == 404, (path, reply)
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["error"] == "not_found"
        assert not stub_site.reached_upstream(marker), path
    for path in ("/health", "/api/v1/webhook/status", "/api/v1/openapi.json", "/api/anything"):
        target, marker = probe(path)
        assert stub_site.call("GET", target, source=source).status == 200, path
        assert stub_site.reached_upstream(marker), path


def test_metrics_only_from_the_host(stub_site: Site) -> None:
    target, marker = probe("/metrics")
    reply = stub_site.call("GET", target, source=fresh_source())
    assert reply.status == 403
    assert reply.json() == {
        "error": "forbidden",
        "detail": "This client may not use this resource.",
    }
    assert not stub_site.reached_upstream(marker)
    target, marker = probe("/metrics")
    assert stub_site.call("GET", target, source="127.0.0.1").status == 200
    assert stub_site.reached_upstream(marker)


def raw_exchange(port: int, request: bytes, tls: ssl.SSLContext | None) -> Reply:
    """Send `request` as it is (over TLS when given a context), read the answer until nginx
    closes the connection, and split it; status 0 if there is no HTTP/1.x status line."""
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        if tls is not None:
            sock = stack.enter_context(tls.wrap_socket(sock, server_hostname="aibots.kz"))
        sock.sendall(request)
        answer = b""
        with contextlib.suppress(ConnectionResetError, ssl.SSLEOFError):
            while chunk := sock.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3}) ", lines[0])
    if not match:
        return Reply(0, {}, answer)
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Reply(int(match.group(1)), {k.lower(): v for k, v in headers.items()}, body)


BAD_REQUESTS = [
    # (what, the bytes, the status the client must see, the error code)
    ("a word, no method or version", b"hello\r\n\r\n", 400, "bad_request"),
    ("no URI", b"GET  HTTP/1.1\r\nHost: aibots.kz\r\n\r\n", 400, "bad_request"),
    ("a lowercase method", b"get / HTTP/1.1\r\nHost: aibots.kz\r\n\r\n", 400, "bad_request"),
    ("HTTP/1.1 without Host", b"GET /health HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ("HTTP/2.0 in a request line", b"GET / HTTP/2.0\r\nHost: aibots.kz\r\n\r\n", 505,
     "http_version_not_supported"),
    ("HTTP/3.1", b"GET /health HTTP/3.1\r\nHost: aibots.kz\r\n\r\n", 505,
     "http_version_not_supported"),
    ("a bad Content-Length", b"POST /api/v1/avatar/status_update HTTP/1.1\r\nHost: aibots.kz"
     b"\r\nContent-Length: ten\r\n\r\n", 400, "bad_request"),
    ("an unknown Transfer-Encoding", b"POST /api/v1/avatar/status_update HTTP/1.1\r\n"
     b"Host: aibots.kz\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not_implemented"),
    ("a header over the buffers", b"GET /health HTTP/1.1\r\nHost: aibots.kz\r\nX-Big: "
     + b"a" * 20000 + b"\r\n\r\n", 400, "headers_too_large"),
    ("a URI over the buffers", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: aibots.kz"
     b"\r\n\r\n", 414, "uri_too_long"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "request_bytes", "status", "error"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])  # fmt: skip
def test_unparsable_requests_get_json_errors_over_tls(
    stub_site: Site, what: str, request_bytes: bytes, status: int, error: str
) -> None:
    """What TLS scanners send: every answer is the README's JSON with the right status."""
    errors_before = stub_site.nginx.error_log()
    assert stub_site.stub is not None
    reached_before = len(stub_site.stub.paths())
    reply = raw_exchange(stub_site.nginx.port, request_bytes, stub_site.context)
    assert reply.status == status, (what, reply)
    assert reply.headers["content-type"] == "application/json", reply.headers
    assert reply.json() == {"error": error, "detail": reply.json()["detail"]}
    assert reply.json()["detail"]
    assert b"nginx/" not in reply.body and "nginx/" not in reply.headers.get("server", "")
    assert len(stub_site.stub.paths()) == reached_before, "nginx answered it by itself"
    assert "empty URI in redirect" not in stub_site.nginx.error_log()[len(errors_before) :]


def test_the_error_pages_cannot_be_asked_for(stub_site: Site) -> None:
    reply = stub_site.call("GET", "/_aibots_kz_error/500", source=fresh_source())
    assert reply.status == 404 and reply.json()["error"] == "not_found"


def test_a_dead_upstream_gives_json_502(
    tmp_path: Path, certs: Path, client_context: ssl.SSLContext
) -> None:
    with running_nginx(tmp_path, certs, upstream=free_port()) as nginx:
        site = Site("none", nginx, client_context)
        for path in ("/health", "/api/v1/avatar/status_update"):
            reply = site.call("POST" if "avatar" in path else "GET", path, body=b"{}")
            assert reply.status == 502, reply
            assert reply.json()["error"] == "upstream_unavailable"


def test_fal_allow_list_from_the_published_ranges(
    tmp_path: Path, certs: Path, client_context: ssl.SSLContext
) -> None:
    """deploy/fal-networks.sh fills the template from FAL's meta document; nginx enforces it."""

    class Meta(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/v1/meta":
                self.send_error(404)
                return
            body = json.dumps({"webhook_ip_ranges": ["127.0.0.3/32", "2001:db8:fa1::/48"]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: Any) -> None:
            pass

    allow = tmp_path / "aibots.kz.d"
    allow.mkdir()
    meta = http.server.HTTPServer(("127.0.0.1", 0), Meta)
    thread = threading.Thread(target=meta.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{meta.server_address[1]}/v1/meta"
        made = subprocess.run(
            ["bash", str(FAL_NETWORKS_SH), "--meta-url", url, "--output",
             str(allow / "fal-networks.conf")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        refused = subprocess.run(
            ["bash", str(FAL_NETWORKS_SH), "--meta-url", url + "/missing"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode != 0 and "cannot read" in refused.stderr
    finally:
        meta.shutdown()
        meta.server_close()
        thread.join(5)
    text = (allow / "fal-networks.conf").read_text()
    assert "allow 127.0.0.3/32;" in text and "allow 2001:db8:fa1::/48;" in text

    with stand_in() as stub, running_nginx(tmp_path / "nginx", certs, stub.port, allow) as nginx:
        site = Site("stub", nginx, client_context, stub=stub)
        for source, admitted in (("127.0.0.3", True), ("127.0.0.1", True), ("127.0.0.4", False)):
            for path in ("/api/v1/avatar/status_update", "/api/avatar/status_update"):
                target, marker = probe(path)
                reply = site.call("POST", target, body=b"{}", source=source)
                assert (reply.status == 200) is admitted, (source, path, reply)
                if not admitted:
                    assert reply.status == 403 and reply.json()["error"] == "forbidden"
                assert site.reached_upstream(marker) is admitted
        # The allow-list guards the webhook only.
        assert site.call("GET", "/health", source="127.0.0.4").status == 200


TELEGRAM_NETWORKS = ROOT / "deploy" / "nginx" / "telegram-networks.conf"


def test_telegram_location_reaches_the_bot_only_and_its_allow_list_holds(
    tmp_path: Path, certs: Path, client_context: ssl.SSLContext
) -> None:
    """/telegram/ goes to the bot's upstream and nothing else does; with the optional
    allow-list in aibots.kz.d/telegram/, other clients get nginx's JSON 403."""
    text = TELEGRAM_NETWORKS.read_text()
    allowed = re.findall(r"(?m)^allow (\S+);", text)
    assert allowed == ["127.0.0.1", "::1", "149.154.160.0/20", "91.108.4.0/22"]
    assert text.rstrip().endswith("deny all;")
    allow = tmp_path / "aibots.kz.d"
    with stand_in() as app, stand_in() as bot:
        for enabled in (False, True):
            if enabled:
                (allow / "telegram").mkdir(parents=True)
                (allow / "telegram" / "telegram-networks.conf").write_text(text)
            prefix = tmp_path / f"nginx-{enabled}"
            with running_nginx(prefix, certs, app.port, allow, bot=bot.port) as nginx:
                site = Site("stub", nginx, client_context, stub=app)
                for source in ("127.0.0.1", "127.0.0.7"):
                    target, marker = probe("/telegram/somepath")
                    reply = site.call("POST", target, body=b"{}", source=source)
                    admitted = source == "127.0.0.1" or not enabled
                    assert (reply.status == 200) is admitted, (enabled, source, reply)
                    if admitted:
                        assert any(marker in path for path in bot.paths())
                    else:
                        assert reply.json()["error"] == "forbidden"
                        assert not site.reached_upstream(marker)
                # The bot sees nothing else, and the app nothing of Telegram's.
                target, marker = probe("/api/v1/avatar/status_update")
                site.call("POST", target, body=b"{}")
                assert not any(marker in path for path in bot.paths())
                assert not any("/telegram/" in path for path in app.paths())


def test_a_body_at_the_limit_passes_on_the_webhook_only(site: Site) -> None:
    source = fresh_source()
    target, marker = probe("/api/v1/avatar/status_update")
    reply = site.call("POST", target, body=b"x" * LIMIT, source=source)
    assert site.reached_upstream(marker)
    if site.stub is not None:
        assert reply.status == 200
        assert site.stub.last(marker).length == LIMIT
    else:
        # Unsigned garbage, so the app refuses it, but not as too large: its limit is the same.
        assert reply.status in (400, 401), reply
        assert reply.json()["error"] != "payload_too_large"
    # Elsewhere nginx's default of 1 MiB holds.
    target, marker = probe("/api/v1/other")
    reply = site.call("POST", target, body=b"x" * (1024 * 1024 + 1), source=source)
    assert reply.status == 413
    assert "1 MiB" in reply.json()["detail"] and "10 MiB" not in reply.json()["detail"]
    assert not site.reached_upstream(marker)


def test_limits_agree_with_the_apps_gunicorn_settings() -> None:
    """gunicorn must keep idle connections longer than nginx reuses them (else a POST after a
    lull meets a closed connection), and the body limits must be the same."""
    from service.settings import MAX_BODY_BYTES
    from service.web.server import KEEPALIVE_SECONDS

    text = SITE.read_text()
    upstream = re.search(r"upstream aibots_kz_app \{(.*?)\n\}", SHARED.read_text(), re.S)
    assert upstream
    nginx_keepalive = re.search(r"^\s*keepalive_timeout (\d+)s;", upstream.group(1), re.M)
    assert nginx_keepalive
    assert int(nginx_keepalive.group(1)) < KEEPALIVE_SECONDS
    for path in ("/api/v1/avatar/status_update", "/api/avatar/status_update"):
        block = re.search(rf"location = {re.escape(path)} \{{(.*?)\}}", text, re.S)
        assert block, path
        size = re.search(r"client_max_body_size (\d+)m;", block.group(1))
        assert size and int(size.group(1)) * 1024 * 1024 == MAX_BODY_BYTES == LIMIT


def plain_http(port: int, method: str, path: str, body: bytes | None = None) -> Reply:
    """One plain-HTTP request to the legacy site's port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": "aibots.kz", "Content-Type": "application/json"}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def test_the_optional_legacy_http_site_serves_the_old_path_only(stub_site: Site) -> None:
    """aibots.kz-legacy-http.conf, enabled beside the main site: the old URL over plain HTTP."""
    port = stub_site.nginx.legacy_port
    target, marker = probe("/api/avatar/status_update")
    assert plain_http(port, "POST", target, b"{}").status == 200
    assert stub_site.stub is not None
    assert stub_site.stub.last(marker).headers["x-forwarded-proto"] == "http"
    for method, path in (("POST", "/api/v1/avatar/status_update"), ("GET", "/health"),
                         ("GET", "/metrics"), ("GET", "/")):  # fmt: skip
        reply = plain_http(port, method, path, b"{}" if method == "POST" else None)
        assert reply.status == 404, path
        assert reply.json() == {"error": "not_found", "detail": "No such resource."}
    # Its own errors are JSON too, with the old path's limit in the 413.
    too_large = plain_http(port, "POST", "/api/avatar/status_update", b"x" * (LIMIT + 1))
    assert too_large.status == 413
    assert "10 MiB" in too_large.json()["detail"]
    answer = raw_exchange(port, b"hello\r\n\r\n", tls=None)
    assert answer.status == 400 and answer.json()["error"] == "bad_request"


# --------------------------------------------------------------------------------------------
# The list, through nginx to the stand-in and to the real app


def test_a_body_over_the_limit_gets_413_from_nginx(site: Site) -> None:
    source = fresh_source()
    target, marker = probe("/api/v1/avatar/status_update")
    connection = site.connection(source)
    try:
        # Announced length over the limit: nginx answers before any of the body is sent.
        connection.putrequest("POST", target)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(LIMIT + 1))
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 413
    assert json.loads(body)["error"] == "payload_too_large"
    assert "10 MiB" in json.loads(body)["detail"], "the webhook's own limit"
    assert not site.reached_upstream(marker)

    # Chunked, so nginx only learns the size while reading.
    target, marker = probe("/api/avatar/status_update")

    def chunks() -> Iterator[bytes]:
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    connection = site.connection(source)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            connection.request("POST", target, body=chunks(), encode_chunked=True,
                               headers={"Transfer-Encoding": "chunked"})  # fmt: skip
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 413
    assert not site.reached_upstream(marker)


def test_the_webhook_path_never_redirects(site: Site) -> None:
    source = fresh_source()
    body = json.dumps({"request_id": f"probe-{uuid.uuid4()}", "status": "completed"}).encode()
    attempts = [
        ("POST", "/api/v1/avatar/status_update"),
        ("POST", "/api/v1/avatar/status_update/"),
        ("POST", "/api/v1/avatar/status_update?avatar_id=a1&training_type=portrait"),
        ("POST", "//api/v1/avatar/status_update"),
        ("POST", "/api/v1/avatar/../avatar/status_update"),
        ("POST", "/api/v1/avatar/status_update/."),
        ("POST", "/api/avatar/status_update"),
        ("POST", "/api/avatar/status_update/"),
        ("POST", "/API/v1/avatar/status_update"),
        ("GET", "/api/v1/avatar/status_update"),
        ("GET", "/api/v1/avatar/status_update/"),
        ("HEAD", "/api/v1/avatar/status_update"),
        ("PUT", "/api/v1/avatar/status_update"),
        ("GET", "/api"),
        ("GET", "/api/"),
        ("GET", "/api/v1"),
        ("GET", "/api/v1/"),
        ("GET", "/api/v1/avatar"),
        ("GET", "/health/"),
        ("GET", "/"),
    ]
    for method, path in attempts:
        connection = site.connection(source)
        try:
            connection.request(
                method, path, body=body if method in ("POST", "PUT") else None,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        assert not 300 <= response.status < 400, (method, path, response.status)
        assert response.getheader("Location") is None, (method, path)
        time.sleep(0.02)


def test_plain_http_on_the_tls_port_does_not_reach_the_app(site: Site) -> None:
    body = json.dumps({"request_id": f"probe-{uuid.uuid4()}", "status": "completed"}).encode()
    for request in (
        b"GET /health?probe={m} HTTP/1.1\r\nHost: aibots.kz\r\nConnection: close\r\n\r\n",
        b"POST /api/v1/avatar/status_update?probe={m} HTTP/1.1\r\nHost: aibots.kz:8443\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(body)
        + body,
    ):
        marker = uuid.uuid4().hex
        with socket.create_connection(("127.0.0.1", site.nginx.port), timeout=10) as raw:
            raw.sendall(request.replace(b"{m}", marker.encode()))
            answer = b""
            while chunk := raw.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert json.loads(body)["error"] == "https_required"
        assert b"\r\nlocation:" not in head.lower()
        assert not site.reached_upstream(marker)


def burst(site: Site, source: str, count: int, path: str = "/health") -> list[int]:
    """`count` requests back to back on one keep-alive connection; their statuses."""
    connection = site.connection(source)
    statuses = []
    try:
        for _ in range(count):
            statuses.append(connection.call("GET", path).status)
    finally:
        connection.close()
    return statuses


def test_a_flood_from_one_client_gets_429(site: Site) -> None:
    statuses = burst(site, fresh_source(), 150)
    assert set(statuses) <= {200, 429}, statuses
    assert 429 not in statuses[:45], "the burst allowance (50) must pass first"
    assert statuses.count(429) >= 40, statuses
    reply = site.call("GET", "/health", source=fresh_source())
    assert reply.status == 200, "another client is not affected"


def test_a_429_says_when_to_retry(stub_site: Site) -> None:
    connection = stub_site.connection(fresh_source())
    replies: list[Reply] = []
    try:
        # Until the bucket is empty: how fast it empties depends on the machine.
        while len(replies) < 400 and not any(r.status == 429 for r in replies[-5:]):
            replies.append(connection.call("GET", "/health"))
        replies += [connection.call("GET", "/health") for _ in range(5)]
    finally:
        connection.close()
    limited = [r for r in replies if r.status == 429]
    assert limited, [r.status for r in replies]
    for reply in limited:
        assert reply.headers["retry-after"] == "1"
        assert reply.json()["error"] == "rate_limited"
        assert reply.headers["strict-transport-security"] == "max-age=63072000"
    assert "retry-after" not in replies[0].headers


def test_a_paced_client_and_a_burst_from_a_few_addresses_pass(site: Site) -> None:
    # FAL-like: three addresses, 30 callbacks each, all at once.
    sources = [fresh_source() for _ in range(3)]
    results: dict[str, list[int]] = {}

    def send(source: str) -> None:
        results[source] = burst(site, source, 30, "/api/v1/webhook/status")

    threads = [threading.Thread(target=send, args=(s,)) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(results[s] == [200] * 30 for s in sources), results

    # A steady client under the limit (10 r/s), well past the burst allowance (50): 60 requests
    # at 8 r/s. More than burst + 1 requests, so the allowance alone cannot pass them all: the
    # bucket must drain at about the rate (one under ~1.2 r/s would refuse the last ones).
    # Each request starts at least 125 ms after the one before and never early to catch up, so
    # however late a loaded machine runs one, nginx never gets more than 8 r/s plus two requests
    # in any stretch of time: its excess stays within two requests of zero, far from the 50.
    connection = site.connection(fresh_source())
    statuses = []
    try:
        for _ in range(60):
            started = time.monotonic()
            statuses.append(connection.call("GET", "/health").status)
            time.sleep(max(0.0, 0.125 - (time.monotonic() - started)))
    finally:
        connection.close()
    assert statuses == [200] * 60, statuses


# --------------------------------------------------------------------------------------------
# End to end with the real app


def test_the_seed_checks_over_https(app_site: Site) -> None:
    health = app_site.call("GET", "/health")
    assert health.status == 200
    assert health.json()["status"] == "ok" and health.json()["database"] == "ok"

    status = app_site.call("GET", "/api/v1/webhook/status")
    assert status.status == 200
    assert isinstance(status.json(), dict)

    # The first delivery of the seed's test body is stored as unmatched (no such training);
    # the same bytes again, on the old path, are a duplicate.
    answers = []
    for path in ("/api/v1/avatar/status_update", "/api/avatar/status_update"):
        reply = app_site.call(
            "POST", path, body=SEED_TEST_BODY, headers={"Content-Type": "application/json"}
        )
        assert reply.status == 200, reply
        answers.append(reply.json())
    assert answers == [
        {"status": "unmatched", "request_id": "test_123"},
        {"status": "duplicate", "request_id": "test_123"},
    ]
    assert app_site.call("GET", "/metrics").status == 200


def test_a_signed_fal_completion_is_accepted_and_recorded(
    app_site: Site, fal_signer: FalSigner
) -> None:
    assert app_site.app is not None
    env = base_env(DATABASE_URL=app_site.app.database_url)
    request_id = new_request_id()
    attached = run_cli(
        "avatars", "attach", "--telegram-id", "424242", "--name", "Anna",
        "--training-type", "portrait", "--request-id", request_id, env=env,
    )  # fmt: skip
    assert json.loads(attached.stdout)["status"] == "training"

    body = fal_ok(request_id)
    source = fresh_source()  # any client: the signature is what counts
    target, marker = probe("/api/v1/avatar/status_update")
    reply = app_site.call("POST", target, body=body, headers=signed(fal_signer, body),
                          source=source)  # fmt: skip
    assert reply.status == 200, reply
    assert reply.json() == {"status": "received", "request_id": request_id}
    entry = app_site.nginx.entry(marker)
    assert entry["fal_request_id"] == request_id and entry["upstream_status"] == "200"

    shown = run_cli("avatars", "show", "--request-id", request_id, "--json", env=env)
    avatar = json.loads(shown.stdout)
    assert avatar["status"] == "completed"
    assert avatar["lora_url"] == "https://fal.media/files/lora.safetensors"

    # FAL's retry of the same delivery (signed anew) is a duplicate, through nginx too.
    again = app_site.call("POST", "/api/v1/avatar/status_update", body=body,
                          headers=signed(fal_signer, body), source=source)  # fmt: skip
    assert again.status == 200 and again.json()["status"] == "duplicate"


def test_an_unsigned_webhook_from_another_client_is_refused(app_site: Site) -> None:
    """nginx connects from loopback, but the app judges by the client nginx saw."""
    for source in ("127.0.0.2", fresh_source()):
        reply = app_site.call(
            "POST",
            "/api/v1/avatar/status_update",
            body=SEED_TEST_BODY,
            headers={"Content-Type": "application/json", "X-Forwarded-For": "127.0.0.1"},
            source=source,
        )
        assert reply.status == 401, (source, reply)
        assert set(reply.json()) == {"error", "detail"}


def test_the_app_sees_the_real_client_address(
    tmp_path_factory: pytest.TempPathFactory,
    certs: Path,
    client_context: ssl.SSLContext,
    fal_keys: JwksServer,
    fal_signer: FalSigner,
) -> None:
    env = {"FAL_JWKS_URL": fal_keys.jwks_url, "ALLOWED_IPS": "127.0.0.2/32"}
    prefix = tmp_path_factory.mktemp("nginx-allowed-ips")
    with app_behind_nginx(prefix, certs, client_context, env) as site:

        def post(source: str, headers: dict[str, str] | None = None) -> Reply:
            body = fal_ok(new_request_id())
            return site.call("POST", "/api/v1/avatar/status_update", body=body,
                             headers={**signed(fal_signer, body), **(headers or {})},
                             source=source)  # fmt: skip

        admitted = post("127.0.0.2")
        assert admitted.status == 200, admitted
        assert admitted.json()["status"] == "unmatched"
        # A client elsewhere claiming to be 127.0.0.2: from the host itself (an address the
        # app trusts as a proxy) and from another address.
        for source in ("127.0.0.1", "127.0.0.3"):
            forged = post(source, {"X-Forwarded-For": "127.0.0.2"})
            assert forged.status == 403, (source, forged)
            assert set(forged.json()) == {"error", "detail"}
            forged = post(source, {"X-Forwarded-For": "127.0.0.2, 127.0.0.1"})
            assert forged.status == 403, (source, forged)
