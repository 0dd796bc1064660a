"""Building webhook bodies the way FAL (and the old system) send them."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.fakes.fal_keys import FalSigner


def fal_ok(request_id: str, lora: str = "https://fal.media/files/lora.safetensors") -> bytes:
    body = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK",
        "payload": {
            "diffusers_lora_file": {
                "url": lora,
                "content_type": "application/octet-stream",
                "file_name": "pytorch_lora_weights.safetensors",
                "file_size": 89745224,
            },
            "config_file": {
                "url": "https://fal.media/files/config.json",
                "content_type": "application/octet-stream",
                "file_name": "config.json",
                "file_size": 1234,
            },
        },
    }
    return json.dumps(body).encode()


def fal_error(request_id: str) -> bytes:
    body = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "ERROR",
        "error": "Invalid status code: 422",
        "payload": {"detail": [{"loc": ["body", "images_data_url"], "msg": "file not found"}]},
    }
    return json.dumps(body).encode()


def legacy(request_id: str, status: str, **extra: Any) -> bytes:
    return json.dumps({"request_id": request_id, "status": status, **extra}).encode()


def signed(signer: FalSigner, body: bytes, request_id: str | None = None) -> dict[str, str]:
    rid = request_id or json.loads(body)["request_id"]
    return {"Content-Type": "application/json", **signer.headers(body, rid)}


def new_request_id() -> str:
    return str(uuid.uuid4())
