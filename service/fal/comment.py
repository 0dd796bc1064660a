"""The old system's metadata string: `user_id=123;avatar_id=abc;training_type=portrait`."""

from __future__ import annotations

KNOWN_KEYS = ("user_id", "avatar_id", "training_type")


def parse_comment(comment: object) -> dict[str, str]:
    """Known keys with non-empty values; anything odd is skipped, never raised.

    Parts are split on `;` (and `,`, which hand-written comments use too); spaces around keys
    and values are dropped; a part without `=` or with an unknown key is ignored; for a repeated
    key the first non-empty value wins, as the old receiver read it.
    """
    if not isinstance(comment, str):
        return {}
    found: dict[str, str] = {}
    for part in comment.replace(",", ";").split(";"):
        key, sep, value = part.partition("=")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key in KNOWN_KEYS and value and key not in found:
            found[key] = value
    return found
