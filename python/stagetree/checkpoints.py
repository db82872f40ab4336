r"""The on-disk checkpoint format, shared with the TypeScript checkpoint store.

A checkpoint with key ``K`` in directory ``D`` is the file ``D/K.ckpt``::

    bytes 0..8    b"STCKPT02"              magic and format version 2 (ASCII)
    bytes 8..40   digest                   32 raw bytes, see below
    bytes 40..    payload                  what Trainer.save() returned

    digest = SHA-256(b"stagetree checkpoint\x00" + K (ASCII) + b"\x00" + payload)

The digest binds the content to its key: a valid file saved under another key's name
(two files swapped, a copy under the wrong name) fails the check like a damaged one, so
the engine recomputes the state instead of continuing from the wrong one. Files of
format 1 (magic ``STCKPT01``, digest of the payload alone) are reported as corrupt with
a message saying the format is old (the engine recomputes them).

Writes are atomic: the bytes go to ``D/.tmp-K-<pid>-<random>``, which is fsynced, renamed
over ``D/K.ckpt`` and the directory fsynced, so a reader sees the old file, the new
file or nothing, never a part. Reads check the magic and the digest and raise
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
    "OLD_MAGIC",
    "HEADER_SIZE",
    "digest",
    "CheckpointError",
    "CheckpointNotFound",
    "CheckpointCorrupt",
    "checkpoint_path",
    "encode",
    "decode",
    "write_checkpoint",
    "read_checkpoint",
]

MAGIC = b"STCKPT02"
#: The magic of format 1 (digest of the payload alone): read as corrupt, "old format".
OLD_MAGIC = b"STCKPT01"
HEADER_SIZE = len(MAGIC) + 32
#: What the digest hashes before the key (then a NUL and the payload).
DIGEST_PREFIX = b"stagetree checkpoint\x00"

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


def digest(key: str, payload: bytes) -> bytes:
    """The 32-byte digest of checkpoint ``key`` holding ``payload``:
    SHA-256(b"stagetree checkpoint\\x00" + key + b"\\x00" + payload)."""
    h = hashlib.sha256(DIGEST_PREFIX)
    h.update(_check_key(key).encode("ascii"))
    h.update(b"\x00")
    h.update(payload)
    return h.digest()


def encode(key: str, payload: bytes) -> bytes:
    """The file contents of checkpoint ``key`` holding ``payload``: magic, digest,
    payload."""
    payload = bytes(payload)
    return MAGIC + digest(key, payload) + payload


def decode(data: bytes, key: str, where: str | None = None) -> bytes:
    """The payload of checkpoint ``key`` from a file's contents, after checking the
    magic and the digest (which also fails for another key's valid file)."""
    where = where or f"checkpoint {key}"
    magic = bytes(data[: len(MAGIC)])
    if magic == OLD_MAGIC:
        raise CheckpointCorrupt(
            f"{where}: old checkpoint format {OLD_MAGIC.decode()} (this version reads "
            f"{MAGIC.decode()}, whose digest binds the content to its key); the engine "
            "recomputes it"
        )
    if len(data) < HEADER_SIZE:
        raise CheckpointCorrupt(
            f"{where}: truncated: {len(data)} bytes, a checkpoint has at least {HEADER_SIZE}"
        )
    if magic != MAGIC:
        raise CheckpointCorrupt(
            f"{where}: not a stagetree checkpoint: expected magic {MAGIC!r}, got {magic!r}"
        )
    want = bytes(data[len(MAGIC) : HEADER_SIZE])
    payload = bytes(data[HEADER_SIZE:])
    got = digest(key, payload)
    if got != want:
        raise CheckpointCorrupt(
            f"{where}: checksum mismatch: the header says {want.hex()}, the "
            f"{len(payload)}-byte payload under key {key} hashes to {got.hex()} (a damaged "
            f"file, or another checkpoint's file under this name)"
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
    data = memoryview(encode(key, payload))
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
        return decode(data, key, f"checkpoint {key} ({path})")
    except CheckpointCorrupt as e:
        e.path = path
        raise
