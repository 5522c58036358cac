"""Properties of the BYOK ciphertext format, key ids and keyrings (portal.crypto)."""

from __future__ import annotations

import contextlib
import json
import random
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from portal import crypto
from portal.crypto import DecryptionError, Keyring, NoEncryptingKey

KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))
AD = crypto.associated_data("c0ffee00-0000-4000-8000-000000000001", "messages", "body", "row-1")
DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"

json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=40,
)
ad_fields = st.tuples(st.text(), st.text(), st.text(), st.text())


def region_reason(position: int) -> str:
    """Return the failure reason a changed byte at this offset must produce."""
    if position < len(crypto.HEADER):
        return "malformed"
    if position < len(crypto.HEADER) + crypto.KEY_ID_BYTES:
        return "unknown_key"
    return "integrity"


def flipped(blob: bytes, position: int, mask: int) -> bytes:
    """Return blob with one byte xored by mask."""
    changed = bytearray(blob)
    changed[position] ^= mask
    return bytes(changed)


@given(st.text())
def test_text_round_trips(text: str) -> None:
    ring = Keyring(KEY)
    assert ring.decrypt(ring.encrypt(text.encode(), AD), AD).decode() == text


@given(json_documents)
def test_json_documents_round_trip(document: object) -> None:
    ring = Keyring(KEY)
    encoded = json.dumps(document).encode()
    assert json.loads(ring.decrypt(ring.encrypt(encoded, AD), AD)) == json.loads(encoded)


@given(st.binary(max_size=70_000))
def test_bytes_round_trip(data: bytes) -> None:
    ring = Keyring(KEY)
    assert ring.decrypt(ring.encrypt(data, AD), AD) == data


@settings(deadline=None, max_examples=15, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=2**20, max_value=6 * 2**20), st.integers(min_value=0))
def test_multi_megabyte_values_round_trip(size: int, seed: int) -> None:
    ring = Keyring(KEY)
    data = random.Random(seed).randbytes(size)
    blob = ring.encrypt(data, AD)
    assert len(blob) == size + crypto.OVERHEAD
    assert ring.decrypt(blob, AD) == data


@pytest.mark.parametrize("size", [0, 1, 16, 4095, 4096, 16383, 16384, 4 * 2**20])
def test_sizes_around_internal_thresholds_and_4_mib_round_trip(size: int) -> None:
    ring = Keyring(KEY)
    data = random.Random(size).randbytes(size)
    blob = ring.encrypt(data, AD)
    assert blob[:3] == crypto.HEADER and len(blob) == size + crypto.OVERHEAD
    for form in (bytes(blob), bytearray(blob), memoryview(bytes(blob))):
        assert ring.decrypt(form, AD) == data


def test_every_single_byte_change_of_a_short_blob_is_refused_with_the_right_reason() -> None:
    ring = Keyring(KEY)
    blob = bytes(ring.encrypt(b"hi", AD))
    for position in range(len(blob)):
        for mask in range(1, 256):
            with pytest.raises(DecryptionError) as caught:
                ring.decrypt(flipped(blob, position, mask), AD)
            assert caught.value.reason == region_reason(position), (position, mask)


@given(st.binary(max_size=2000), st.data())
def test_a_changed_byte_anywhere_is_refused_with_the_right_reason(
    plaintext: bytes, data: st.DataObject
) -> None:
    ring = Keyring(KEY)
    blob = bytes(ring.encrypt(plaintext, AD))
    position = data.draw(st.integers(0, len(blob) - 1))
    mask = data.draw(st.integers(1, 255))
    with pytest.raises(DecryptionError) as caught:
        ring.decrypt(flipped(blob, position, mask), AD)
    assert caught.value.reason == region_reason(position)


def test_truncated_or_extended_blobs_are_refused() -> None:
    ring = Keyring(KEY)
    blob = bytes(ring.encrypt(b"hello", AD))
    for end in range(len(blob)):
        with pytest.raises(DecryptionError) as caught:
            ring.decrypt(blob[:end], AD)
        assert caught.value.reason == ("malformed" if end < crypto.OVERHEAD else "integrity")
    with pytest.raises(DecryptionError, match="integrity"):
        ring.decrypt(blob + b"\x00", AD)


