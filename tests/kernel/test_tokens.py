"""Random tokens: format, visible prefix, storage hash, constant-time verification, rotation."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from nebula.kernel.tokens import (
    PREFIX_CHARS,
    RotatingTokenHash,
    constant_time_equals,
    generate_token,
    hash_token,
    token_prefix,
    verify_token,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(hours=1)


@pytest.mark.parametrize("kind", ["nbl", "nbs", "nbn"])
def test_generate_token_has_kind_and_43_urlsafe_chars(kind: str) -> None:
    token = generate_token(kind)
    assert re.fullmatch(rf"{kind}_[A-Za-z0-9_-]{{43}}", token), token


def test_generate_token_defaults_to_api_kind() -> None:
    assert generate_token().startswith("nbl_")


def test_generated_tokens_do_not_repeat() -> None:
    tokens = {generate_token() for _ in range(2000)}
    assert len(tokens) == 2000


def test_prefix_of_a_generated_token_is_kind_and_eight_chars() -> None:
    token = generate_token()
    prefix = token_prefix(token)
    assert prefix == token[: len("nbl_") + PREFIX_CHARS]
    assert len(prefix) == 12
    assert token.startswith(prefix)


@pytest.mark.parametrize(
    ("token", "prefix"),
    [
        ("nbl_abcdefghijklmnop", "nbl_abcdefgh"),
        ("nbs_short", "nbs_short"),  # bodies shorter than the prefix are shown whole
        ("nbl_ab_cd-efghij", "nbl_ab_cd-ef"),  # "_" inside the body is part of the body
        ("noseparatorhere", "nosepara"),  # no kind: the first eight chars
        ("nbl_", "nbl_"),
        ("", ""),
    ],
)
def test_token_prefix_table(token: str, prefix: str) -> None:
    assert token_prefix(token) == prefix


def test_hash_token_is_sha256_hex() -> None:
    # FIPS 180-2 test vector for "abc".
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    token = generate_token()
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert hash_token(token) == hash_token(token)
    assert hash_token(token) != hash_token(generate_token())


def test_verify_token_accepts_the_token_it_was_made_from() -> None:
    token = generate_token()
    assert verify_token(token, hash_token(token))


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t[:-1], id="truncated"),
        pytest.param(lambda t: t + "x", id="extended"),
        pytest.param(lambda t: t.upper(), id="case-changed"),
        pytest.param(lambda t: " " + t, id="leading-space"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: token_prefix(t), id="prefix-only"),
        pytest.param(lambda t: hash_token(t), id="the-hash-itself"),
        pytest.param(lambda t: generate_token(), id="another-token"),
    ],
)
def test_verify_token_rejects_anything_else(mangle: Callable[[str], str]) -> None:
    token = generate_token()
    stored = hash_token(token)
    assert not verify_token(mangle(token), stored)


def test_verify_token_rejects_a_mangled_hash() -> None:
    token = generate_token()
    assert not verify_token(token, hash_token(token).upper())
    assert not verify_token(token, "")


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("abc", "abc", True),
        ("", "", True),
        ("abc", "abd", False),
        ("abc", "ab", False),
        ("abc", "ABC", False),
        ("héllo", "héllo", True),  # non-ASCII must not raise
        ("héllo", "hello", False),
    ],
)
def test_constant_time_equals_table(a: str, b: str, equal: bool) -> None:
    assert constant_time_equals(a, b) is equal


# Rotation ------------------------------------------------------------------------


def test_issued_token_verifies_and_random_tokens_do_not() -> None:
    token, stored = RotatingTokenHash.issue()
    assert token.startswith("nbn_")
    assert stored.current_hash == hash_token(token)
    assert stored.previous_hash is None
    assert stored.verify(token, NOW)
    assert not stored.verify(generate_token("nbn"), NOW)
    assert not stored.verify("", NOW)


def test_rotation_new_token_works_at_once() -> None:
    old_token, stored = RotatingTokenHash.issue()
    new_token, rotated = stored.rotate(NOW, GRACE)
    assert new_token != old_token
    assert rotated.verify(new_token, NOW)
    assert rotated.verify(new_token, NOW + timedelta(days=365))


@pytest.mark.parametrize(
    ("after", "old_still_works"),
    [
        (timedelta(0), True),
        (timedelta(minutes=59, seconds=59), True),
        (GRACE, False),  # the grace period is exclusive at its end
        (GRACE + timedelta(microseconds=1), False),
        (timedelta(days=30), False),
    ],
)
def test_rotation_old_token_works_only_within_grace(
    after: timedelta, old_still_works: bool
) -> None:
    old_token, stored = RotatingTokenHash.issue()
    new_token, rotated = stored.rotate(NOW, GRACE)
    assert rotated.verify(old_token, NOW + after) is old_still_works
    assert rotated.verify(new_token, NOW + after)
    assert not rotated.verify(generate_token("nbn"), NOW + after)


def test_rotation_records_previous_hash_and_deadline() -> None:
    old_token, stored = RotatingTokenHash.issue()
    _, rotated = stored.rotate(NOW, GRACE)
    assert rotated.previous_hash == hash_token(old_token)
    assert rotated.previous_valid_until == NOW + GRACE


def test_rotation_does_not_change_the_original_value() -> None:
    old_token, stored = RotatingTokenHash.issue()
    new_token, _ = stored.rotate(NOW, GRACE)
    assert stored.verify(old_token, NOW)
    assert not stored.verify(new_token, NOW)
    assert stored.previous_hash is None


def test_second_rotation_ends_the_first_tokens_grace() -> None:
    first, stored = RotatingTokenHash.issue()
    second, once = stored.rotate(NOW, GRACE)
    third, twice = once.rotate(NOW + timedelta(minutes=1), GRACE)
    later = NOW + timedelta(minutes=2)
    assert twice.verify(third, later)
    assert twice.verify(second, later)
    assert not twice.verify(first, later)  # only the immediately previous token survives


def test_zero_grace_drops_the_old_token_immediately() -> None:
    old_token, stored = RotatingTokenHash.issue()
    new_token, rotated = stored.rotate(NOW, timedelta(0))
    assert not rotated.verify(old_token, NOW)
    assert rotated.verify(new_token, NOW)
