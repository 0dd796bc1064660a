"""Webhook bodies: FAL's real ones, the older forms, the comment string, and what is refused."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.fal.comment import KNOWN_KEYS, parse_comment
from service.fal.payload import (
    Event,
    EventStatus,
    PayloadError,
    RequestIdMismatch,
    parse_body,
    parse_event,
)

LORA_URL = "https://v3.fal.media/files/koala/pytorch_lora_weights.safetensors"
CONFIG_URL = "https://v3.fal.media/files/koala/config.json"

# FAL's documented webhook bodies, as they come off the wire.
FAL_OK = json.dumps(
    {
        "request_id": "123e4567-e89b-12d3-a456-426614174000",
        "gateway_request_id": "123e4567-e89b-12d3-a456-426614174000",
        "status": "OK",
        "payload": {
            "diffusers_lora_file": {
                "url": LORA_URL,
                "content_type": "application/octet-stream",
                "file_name": "pytorch_lora_weights.safetensors",
                "file_size": 89745224,
            },
            "config_file": {
                "url": CONFIG_URL,
                "content_type": "application/json",
                "file_name": "config.json",
                "file_size": 452,
            },
        },
    }
).encode()

FAL_ERROR = json.dumps(
    {
        "request_id": "123e4567-e89b-12d3-a456-426614174000",
        "gateway_request_id": "123e4567-e89b-12d3-a456-426614174000",
        "status": "ERROR",
        "error": "Invalid status code: 422",
        "payload": {
            "detail": [
                {
                    "loc": ["body", "images_data_url"],
                    "msg": "field required",
                    "type": "value_error.missing",
                }
            ]
        },
    }
).encode()

FAL_PAYLOAD_ERROR = json.dumps(
    {
        "request_id": "123e4567-e89b-12d3-a456-426614174000",
        "gateway_request_id": "123e4567-e89b-12d3-a456-426614174000",
        "status": "OK",
        "payload": None,
        "payload_error": "Response payload is not JSON serializable. Either return a JSON "
        "serializable object or use the queue endpoint to retrieve the response.",
    }
).encode()


def event(
    body: dict[str, Any], query: dict[str, str] | None = None, signed: str | None = None
) -> Event:
    """Parse as the endpoint does: the raw bytes, then the decoded object."""
    return parse_event(parse_body(json.dumps(body).encode()), query or {}, signed)


# --- FAL's real bodies ----------------------------------------------------------------------


def test_fal_ok_body_is_a_completion_with_the_lora_and_config_urls() -> None:
    parsed = parse_event(parse_body(FAL_OK), {})
    assert parsed.request_id == "123e4567-e89b-12d3-a456-426614174000"
    assert parsed.status is EventStatus.COMPLETED
    assert parsed.lora_url == LORA_URL
    assert parsed.config_url == CONFIG_URL
    assert parsed.error_message is None


def test_fal_error_body_is_a_failure_with_a_readable_message() -> None:
    parsed = parse_event(parse_body(FAL_ERROR), {})
    assert parsed.status is EventStatus.FAILED
    assert parsed.error_message is not None
    assert "Invalid status code: 422" in parsed.error_message
    assert "images_data_url" in parsed.error_message
    assert "field required" in parsed.error_message
    # Readable: no JSON syntax or Python reprs leaking into what a person sees.
    assert not any(mark in parsed.error_message for mark in ("{", "[", "'loc'"))
    assert parsed.lora_url is None


def test_fal_error_without_details_still_says_something() -> None:
    parsed = event({"request_id": "r", "status": "ERROR"})
    assert parsed.status is EventStatus.FAILED
    assert parsed.error_message


def test_fal_error_with_a_string_detail_keeps_it() -> None:
    parsed = event({"request_id": "r", "status": "ERROR", "payload": {"detail": "GPU lost"}})
    assert parsed.error_message is not None
    assert "GPU lost" in parsed.error_message


def test_a_very_long_error_is_cut_to_a_bounded_message() -> None:
    parsed = event({"request_id": "r", "status": "ERROR", "error": "x" * 100_000})
    assert parsed.error_message is not None
    assert 0 < len(parsed.error_message) <= 2000


def test_fal_ok_with_payload_error_is_a_pending_result() -> None:
    parsed = parse_event(parse_body(FAL_PAYLOAD_ERROR), {})
    assert parsed.status is EventStatus.RESULT_PENDING
    assert parsed.lora_url is None
    assert parsed.config_url is None


def test_fal_ok_with_plain_string_file_urls_keeps_them() -> None:
    body = {
        "request_id": "r",
        "status": "OK",
        "payload": {"diffusers_lora_file": LORA_URL, "config_file": CONFIG_URL},
    }
    parsed = event(body)
    assert (parsed.lora_url, parsed.config_url) == (LORA_URL, CONFIG_URL)


def test_fal_ok_with_odd_file_objects_gives_no_urls_rather_than_an_error() -> None:
    body = {
        "request_id": "r",
        "status": "OK",
        "payload": {"diffusers_lora_file": {"url": 5}, "config_file": ["x"]},
    }
    parsed = event(body)
    assert parsed.status is EventStatus.COMPLETED
    assert (parsed.lora_url, parsed.config_url) == (None, None)


# --- the older forms ------------------------------------------------------------------------


def test_finetune_id_stands_for_the_request_id() -> None:
    assert event({"finetune_id": "ft-77", "status": "completed"}).request_id == "ft-77"


def test_a_numeric_request_id_becomes_a_string() -> None:
    assert event({"request_id": 12345, "status": "completed"}).request_id == "12345"


def test_request_id_wins_over_finetune_id() -> None:
    assert event({"request_id": "a", "finetune_id": "b", "status": "OK"}).request_id == "a"


def test_older_completions_carry_top_level_urls() -> None:
    parsed = event(
        {"finetune_id": "f", "status": "ready", "lora_url": LORA_URL, "config_url": CONFIG_URL}
    )
    assert (parsed.lora_url, parsed.config_url) == (LORA_URL, CONFIG_URL)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("OK", EventStatus.COMPLETED),
        ("ERROR", EventStatus.FAILED),
        ("completed", EventStatus.COMPLETED),
        ("COMPLETED", EventStatus.COMPLETED),
        ("ready", EventStatus.COMPLETED),
        ("Ready", EventStatus.COMPLETED),
        ("success", EventStatus.COMPLETED),
        ("SUCCESS", EventStatus.COMPLETED),
        ("failed", EventStatus.FAILED),
        ("Failed", EventStatus.FAILED),
        ("error", EventStatus.FAILED),
        ("in_progress", EventStatus.IN_PROGRESS),
        ("IN_PROGRESS", EventStatus.IN_PROGRESS),
        ("training", EventStatus.IN_PROGRESS),
        ("Training", EventStatus.IN_PROGRESS),
        ("queued", EventStatus.QUEUED),
        ("QUEUED", EventStatus.QUEUED),
        ("IN_QUEUE", EventStatus.QUEUED),
        ("in_queue", EventStatus.QUEUED),
        ("cancelled", EventStatus.CANCELLED),
        ("CANCELLED", EventStatus.CANCELLED),
        (" completed ", EventStatus.COMPLETED),
    ],
)
def test_every_status_word_is_understood_in_any_case(word: str, expected: EventStatus) -> None:
    assert event({"request_id": "r", "status": word}).status is expected


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        (0, 0),
        (42, 42),
        (100, 100),
        (42.9, 42),
        (0.42, 42),
        (0.5, 50),
        ("42%", 42),
        ("42", 42),
        (" 42 % ", 42),
        ("0.25", 25),
        (150, 100),
        (1000.5, 100),
        (-5, 0),
        (-0.5, 0),
        ("-20%", 0),
        ("250%", 100),
        (None, None),
    ],
)
def test_progress_in_every_form_is_a_percentage(progress: object, expected: int | None) -> None:
    assert event({"request_id": "r", "status": "training", "progress": progress}).progress == (
        expected
    )


def test_absent_progress_is_none() -> None:
    assert event({"request_id": "r", "status": "training"}).progress is None


def test_an_older_failure_message_is_the_error_message() -> None:
    parsed = event({"finetune_id": "f", "status": "failed", "message": "out of GPU memory"})
    assert parsed.error_message == "out of GPU memory"


def test_error_and_message_are_both_kept() -> None:
    parsed = event({"request_id": "r", "status": "error", "error": "boom", "message": "retry"})
    assert parsed.error_message is not None
    assert "boom" in parsed.error_message
    assert "retry" in parsed.error_message


def test_a_message_on_a_progress_event_is_not_an_error() -> None:
    parsed = event({"request_id": "r", "status": "training", "message": "epoch 3 of 10"})
    assert parsed.error_message is None


def test_the_comment_gives_avatar_id_training_type_and_the_logged_user() -> None:
    parsed = event(
        {
            "finetune_id": "f",
            "status": "in_progress",
            "comment": "user_id=123;avatar_id=av-9;training_type=style",
        }
    )
    assert parsed.avatar_id == "av-9"
    assert parsed.training_type == "style"
    assert parsed.comment_user_id == "123"


def test_the_older_finetune_comment_field_is_read_too() -> None:
    parsed = event({"finetune_id": "f", "status": "queued", "finetune_comment": "avatar_id=av-1"})
    assert parsed.avatar_id == "av-1"


def test_query_parameters_win_over_the_comment() -> None:
    parsed = event(
        {"request_id": "r", "status": "OK", "comment": "avatar_id=old;training_type=style"},
        query={"avatar_id": "new", "training_type": "portrait"},
    )
    assert parsed.avatar_id == "new"
    assert parsed.training_type == "portrait"


def test_the_comment_fills_in_what_the_query_lacks() -> None:
    parsed = event(
        {"request_id": "r", "status": "OK", "comment": "avatar_id=c;training_type=style"},
        query={"avatar_id": "q"},
    )
    assert parsed.avatar_id == "q"
    assert parsed.training_type == "style"


def test_an_unknown_training_type_is_dropped_not_refused() -> None:
    parsed = event(
        {"request_id": "r", "status": "OK", "comment": "training_type=anime"},
        query={"avatar_id": "a"},
    )
    assert parsed.training_type is None
    assert parsed.avatar_id == "a"


def test_a_body_without_comment_or_query_has_no_avatar() -> None:
    parsed = parse_event(parse_body(FAL_OK), {})
    assert (parsed.avatar_id, parsed.training_type, parsed.comment_user_id) == (None, None, None)


# --- signed request id against the body's ----------------------------------------------------


def test_a_signed_request_id_equal_to_the_bodys_is_accepted() -> None:
    assert event({"request_id": "r-1", "status": "OK"}, signed="r-1").request_id == "r-1"


def test_a_signed_request_id_different_from_both_body_ids_is_refused() -> None:
    with pytest.raises(RequestIdMismatch, match="neither"):
        event({"request_id": "r-1", "gateway_request_id": "g-1", "status": "OK"}, signed="r-2")


def test_a_delivery_signed_with_the_gateway_id_is_matched_on_the_queue_id() -> None:
    # FAL retried the run: the header carries the gateway's id, the body both.
    body = {"request_id": "r-1", "gateway_request_id": "g-2", "status": "OK", "payload": {}}
    assert event(body, signed="g-2").request_id == "r-1"
    assert event(body, signed="r-1").request_id == "r-1"


def test_a_gateway_id_that_is_not_a_string_never_matches() -> None:
    with pytest.raises(RequestIdMismatch):
        event({"request_id": "r-1", "gateway_request_id": 7, "status": "OK"}, signed="7")


def test_a_signed_request_id_different_from_finetune_id_is_refused() -> None:
    with pytest.raises(PayloadError):
        event({"finetune_id": "f-1", "status": "completed"}, signed="r-2")


def test_a_body_without_a_request_id_uses_the_signed_one() -> None:
    assert event({"status": "OK", "payload": {}}, signed="r-signed").request_id == "r-signed"


# --- refused bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{", b'{"status": "OK",}', b"\xff\xfe\x00garbage", b"{'status': 'OK'}"],
    ids=["empty", "text", "unclosed", "trailing-comma", "binary", "single-quotes"],
)
def test_a_body_that_is_not_json_is_refused(raw: bytes) -> None:
    with pytest.raises(PayloadError, match="JSON"):
        parse_body(raw)


@pytest.mark.parametrize(
    "raw",
    [b"[]", b'[{"request_id": "r", "status": "OK"}]', b'"OK"', b"42", b"4.2", b"null", b"true"],
)
def test_a_json_value_that_is_not_an_object_is_refused(raw: bytes) -> None:
    with pytest.raises(PayloadError, match="object"):
        parse_body(raw)


def test_a_json_object_is_returned_as_a_dict() -> None:
    assert parse_body(b'{"status": "OK"}') == {"status": "OK"}


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"request_id": "r", "status": "OK", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["lists", "objects", "inside-payload"],
)
def test_deeply_nested_json_is_a_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_body(raw)


def test_an_integer_too_long_to_convert_is_a_payload_error() -> None:
    # Python refuses int strings over 4300 digits with a bare ValueError: still a bad body.
    raw = b'{"request_id": "r", "status": "OK", "progress": ' + b"7" * 5000 + b"}"
    with pytest.raises(PayloadError):
        parse_body(raw)


@pytest.mark.parametrize("status", [None, 1, 0, True, ["OK"], {"s": "OK"}, "", "   "])
def test_a_missing_or_non_string_status_is_refused(status: object) -> None:
    with pytest.raises(PayloadError, match="status"):
        event({"request_id": "r", "status": status})


def test_a_body_without_status_is_refused() -> None:
    with pytest.raises(PayloadError, match="status"):
        event({"request_id": "r"})


@pytest.mark.parametrize("status", ["DONE", "COMPLETED!", "okay", "in progress", "finished"])
def test_an_unknown_status_is_refused(status: str) -> None:
    with pytest.raises(PayloadError, match="unknown status"):
        event({"request_id": "r", "status": status})


@pytest.mark.parametrize(
    "body",
    [{"status": "OK"}, {"request_id": "", "status": "OK"}, {"request_id": "  ", "status": "OK"}],
    ids=["absent", "empty", "blank"],
)
def test_a_body_without_a_request_id_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(PayloadError, match="request id"):
        event(body)


@pytest.mark.parametrize("request_id", [["r"], {"id": "r"}, True, False, 1.5])
def test_a_request_id_of_the_wrong_type_is_refused(request_id: object) -> None:
    with pytest.raises(PayloadError, match="request_id"):
        event({"request_id": request_id, "status": "OK"})


@pytest.mark.parametrize("finetune_id", [["f"], {"id": "f"}, True])
def test_a_finetune_id_of_the_wrong_type_is_refused(finetune_id: object) -> None:
    with pytest.raises(PayloadError):
        event({"finetune_id": finetune_id, "status": "completed"})


@pytest.mark.parametrize("request_id", ["r" * 129, "line\nbreak", "tab\there", "nul\x00"])
def test_an_overlong_or_control_character_request_id_is_refused(request_id: str) -> None:
    with pytest.raises(PayloadError):
        event({"request_id": request_id, "status": "OK"})


@pytest.mark.parametrize("progress", ["abc", "", "%", [42], {"value": 42}, "NaN"])
def test_progress_of_the_wrong_type_is_refused(progress: object) -> None:
    with pytest.raises(PayloadError, match="progress"):
        event({"request_id": "r", "status": "training", "progress": progress})


def test_a_nan_progress_from_the_wire_is_refused() -> None:
    # Python's json module accepts the non-standard NaN literal.
    with pytest.raises(PayloadError, match="progress"):
        parse_event(parse_body(b'{"request_id": "r", "status": "training", "progress": NaN}'), {})


def test_a_boolean_progress_is_ignored() -> None:
    assert event({"request_id": "r", "status": "training", "progress": True}).progress is None


@pytest.mark.parametrize(
    "avatar_id", ["a" * 33, "line\nbreak", "\x00"], ids=["too-long", "newline", "nul"]
)
def test_an_unusable_avatar_id_in_the_query_is_refused(avatar_id: str) -> None:
    with pytest.raises(PayloadError, match="avatar_id"):
        event({"request_id": "r", "status": "OK"}, query={"avatar_id": avatar_id})


def test_an_avatar_id_of_the_wrong_type_is_refused() -> None:
    # The query mapping of a replayed event may come from anywhere, not only from Starlette.
    query: dict[str, Any] = {"avatar_id": ["a", "b"]}
    with pytest.raises(PayloadError, match="avatar_id"):
        parse_event({"request_id": "r", "status": "OK"}, query)


def test_an_overlong_avatar_id_in_the_comment_is_refused() -> None:
    with pytest.raises(PayloadError, match="avatar_id"):
        event({"request_id": "r", "status": "OK", "comment": "avatar_id=" + "a" * 40})


def test_an_empty_avatar_id_in_the_query_falls_back_to_the_comment() -> None:
    parsed = event(
        {"request_id": "r", "status": "OK", "comment": "avatar_id=from-comment"},
        query={"avatar_id": ""},
    )
    assert parsed.avatar_id == "from-comment"


# --- the comment parser ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("comment", "expected"),
    [
        (
            "user_id=123;avatar_id=abc;training_type=portrait",
            {"user_id": "123", "avatar_id": "abc", "training_type": "portrait"},
        ),
        (" user_id = 123 ; avatar_id =  abc  ", {"user_id": "123", "avatar_id": "abc"}),
        (";;avatar_id=abc;;;", {"avatar_id": "abc"}),
        ("avatar_id;user_id=5", {"user_id": "5"}),
        ("no equals sign at all", {}),
        ("colour=red;avatar_id=abc;size=xl", {"avatar_id": "abc"}),
        ("avatar_id=first;avatar_id=second", {"avatar_id": "first"}),
        ("avatar_id=;avatar_id=  ;avatar_id=third", {"avatar_id": "third"}),
        ("avatar_id=a=b=c", {"avatar_id": "a=b=c"}),
        ("AVATAR_ID=abc;User_Id=7", {"avatar_id": "abc", "user_id": "7"}),
        ("avatar_id=abc,training_type=style", {"avatar_id": "abc", "training_type": "style"}),
        ("=abc;=;==", {}),
        ("", {}),
        ("user_id=", {}),
        ("avatar_id=\u0439\u0446\u0443", {"avatar_id": "\u0439\u0446\u0443"}),
    ],
)
def test_awkward_comments_are_read_as_the_old_receiver_read_them(
    comment: str, expected: dict[str, str]
) -> None:
    assert parse_comment(comment) == expected


@pytest.mark.parametrize("comment", [None, 42, 4.2, ["avatar_id=a"], {"avatar_id": "a"}, b"x=y"])
def test_a_comment_that_is_not_text_gives_nothing(comment: object) -> None:
    assert parse_comment(comment) == {}


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=20,
    )


@given(st.one_of(st.text(), _json_values(), st.binary()))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_parse_comment_never_raises_and_returns_only_known_non_empty_keys(comment: Any) -> None:
    found = parse_comment(comment)
    assert isinstance(found, dict)
    assert set(found) <= set(KNOWN_KEYS)
    for value in found.values():
        assert isinstance(value, str)
        assert value
        assert value == value.strip()


_value_text = st.text(
    alphabet=st.characters(exclude_characters=";,", exclude_categories=["Cs"]), max_size=12
)
_key_text = st.sampled_from([*KNOWN_KEYS, "colour", "", "user", "avatar"])


@given(
    st.lists(
        st.tuples(
            _key_text,
            st.sampled_from(["", " ", "  "]),
            _value_text,
            st.booleans(),  # whether the part has its "=" at all
        ),
        max_size=8,
    ),
    st.sampled_from([";", ",", ";;", " ; "]),
)
def test_for_repeated_keys_the_first_non_empty_value_wins(
    parts: list[tuple[str, str, str, bool]], separator: str
) -> None:
    # A part "without =" must not get one from its value, or it is a part with "=" after all.
    rendered = [
        f"{pad}{key}{pad}={value}" if has_equals else f"{key}{value.replace('=', '')}"
        for key, pad, value, has_equals in parts
    ]
    expected: dict[str, str] = {}
    for key, _pad, value, has_equals in parts:
        if has_equals and key in KNOWN_KEYS and value.strip() and key not in expected:
            expected[key] = value.strip()
    assert parse_comment(separator.join(rendered)) == expected


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_=", min_size=1, max_size=20))
def test_an_equals_sign_inside_a_value_is_kept(value: str) -> None:
    assert parse_comment(f"avatar_id={value}") == {"avatar_id": value}
    assert parse_comment(f"avatar_id=x={value}") == {"avatar_id": f"x={value}"}


_BODY_KEYS = [
    "request_id",
    "finetune_id",
    "status",
    "payload",
    "payload_error",
    "error",
    "message",
    "progress",
    "comment",
    "finetune_comment",
    "training_type",
    "lora_url",
    "config_url",
]
_STATUS_VALUES = ["OK", "ERROR", "completed", "failed", "IN_PROGRESS", "queued", "cancelled"]
_arbitrary_bodies = st.dictionaries(
    st.one_of(st.sampled_from(_BODY_KEYS), st.text(max_size=10)),
    st.one_of(_json_values(), st.sampled_from([*_STATUS_VALUES, "42%", "0.5", "avatar_id=a"])),
    max_size=8,
)
# Mostly-valid bodies too, so that the success path is explored as well as the refusals.
_plausible_bodies = st.tuples(
    st.fixed_dictionaries(
        {"request_id": st.text(min_size=1, max_size=20), "status": st.sampled_from(_STATUS_VALUES)}
    ),
    _arbitrary_bodies,
).map(lambda pair: {**pair[1], **pair[0]})


@given(
    st.one_of(_arbitrary_bodies, _plausible_bodies),
    st.dictionaries(st.sampled_from(["avatar_id", "training_type", "x"]), st.text(max_size=40)),
    st.one_of(st.none(), st.text(max_size=40)),
)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_parse_event_returns_an_event_or_raises_payload_error(
    body: dict[str, Any], query: dict[str, str], signed: str | None
) -> None:
    try:
        parsed = parse_event(body, query, signed)
    except PayloadError:
        return
    assert isinstance(parsed, Event)
    assert isinstance(parsed.status, EventStatus)
    assert parsed.request_id
    assert parsed.progress is None or 0 <= parsed.progress <= 100


@given(_json_values())
@settings(max_examples=200)
def test_parse_body_then_parse_event_on_any_json_raises_only_payload_error(value: Any) -> None:
    raw = json.dumps(value).encode()
    try:
        parsed = parse_event(parse_body(raw), {})
    except PayloadError:
        return
    assert isinstance(parsed, Event)


# --- a generation's callback (fal-ai/flux-lora) ---------------------------------------------

GENERATED = {
    "images": [
        {"url": "https://v3.fal.media/files/a.jpeg", "width": 768, "height": 1024,
         "content_type": "image/jpeg"},
        {"url": "https://v3.fal.media/files/b.jpeg", "width": 768, "height": 1024,
         "content_type": "image/jpeg"},
    ],
    "seed": 2**60 + 3,
    "has_nsfw_concepts": [False, True],
}  # fmt: skip


def test_a_generations_ok_carries_its_images_flags_seed_and_hint() -> None:
    parsed = event(
        {"request_id": "g-1", "status": "OK", "payload": GENERATED}, {"generation_id": "gen42"}
    )
    assert parsed.status is EventStatus.COMPLETED and parsed.generation_id == "gen42"
    assert parsed.generated is not None and parsed.error_message is None
    assert [image.nsfw for image in parsed.generated.images] == [False, True]
    assert parsed.generated.seed == 2**60 + 3  # exact, never through a float
    assert parsed.avatar_id is None and parsed.lora_url is None


def test_a_generations_error_and_payload_error() -> None:
    failed = event(
        {
            "request_id": "g-2",
            "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": {"detail": [{"loc": ["body", "prompt"], "msg": "too long"}]},
        },
        {"generation_id": "gen42"},
    )
    assert failed.status is EventStatus.FAILED and failed.generated is None
    assert failed.error_message == "Invalid status code: 422; body.prompt: too long"
    pending = event({"request_id": "g-3", "status": "OK", "payload": None, "payload_error": "x"})
    assert pending.status is EventStatus.RESULT_PENDING and pending.generated is None


@pytest.mark.parametrize("images", [[], [{"width": 1}], "nope"])
def test_unreadable_images_are_recorded_with_the_reason_not_refused(images: object) -> None:
    parsed = event({"request_id": "g-4", "status": "OK", "payload": {"images": images}})
    assert parsed.status is EventStatus.COMPLETED and parsed.generated is None
    assert parsed.error_message is not None and "could not be read" in parsed.error_message


def test_a_training_output_has_nothing_generated() -> None:
    parsed = event(json.loads(FAL_OK))
    assert parsed.generated is None and parsed.error_message is None and parsed.lora_url


def test_a_bad_generation_id_is_refused() -> None:
    with pytest.raises(PayloadError, match="generation_id"):
        event({"request_id": "g", "status": "OK"}, {"generation_id": "x" * 33})