@pytest.mark.parametrize(
    "moved_to",
    [
        ("c0ffee00-0000-4000-8000-000000000001", "messages", "body", "row-2"),
        ("c0ffee00-0000-4000-8000-000000000001", "messages", "title", "row-1"),
        ("c0ffee00-0000-4000-8000-000000000001", "attachments", "body", "row-1"),
        ("c0ffee00-0000-4000-8000-000000000002", "messages", "body", "row-1"),
    ],
    ids=["other_row", "other_column", "other_table", "other_organisation"],
)
def test_ciphertext_moved_to_another_place_fails_integrity(moved_to: tuple[str, ...]) -> None:
    ring = Keyring(KEY)
    blob = ring.encrypt(b"secret", AD)
    with pytest.raises(DecryptionError) as caught:
        ring.decrypt(blob, crypto.associated_data(*moved_to))
    assert caught.value.reason == "integrity"
    assert caught.value.key_id == crypto.key_id(KEY)


def test_100k_encryptions_under_one_key_never_repeat_a_nonce() -> None:
    ring = Keyring(KEY)
    nonces = {bytes(ring.encrypt(b"", AD)[11:23]) for _ in range(100_000)}
    assert len(nonces) == 100_000


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decryption_error(blob: bytes) -> None:
    ring = Keyring(KEY, unavailable=[b"\x00" * 8])
    for attempt in (crypto.parse, crypto.blob_key_id, lambda b: ring.decrypt(b, AD)):
        with contextlib.suppress(DecryptionError):
            attempt(blob)


@given(st.sampled_from([crypto.key_id(KEY), b"\x00" * 8, b"\x01" * 8]), st.binary(max_size=80))
def test_arbitrary_bodies_behind_a_valid_header_raise_only_decryption_error(
    kid: bytes, rest: bytes
) -> None:
    ring = Keyring(KEY, unavailable=[b"\x00" * 8])
    with pytest.raises(DecryptionError) as caught:
        ring.decrypt(crypto.HEADER + kid + rest, AD)
    assert caught.value.reason in crypto.DECRYPTION_FAILURES


def test_keyring_picks_the_key_named_in_the_blob() -> None:
    old, new = Keyring(KEY), Keyring(OTHER_KEY)
    both = Keyring(encrypting=OTHER_KEY, decrypt_only=[KEY])
    assert both.decrypt(old.encrypt(b"old", AD), AD) == b"old"
    assert both.decrypt(new.encrypt(b"new", AD), AD) == b"new"
    assert crypto.blob_key_id(both.encrypt(b"x", AD)) == crypto.key_id(OTHER_KEY)
    assert both.key_ids() == {crypto.key_id(KEY), crypto.key_id(OTHER_KEY)}
    assert both.has(crypto.key_id(KEY)) and not both.has(b"\x00" * 8)


def test_a_key_the_keyring_lacks_is_reported_as_unknown_key() -> None:
    blob = Keyring(KEY).encrypt(b"x", AD)
    with pytest.raises(DecryptionError) as caught:
        Keyring(OTHER_KEY).decrypt(blob, AD)
    assert caught.value.reason == "unknown_key"
    assert caught.value.key_id == crypto.key_id(KEY)


def test_a_key_listed_as_unavailable_is_reported_as_key_unavailable() -> None:
    blob = Keyring(KEY).encrypt(b"x", AD)
    ring = Keyring(OTHER_KEY, unavailable=[crypto.key_id(KEY)])
    with pytest.raises(DecryptionError) as caught:
        ring.decrypt(blob, AD)
    assert caught.value.reason == "key_unavailable"
    assert crypto.fingerprint(crypto.key_id(KEY)) in str(caught.value)
    assert not ring.has(crypto.key_id(KEY))


def test_a_key_whose_material_is_given_decrypts_even_if_also_listed_unavailable() -> None:
    ring = Keyring(KEY, unavailable=[crypto.key_id(KEY)])
    assert ring.decrypt(ring.encrypt(b"x", AD), AD) == b"x"
    assert ring.has(crypto.key_id(KEY))


def test_unavailable_keys_are_given_by_8_byte_id() -> None:
    with pytest.raises(ValueError):
        Keyring(KEY, unavailable=[OTHER_KEY])


def test_decrypt_only_keyring_refuses_to_encrypt() -> None:
    ring = Keyring(decrypt_only=[KEY])
    assert ring.encrypting_key_id is None
    with pytest.raises(NoEncryptingKey):
        ring.encrypt(b"x", AD)
    assert ring.decrypt(Keyring(KEY).encrypt(b"x", AD), AD) == b"x"


