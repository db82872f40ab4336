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
    CheckpointCorrupt,
    CheckpointError,
    CheckpointNotFound,
    checkpoint_path,
    decode,
    encode,
    read_checkpoint,
    write_checkpoint,
)


def test_round_trip_and_layout(tmp_path: Path) -> None:
    payload = os.urandom(100_000) + b"\x00tail"
    path = write_checkpoint(tmp_path, "Kabc_-123", payload)
    assert path == tmp_path / "Kabc_-123.ckpt"
    raw = path.read_bytes()
    assert raw[:8] == b"STCKPT01" == MAGIC
    assert raw[8:40] == hashlib.sha256(payload).digest()
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
    path.write_bytes(b"STCKPT02" + b"\x00" * 40)
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


def test_same_bytes_as_the_typescript_store(tmp_path: Path) -> None:
    golden = json.loads((Path(__file__).parent / "golden_schedules.json").read_text())["checkpoint"]
    payload = bytes.fromhex(golden["payloadHex"])
    file = bytes.fromhex(golden["fileHex"])
    assert encode(payload) == file
    assert decode(file) == payload
    (tmp_path / "Kts.ckpt").write_bytes(file)
    assert read_checkpoint(tmp_path, "Kts") == payload
