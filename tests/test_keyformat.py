"""What the key import field accepts and how it explains a refusal (portal.keyformat)."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from portal import keyformat
from portal.keyformat import KeyFormatError, format_key, parse_key

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
# Hypothesis also tries string constants found in the code under test; an input that is
# literally part of keyformat's own text appearing in a message is not an echo.
MODULE_SOURCE = Path(keyformat.__file__).read_text(encoding="utf-8")

PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f\n"
    "-----END PRIVATE KEY-----\n"
)
JWK = json.dumps({"kty": "oct", "k": base64.urlsafe_b64encode(KEY).decode().rstrip("=")})


def b64_of(length: int) -> str:
    """Return base64 of length key-like bytes (zero bytes would encode to all-hex "AAAA...")."""
    return base64.b64encode(bytes((i * 37 + 11) % 256 for i in range(length))).decode()


def refusal(text: str) -> KeyFormatError:
    """Return the error parse_key raises for text."""
    with pytest.raises(KeyFormatError) as caught:
        parse_key(text)
    return caught.value


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "empty"),
        ("  \n\t ", "empty"),
        (PEM, "pem"),
        (JWK, "json"),
        (KEY.hex(), "hex"),
        (KEY.hex().upper() + "\n", "hex"),
        (bytes(range(16)).hex(), "hex"),
        ("not a key!", "not_base64"),
        (KEY_B64[:-2] + "!=", "not_base64"),
        (base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "not_base64"),
        (KEY_B64[:-1], "not_base64"),
        (b64_of(16), "aes128"),
        (b64_of(31), "wrong_length"),
        (b64_of(33), "wrong_length"),
    ],
    ids=[
        "empty",
        "whitespace_only",
        "pem_block",
        "jwk_json",
        "hex_of_32_bytes",
        "uppercase_hex_with_newline",
        "hex_of_16_bytes",
        "garbage_with_bang",
        "base64_with_bang",
        "urlsafe_alphabet",
        "missing_padding",
        "base64_of_16_bytes",
        "base64_of_31_bytes",
        "base64_of_33_bytes",
    ],
)
def test_each_kind_of_wrong_key_gets_its_own_code(text: str, code: str) -> None:
    assert refusal(text).code == code


def test_hex_message_offers_the_conversion_command() -> None:
    assert "xxd -r -p key.hex | base64" in str(refusal(KEY.hex()))


def test_aes128_key_is_named_as_such() -> None:
    message = str(refusal(b64_of(16)))
    assert "AES-128" in message and "16 bytes" in message and "32 bytes" in message


@pytest.mark.parametrize("length", [31, 33])
def test_wrong_length_message_gives_the_decoded_length(length: int) -> None:
    message = str(refusal(b64_of(length)))
    assert f"{length} bytes were decoded" in message


def test_urlsafe_alphabet_gets_a_hint() -> None:
    assert "URL-safe" in str(refusal(base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode()))


@pytest.mark.parametrize("text", [KEY_B64, f"  {KEY_B64}\n", f"\n\t{KEY_B64} \r\n"])
def test_valid_key_with_surrounding_whitespace_is_accepted(text: str) -> None:
    assert parse_key(text) == KEY


def test_key_as_printed_by_openssl_rand_base64_32_is_accepted() -> None:
    assert parse_key(base64.encodebytes(KEY).decode()) == KEY


def echoed_fragments(text: str) -> list[str]:
    """Return the parts of an input that must never appear in an error message."""
    stripped = text.strip()
    fragments = [stripped] if len(stripped) >= 8 else []
    fragments += [token for token in stripped.split() if len(token) >= 8]
    try:
        decoded = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) >= 4:
        fragments += [decoded.hex(), base64.b64encode(decoded).decode()]
    return [f for f in fragments if f not in MODULE_SOURCE]


key_like_text = st.one_of(
    st.text(),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=8),
    st.binary(min_size=4, max_size=64).map(lambda b: base64.b64encode(b).decode()),
    st.binary(min_size=4, max_size=64).map(lambda b: f"  {base64.b64encode(b).decode()}\n"),
    st.binary(min_size=4, max_size=64).map(lambda b: b.hex()),
    st.binary(min_size=4, max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    st.text().map(lambda t: f"-----BEGIN KEY-----\n{t}"),
    st.text().map(lambda t: "{" + t),
)


@given(key_like_text)
def test_error_message_never_echoes_the_input(text: str) -> None:
    try:
        parse_key(text)
    except KeyFormatError as err:
        assert err.code in keyformat.ERROR_CODES
        for fragment in echoed_fragments(text):
            assert fragment not in str(err)


@given(key_like_text)
def test_parse_key_raises_nothing_but_key_format_error(text: str) -> None:
    try:
        key = parse_key(text)
    except KeyFormatError:
        return
    assert len(key) == 32


@given(st.binary(min_size=32, max_size=32), st.sampled_from(["", " ", "\n", "\r\n", "\t "]))
def test_format_key_and_parse_key_round_trip(key: bytes, padding: str) -> None:
    text = format_key(key)
    assert len(text) == 44 and text.endswith("=")
    assert parse_key(padding + text + padding) == key


@given(st.binary(max_size=64))
def test_only_32_byte_keys_parse(raw: bytes) -> None:
    assume(len(raw) != 32)
    with pytest.raises(KeyFormatError):
        parse_key(base64.b64encode(raw).decode())


def test_format_key_refuses_a_key_that_is_not_32_bytes() -> None:
    with pytest.raises(ValueError):
        format_key(bytes(16))