def test_errors_and_repr_reveal_no_key_or_plaintext() -> None:
    ring = Keyring(KEY)
    blob = ring.encrypt(b"top secret plaintext", AD)
    with pytest.raises(DecryptionError) as caught:
        ring.decrypt(blob, crypto.associated_data("x", "y", "z", "w"))
    for text in (str(caught.value), repr(caught.value), repr(ring)):
        assert "top secret" not in text and KEY.hex() not in text and str(KEY) not in text
    assert crypto.fingerprint(crypto.key_id(KEY)) in repr(ring)


@given(ad_fields, ad_fields)
def test_associated_data_is_injective(first: tuple[str, ...], second: tuple[str, ...]) -> None:
    assume(first != second)
    assert crypto.associated_data(*first) != crypto.associated_data(*second)


def test_associated_data_separates_fields_that_concatenate_alike() -> None:
    ad = crypto.associated_data
    assert ad("ab", "c", "d", "e") != ad("a", "bc", "d", "e")
    assert ad("a", "b", "c", "d") == b"byok-ad\x01\x00\x01a\x00\x01b\x00\x01c\x00\x01d"


def test_key_id_is_deterministic_and_differs_between_keys() -> None:
    assert crypto.key_id(KEY) == crypto.key_id(bytes(KEY))
    assert crypto.key_id(KEY) != crypto.key_id(OTHER_KEY)
    assert len(crypto.key_id(crypto.generate_key())) == crypto.KEY_ID_BYTES
    with pytest.raises(ValueError):
        crypto.key_id(KEY[:16])


@given(st.binary(min_size=8, max_size=8))
def test_fingerprint_round_trips_with_or_without_colons(kid: bytes) -> None:
    text = crypto.fingerprint(kid)
    assert re.fullmatch(r"[0-9a-f]{4}(:[0-9a-f]{4}){3}", text)
    assert crypto.parse_fingerprint(text) == kid
    assert crypto.parse_fingerprint(f" {text.replace(':', '').upper()}\n") == kid


@pytest.mark.parametrize("text", ["", "3f2a:9c01", "3f2a:9c01:77de:0b4g", "3f2a9c0177de0b4511"])
def test_parse_fingerprint_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        crypto.parse_fingerprint(text)


def test_self_test_passes_for_a_generated_key() -> None:
    assert crypto.self_test(crypto.generate_key())
    assert crypto.generate_key() != crypto.generate_key()


def doc_values() -> dict[str, str]:
    """Read the worked example's labelled hex lines from docs/format.md."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- worked-example -->", 2)[1]
    return dict(re.findall(r"^([a-z][a-z ]+?) {2,}([0-9a-f]+)$", block, flags=re.MULTILINE))


def test_docs_worked_example_still_matches_the_code() -> None:
    values = doc_values()
    key, nonce = bytes.fromhex(values["key"]), bytes.fromhex(values["nonce"])
    ad = crypto.associated_data(
        "c0ffee00-0000-4000-8000-000000000001",
        "messages",
        "body",
        "7d4f5a2e-1b3c-4e8f-9a6d-2c1b0e9f8a7b",
    )
    blob = bytes.fromhex(values["ciphertext"])
    assert ad.hex() == values["associated data"]
    assert crypto.key_id(key).hex() == values["key id"]
    assert (
        crypto.HEADER + crypto.key_id(key) + nonce + AESGCM(key).encrypt(nonce, b"hello", ad)
        == blob
    )
    assert Keyring(key).decrypt(blob, ad) == b"hello"


def test_docs_decryption_snippet_needs_only_cryptography() -> None:
    text = DOC.read_text(encoding="utf-8")
    snippet = text.split("<!-- decrypt-snippet -->", 2)[1].split("```python", 1)[1]
    snippet = snippet.split("```", 1)[0]
    assert "portal" not in snippet
    namespace: dict[str, object] = {}
    exec(snippet, namespace)  # noqa: S102 - the doc's own example, run to keep it honest
    values = doc_values()
    decrypt_value = namespace["decrypt_value"]
    assert callable(decrypt_value)
    plaintext = decrypt_value(
        bytes.fromhex(values["key"]),
        bytes.fromhex(values["ciphertext"]),
        "c0ffee00-0000-4000-8000-000000000001",
        "messages",
        "body",
        "7d4f5a2e-1b3c-4e8f-9a6d-2c1b0e9f8a7b",
    )
    assert plaintext == b"hello"
