"""Clock skew: the service's clock moved away from FAL's signed timestamps. Inside the 300 s
tolerance webhooks are accepted and fal_webhook_clock_skew_seconds shows by how much (signed);
beyond it every signature is refused with 401, and no refused signature moves the gauge."""

from __future__ import annotations

import re
import time

from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support.app import WEBHOOK, InProcessApp, running_app
from tests.support.webhooks import fal_ok, new_request_id, signed


def skew(app: InProcessApp) -> float:
    text = app.call("GET", "/metrics").body.decode()
    found = re.search(r"^fal_webhook_clock_skew_seconds (\S+)$", text, re.M)
    assert found, "no fal_webhook_clock_skew_seconds sample"
    return float(found.group(1))


def deliver(app: InProcessApp, signer: FalSigner) -> tuple[int, str]:
    body = fal_ok(new_request_id())
    answer = app.call("POST", WEBHOOK, body, signed(signer, body))
    return answer.status, answer.body.decode()


def test_the_skew_is_measured_inside_the_tolerance_and_refused_beyond(
    sqlite_url: str, signer: FalSigner, jwks: JwksServer
) -> None:
    with running_app(sqlite_url, FAL_JWKS_URL=jwks.jwks_url) as app:
        # The service's clock, moved: FAL signs with the real one.
        app.runtime.clock = lambda: time.time() + 120
        assert deliver(app, signer)[0] == 200
        # A second of rounding (FAL's timestamp is whole seconds) and the call's own time.
        assert 119 <= skew(app) <= 122

        app.runtime.clock = lambda: time.time() - 90
        assert deliver(app, signer)[0] == 200
        assert -92 <= skew(app) <= -89

        # Past the tolerance: refused, and the gauge keeps the last verified value.
        app.runtime.clock = lambda: time.time() + 400
        status, body = deliver(app, signer)
        assert status == 401 and "s from now (allowed: 300 s)" in body, body
        assert -92 <= skew(app) <= -89

        # A stranger's signature (not in FAL's key set) with its own timestamp moves nothing.
        app.runtime.clock = time.time
        stranger = FalSigner()
        forged = fal_ok(new_request_id())
        headers = {
            "Content-Type": "application/json",
            **stranger.headers(forged, "x", timestamp=int(time.time()) - 200),
        }
        assert app.call("POST", WEBHOOK, forged, headers).status == 401
        assert -92 <= skew(app) <= -89
