"""Sealing organisation keys under the master key, and loading that key (portal.keys.custody)."""

from __future__ import annotations

import base64
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from portal import crypto
from portal.keys.custody import CustodyError, KeyCustody
from portal.keys.custody.master_key import (
    SEALED_BYTES,
    MasterKeyCustody,
    derive_subkey,
    load_master_key,
)

MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(1, 33))
ORG_KEY = bytes(range(100, 132))
CONTEXT = b"org:c0ffee00-0000-4000-8000-000000000001|key:" + crypto.key_id(ORG_KEY)


def test_seal_then_unseal_returns_the_key() -> None:
    custody: KeyCustody = MasterKeyCustody(MASTER)
    sealed = custody.seal(ORG_KEY, CONTEXT)
    assert len(sealed) == SEALED_BYTES and sealed[:3] == b"SK\x01"
    assert custody.unseal(sealed, CONTEXT) == ORG_KEY


def test_sealing_twice_gives_different_blobs() -> None:
    custody = MasterKeyCustody(MASTER)
    assert custody.seal(ORG_KEY, CONTEXT) != custody.seal(ORG_KEY, CONTEXT)


def test_another_master_key_cannot_unseal() -> None:
    sealed = MasterKeyCustody(MASTER).seal(ORG_KEY, CONTEXT)
    with pytest.raises(CustodyError):
        MasterKeyCustody(OTHER_MASTER).unseal(sealed, CONTEXT)


def test_a_sealed_key_moved_to_another_context_cannot_be_unsealed() -> None:
    custody = MasterKeyCustody(MASTER)
    sealed = custody.seal(ORG_KEY, CONTEXT)
    with pytest.raises(CustodyError):
        custody.unseal(sealed, CONTEXT.replace(b"0001", b"0002"))


def test_any_changed_byte_of_a_sealed_key_is_refused() -> None:
    custody = MasterKeyCustody(MASTER)
    sealed = custody.seal(ORG_KEY, CONTEXT)
    for position in range(len(sealed)):
        changed = bytearray(sealed)
        changed[position] ^= 0x01
        with pytest.raises(CustodyError):
            custody.unseal(bytes(changed), CONTEXT)


@pytest.mark.parametrize("sealed", [b"", b"SK\x01", b"SK\x02" + bytes(60), bytes(63), bytes(64)])
def test_malformed_sealed_keys_are_refused(sealed: bytes) -> None:
    with pytest.raises(CustodyError):
        MasterKeyCustody(MASTER).unseal(sealed, CONTEXT)


def test_sealed_blob_does_not_contain_the_key() -> None:
    sealed = MasterKeyCustody(MASTER).seal(ORG_KEY, CONTEXT)
    assert ORG_KEY not in sealed and ORG_KEY[:8] not in sealed and MASTER[:8] not in sealed
    assert base64.b64encode(ORG_KEY) not in sealed and ORG_KEY.hex().encode() not in sealed


def test_custody_names_its_master_key_by_id_only() -> None:
    custody = MasterKeyCustody(MASTER)
    assert custody.master_key_id == crypto.key_id(MASTER)
    assert MASTER.hex() not in repr(custody)
    assert custody.name == "master-key"


def test_master_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        MasterKeyCustody(MASTER[:16])


def test_subkeys_differ_by_purpose_and_from_the_master_key() -> None:
    audit = derive_subkey(MASTER, b"audit chain")
    assert len(audit) == 32 and audit != MASTER
    assert audit == derive_subkey(MASTER, b"audit chain")
    assert audit != derive_subkey(MASTER, b"key custody")
    assert audit != derive_subkey(OTHER_MASTER, b"audit chain")


def test_missing_file_without_create_gives_none(tmp_path: Path) -> None:
    assert load_master_key(None, tmp_path / "master.key") is None
    assert not (tmp_path / "master.key").exists()


def test_master_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first = load_master_key(None, path, create=True)
    assert first is not None and len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    assert content == base64.b64encode(first) + b"\n"
    assert load_master_key(None, path, create=True) == first
    assert load_master_key(None, str(path)) == first
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]


def test_processes_starting_together_agree_on_one_master_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    with ProcessPoolExecutor(max_workers=6) as pool:
        keys = set(pool.map(load_master_key, [None] * 12, [path] * 12, [True] * 12))
    assert keys == {load_master_key(None, path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(MASTER).decode() + "\n")
    os.chmod(path, 0o600)
    assert load_master_key(None, path, create=True) == MASTER
    assert path.read_text() == base64.b64encode(MASTER).decode() + "\n"


def test_environment_value_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(MASTER).decode() + "\n")
    env_value = base64.b64encode(OTHER_MASTER).decode()
    assert load_master_key(env_value, path, create=True) == OTHER_MASTER
    assert load_master_key(f" {env_value}\n", tmp_path / "absent.key") == OTHER_MASTER
    assert not (tmp_path / "absent.key").exists()


def test_empty_environment_value_counts_as_unset(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(MASTER).decode() + "\n")
    assert load_master_key("", path) == MASTER


@pytest.mark.parametrize(
    "env_value",
    [
        base64.b64encode(bytes(range(16))).decode(),
        "this-is-not-base64-at-all!!",
        bytes(range(32)).hex(),
    ],
    ids=["16_bytes", "not_base64", "hex"],
)
def test_bad_environment_value_is_refused_without_echoing_it(
    env_value: str, tmp_path: Path
) -> None:
    with pytest.raises(CustodyError) as caught:
        load_master_key(env_value, tmp_path / "master.key", create=True)
    assert env_value not in str(caught.value)
    assert not (tmp_path / "master.key").exists()


def test_a_corrupt_master_key_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text("c2hvcnQga2V5IGNvbnRlbnQ=\n")
    with pytest.raises(CustodyError) as caught:
        load_master_key(None, path, create=True)
    assert "c2hvcnQga2V5IGNvbnRlbnQ" not in str(caught.value)
    assert path.read_text() == "c2hvcnQga2V5IGNvbnRlbnQ=\n"


def test_a_group_readable_file_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(MASTER).decode() + "\n")
    os.chmod(path, 0o644)
    assert load_master_key(None, path) == MASTER


def test_creating_in_a_missing_directory_is_a_custody_error(tmp_path: Path) -> None:
    with pytest.raises(CustodyError):
        load_master_key(None, tmp_path / "absent" / "master.key", create=True)
