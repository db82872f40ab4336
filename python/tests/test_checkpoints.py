"""The checkpoint file format shared with the TypeScript store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from stagetree.checkpoints import (
    HEADER_SIZE,
    MAGIC,
    OLD_MAGIC,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointNotFound,
    checkpoint_path,
    decode,
    digest,
    encode,
    read_checkpoint,
    write_checkpoint,
)


def test_round_trip_and_layout(tmp_path: Path) -> None:
    payload = os.urandom(100_000) + b"\x00tail"
    path = write_checkpoint(tmp_path, "Kabc_-123", payload)
    assert path == tmp_path / "Kabc_-123.ckpt"
    raw = path.read_bytes()
    assert raw[:8] == b"STCKPT02" == MAGIC
    assert raw[8:40] == hashlib.sha256(b"stagetree checkpoint\x00Kabc_-123\x00" + payload).digest()
    assert raw[40:] == payload and HEADER_SIZE == 40
    assert read_checkpoint(tmp_path, "Kabc_-123") == payload
    assert [p.name for p in tmp_path.iterdir()] == ["Kabc_-123.ckpt"]  # no temp file left


def test_empty_payload_and_overwrite(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, "K1", b"")
    assert read_checkpoint(tmp_path, "K1") == b""
    write_checkpoint(tmp_path, "K1", b"second")
    assert read_checkpoint(tmp_path, "K1") == b"second"


def test_creates_the_directory(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    write_checkpoint(d, "Kd", b"x")
    assert read_checkpoint(d, "Kd") == b"x"


def test_missing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFound, match="checkpoint Knope: no file") as e:
        read_checkpoint(tmp_path, "Knope")
    assert e.value.code == "CHECKPOINT_NOT_FOUND"


def test_flipped_payload_bit_is_caught(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, "Kx", b"hello world" * 100)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 17] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorrupt, match="checksum mismatch") as e:
        read_checkpoint(tmp_path, "Kx")
    assert e.value.path == path
    assert str(path) in str(e.value)


def test_truncated_and_bad_magic(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, "Kx", b"payload")
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(CheckpointCorrupt, match="truncated: 30 bytes"):
        read_checkpoint(tmp_path, "Kx")
    path.write_bytes(b"STCKPT03" + b"\x00" * 40)
    with pytest.raises(CheckpointCorrupt, match="expected magic"):
        read_checkpoint(tmp_path, "Kx")
    path.write_bytes(b"")
    with pytest.raises(CheckpointCorrupt, match="truncated"):
        read_checkpoint(tmp_path, "Kx")


def test_truncated_payload_fails_checksum(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, "Kx", b"0123456789" * 10)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CheckpointCorrupt, match="checksum mismatch"):
        read_checkpoint(tmp_path, "Kx")


@pytest.mark.parametrize(
    "key", ["", "K", "Kx.y", "kx", ".Kx", "K/b", "K/../up", "K" + "x" * 128, "K sp", "xK", "Kx\n"]
)
def test_bad_keys_are_rejected(tmp_path: Path, key: str) -> None:
    with pytest.raises(CheckpointError, match="checkpoint key"):
        checkpoint_path(tmp_path, key)


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path, "Kx", b"data")
    assert list(tmp_path.iterdir()) == []


def test_golden_digest_vector() -> None:
    # The shared test vector of format 2 (the TypeScript store's tests check the same):
    # key "Kabc", payload b"hello".
    d = digest("Kabc", b"hello")
    assert d.hex() == hashlib.sha256(b"stagetree checkpoint\x00Kabc\x00hello").hexdigest()
    assert d.hex() == "45d0d11fdd0387b1d2d5c851538302cc23d93d59414d5acf117fc7843c0caefb"
    assert encode("Kabc", b"hello") == b"STCKPT02" + d + b"hello"
    assert decode(b"STCKPT02" + d + b"hello", "Kabc") == b"hello"


def test_swapped_files_are_corrupt(tmp_path: Path) -> None:
    # Two valid checkpoints whose files trade places (or a copy under the wrong name):
    # each is a valid file of the other key, so only the key in the digest tells.
    a = write_checkpoint(tmp_path, "Ka", b"state of a" * 10)
    b = write_checkpoint(tmp_path, "Kb", b"state of b" * 10)
    raw_a, raw_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(raw_b)
    b.write_bytes(raw_a)
    for key, path in (("Ka", a), ("Kb", b)):
        with pytest.raises(CheckpointCorrupt, match="checksum mismatch") as e:
            read_checkpoint(tmp_path, key)
        assert e.value.path == path and e.value.code == "CHECKPOINT_CORRUPT"
        assert "another checkpoint's file" in str(e.value)
    # Same payload, other key: still refused.
    with pytest.raises(CheckpointCorrupt, match="checksum mismatch"):
        decode(encode("Kx", b"same"), "Ky")


def test_format_1_is_old_and_corrupt(tmp_path: Path) -> None:
    payload = b"a state of format 1"
    old = OLD_MAGIC + hashlib.sha256(payload).digest() + payload
    (tmp_path / "Kold.ckpt").write_bytes(old)
    with pytest.raises(CheckpointCorrupt, match="old checkpoint format STCKPT01") as e:
        read_checkpoint(tmp_path, "Kold")
    assert str(tmp_path / "Kold.ckpt") in str(e.value)
    # Even a truncated format-1 file says so.
    with pytest.raises(CheckpointCorrupt, match="old checkpoint format"):
        decode(OLD_MAGIC + b"\x00" * 5, "Kold")


def test_same_bytes_as_the_typescript_store(tmp_path: Path) -> None:
    # golden_schedules.json's "checkpoint" entry is written by the TypeScript store
    # (tests/make_golden.sh): both sides produce and accept the same bytes.
    golden = json.loads((Path(__file__).parent / "golden_schedules.json").read_text())["checkpoint"]
    key = golden["key"]
    payload = bytes.fromhex(golden["payloadHex"])
    file = bytes.fromhex(golden["fileHex"])
    assert encode(key, payload) == file
    assert decode(file, key) == payload
    (tmp_path / f"{key}.ckpt").write_bytes(file)
    assert read_checkpoint(tmp_path, key) == payload
    (tmp_path / "Kother.ckpt").write_bytes(file)
    with pytest.raises(CheckpointCorrupt, match="checksum mismatch"):
        read_checkpoint(tmp_path, "Kother")
