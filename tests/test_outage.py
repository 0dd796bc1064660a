"""Trouble on our side answers 503 (so FAL retries) and heals without a restart."""

from __future__ import annotations

from tests.fakes.fal_keys import FalSigner, JwksServer
from tests.support import postgres
from tests.support.http import call, post
from tests.support.servers import GunicornServer, free_port, run_cli, wait_until
from tests.support.webhooks import fal_ok, new_request_id, signed

WEBHOOK = "/api/v1/avatar/status_update"


def test_database_outage_gives_503_and_recovers_without_restart(
    cluster: postgres.PrivateCluster, jwks: JwksServer, signer: FalSigner
) -> None:
    env = {"DATABASE_URL": cluster.url, "FAL_JWKS_URL": jwks.jwks_url}
    with GunicornServer(env, workers=2) as server:
        first, second = new_request_id(), new_request_id()
        for rid in (first, second):
            run_cli(
                "avatars", "attach", "--telegram-id", "1", "--name", "A",
                "--training-type", "portrait", "--request-id", rid, env=server.env,
            )  # fmt: skip
        body = fal_ok(first)
        assert post(f"{server.url}{WEBHOOK}", body, signed(signer, body)).status == 200

        cluster.stop()
        body = fal_ok(second)
        down = post(f"{server.url}{WEBHOOK}", body, signed(signer, body))
        assert down.status == 503
        assert down.json()["error"] == "database_unavailable"
        health = call("GET", f"{server.url}/health")
        assert health.status == 503
        assert health.json()["database"] == "error"
        assert call("GET", f"{server.url}/api/v1/webhook/status").status == 503

        cluster.start()

        def accepted() -> bool:
            answer = post(f"{server.url}{WEBHOOK}", body, signed(signer, body))
            return answer.status == 200 and answer.json()["status"] == "received"

        wait_until(accepted, timeout=10, interval=0.2, what="the webhook to recover")
        assert call("GET", f"{server.url}/health").status == 200
        shown = run_cli("avatars", "show", "--request-id", second, "--json", env=server.env)
        assert '"status": "completed"' in shown.stdout


def test_unreachable_key_set_gives_503_not_401(signer: FalSigner) -> None:
    dead = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    with GunicornServer({"FAL_JWKS_URL": dead}, workers=1) as server:
        rid = new_request_id()
        body = fal_ok(rid)
        answer = post(f"{server.url}{WEBHOOK}", body, signed(signer, body))
        assert answer.status == 503
        assert answer.json()["error"] == "keys_unavailable"


def test_key_set_answering_500_gives_503(jwks: JwksServer, signer: FalSigner) -> None:
    jwks.fail(500)
    with GunicornServer({"FAL_JWKS_URL": jwks.jwks_url}, workers=1) as server:
        body = fal_ok(new_request_id())
        assert post(f"{server.url}{WEBHOOK}", body, signed(signer, body)).status == 503
        # Once the key server is back, the same delivery is accepted (after the 1 s back-off).
        jwks.fail(None)

        def accepted() -> bool:
            return post(f"{server.url}{WEBHOOK}", body, signed(signer, body)).status == 200

        wait_until(accepted, timeout=5, interval=0.3, what="the key set to be fetched again")
