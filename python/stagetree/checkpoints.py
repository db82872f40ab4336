"""The on-disk checkpoint format, shared with the TypeScript checkpoint store.

A checkpoint with key ``K`` in directory ``D`` is the file ``D/K.ckpt``::

    bytes 0..8    b"STCKPT01"              magic and format version (ASCII)
    bytes 8..40   SHA-256 of the payload   32 raw bytes
    bytes 40..    payload                  what Trainer.save() returned

Writes are atomic: the bytes go to ``D/.tmp-K-<pid>-<random>``, which is fsynced, renamed
over ``D/K.ckpt`` and the directory fsynced, so a reader sees the old file, the new
file or nothing, never a part. Reads check the magic and the checksum and raise
``CheckpointCorrupt`` naming the file and what is wrong.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Union

__all__ = [
    "MAGIC",
    "HEADER_SIZE",
    "CheckpointError",
    "CheckpointNotFound",
    "CheckpointCorrupt",
    "checkpoint_path",
    "encode",
    "decode",
    "write_checkpoint",
    "read_checkpoint",
]

MAGIC = b"STCKPT01"
HEADER_SIZE = len(MAGIC) + 32

PathLike = Union[str, "os.PathLike[str]"]

# The engine's state keys: "K" then 1 to 127 base64url characters (the TypeScript store's
# CHECKPOINT_KEY_PATTERN; both sides accept exactly the same keys).
_KEY = re.compile(r"^K[A-Za-z0-9_-]{1,127}$")


class CheckpointError(Exception):
    """A checkpoint could not be written or read. ``code`` is stable."""

    code = "CHECKPOINT"

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class CheckpointNotFound(CheckpointError):
    code = "CHECKPOINT_NOT_FOUND"


class CheckpointCorrupt(CheckpointError):
    code = "CHECKPOINT_CORRUPT"


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise CheckpointError(
            f'checkpoint key: expected "K" then 1 to 127 of [A-Za-z0-9_-], got {key!r}'
        )
    return key


def checkpoint_path(directory: PathLike, key: str) -> Path:
    """Where the checkpoint with this key lives."""
    return Path(directory) / f"{_check_key(key)}.ckpt"


def encode(payload: bytes) -> bytes:
    """The file contents for a payload: magic, SHA-256, payload."""
    payload = bytes(payload)
    return MAGIC + hashlib.sha256(payload).digest() + payload


def decode(data: bytes, where: str = "checkpoint") -> bytes:
    """The payload of a checkpoint file's contents, after checking magic and checksum."""
    if len(data) < HEADER_SIZE:
        raise CheckpointCorrupt(
            f"{where}: truncated: {len(data)} bytes, a checkpoint has at least {HEADER_SIZE}"
        )
    magic = bytes(data[: len(MAGIC)])
    if magic != MAGIC:
        raise CheckpointCorrupt(
            f"{where}: not a stagetree checkpoint: expected magic {MAGIC!r}, got {magic!r}"
        )
    want = bytes(data[len(MAGIC) : HEADER_SIZE])
    payload = bytes(data[HEADER_SIZE:])
    got = hashlib.sha256(payload).digest()
    if got != want:
        raise CheckpointCorrupt(
            f"{where}: checksum mismatch: the header says sha256 {want.hex()}, the "
            f"{len(payload)}-byte payload hashes to {got.hex()}"
        )
    return payload


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError as e:  # pragma: no cover - some file systems refuse
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_checkpoint(directory: PathLike, key: str, payload: bytes) -> Path:
    """Writes ``payload`` as checkpoint ``key`` in ``directory`` (created if missing),
    atomically. Returns the file's path."""
    final = checkpoint_path(directory, key)
    d = final.parent
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(6)}"
    data = memoryview(encode(payload))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            while data:
                n = os.write(fd, data)
                data = data[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(d)
    return final


def read_checkpoint(directory: PathLike, key: str) -> bytes:
    """The payload of checkpoint ``key``; ``CheckpointNotFound`` or ``CheckpointCorrupt``
    when it is missing or damaged."""
    path = checkpoint_path(directory, key)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointNotFound(f"checkpoint {key}: no file {path}", path) from None
    try:
        return decode(data, f"checkpoint {key} ({path})")
    except CheckpointCorrupt as e:
        e.path = path
        raise
