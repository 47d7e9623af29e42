"""Root private keys and the node's identity key at rest, encrypted, in ``<data-dir>/ca/``.

Only approved signers keep root keys; the replicated store never holds one.
Every agent keeps one P-256 identity key (``identity.key``, made on first
use): a signer approval names its public key, and root keys are sealed to
it in transit (`ca/approval.py`, `ca/sealing.py`). Each key is one file
(``root-<hex id>.key`` for a root, and beside it ``root-<hex id>.record``,
the root's public record as this node last trusted it, `ca/custody.py`):
``b"MNCA1" | nonce(12) | AES-256-GCM(PKCS#8 PEM)``, with the associated data
``node id | root id`` (``node id | identity`` for the identity key) so a
file copied to another node or renamed to another root does not open.

The AES key is HKDF-SHA256 of a 32-byte random secret kept next to the keys
(``ca/kek.secret``, mode 0600), salted with the node id. This protects a root
key that leaves the node on its own: a key file in a backup of ``ca/``, a
file copied for debugging, a tarball of the keys. It does not protect
against anyone who can read the whole data dir (the secret is there) or the
agent's memory, or who runs as the agent's user; an HSM or an external
provider is the answer to those.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .pem import PemError, generate_key, key_from_pem, key_to_pem

__all__ = ["KeyStore", "KeyStoreError"]

_MAGIC = b"MNCA1"
_NONCE_BYTES = 12
_SECRET_BYTES = 32
_INFO = b"meshnode ca root key at rest v1"
# A root record is at most a CA value's size (ca/fields.py: 32 KiB), plus a field.
_RECORD_MAX_BYTES = 64 * 1024
_ID = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){0,63}$")


class KeyStoreError(Exception):
    """A key file cannot be read or written (one line for the log)."""


class KeyStore:
    """Encrypted root keys of one node, by root id."""

    def __init__(self, directory: Path, node_id: str) -> None:
        self.directory = directory
        self._node_id = node_id
        self._aead: AESGCM | None = None
        self._identity: ec.EllipticCurvePrivateKey | None = None

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            secret_path = self.directory / "kek.secret"
            try:
                secret = secret_path.read_bytes()
            except FileNotFoundError:
                secret = os.urandom(_SECRET_BYTES)
                _write_private(secret_path, secret)
            if len(secret) != _SECRET_BYTES:
                raise KeyStoreError(f"{secret_path} is not a {_SECRET_BYTES}-byte secret")
            key = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=self._node_id.encode("utf-8"),
                info=_INFO,
            ).derive(secret)
            self._aead = AESGCM(key)
        return self._aead

    def _path(self, root_id: str) -> Path:
        if not _ID.match(root_id):
            raise KeyStoreError(f"root id {root_id[:80]!r} is not colon hex")
        return self.directory / f"root-{root_id.replace(':', '')}.key"

    def _aad(self, root_id: str) -> bytes:
        return f"{self._node_id}|{root_id}".encode()

    def save(self, root_id: str, key_pem: str) -> None:
        """Write (or replace) the key of `root_id`, durable on return."""
        self._seal_to(self._path(root_id), key_pem, self._aad(root_id))

    def _seal_to(self, path: Path, key_pem: str, aad: bytes) -> None:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._cipher().encrypt(nonce, key_pem.encode("ascii"), aad)
        _write_private(path, _MAGIC + nonce + sealed)

    def save_record(self, root_id: str, data: bytes) -> None:
        """Keep this node's own copy of root `root_id`'s record (public; see `ca/custody.py`)."""
        _write_private(self._record_path(root_id), data)

    def load_record(self, root_id: str) -> bytes | None:
        """The copy kept by `save_record`, None when there is none."""
        path = self._record_path(root_id)
        try:
            with path.open("rb") as file:
                return file.read(_RECORD_MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror or exc}") from None

    def _record_path(self, root_id: str) -> Path:
        return self._path(root_id).with_suffix(".record")

    def load(self, root_id: str) -> str | None:
        """The PEM key of `root_id`, None when this node does not hold it."""
        return self._open(self._path(root_id), self._aad(root_id))

    def identity_key(self) -> ec.EllipticCurvePrivateKey:
        """This node's identity key, made and saved on first use."""
        if self._identity is None:
            path = self.directory / "identity.key"
            aad = f"{self._node_id}|identity".encode()
            key_pem = self._open(path, aad)
            if key_pem is None:
                key_pem = key_to_pem(generate_key())
                self._seal_to(path, key_pem, aad)
            try:
                self._identity = key_from_pem(key_pem)
            except PemError as exc:
                raise KeyStoreError(f"{path}: {exc}") from None
        return self._identity

    def _open(self, path: Path, aad: bytes) -> str | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _NONCE_BYTES + 16:
            raise KeyStoreError(f"{path} is not a meshnode key file")
        nonce = data[len(_MAGIC) : len(_MAGIC) + _NONCE_BYTES]
        try:
            plain = self._cipher().decrypt(nonce, data[len(_MAGIC) + _NONCE_BYTES :], aad)
        except InvalidTag:
            raise KeyStoreError(f"{path} does not open with this node's key") from None
        return plain.decode("ascii")

    def held(self) -> set[str]:
        """Root ids with a key file here."""
        if not self.directory.is_dir():
            return set()
        found = set()
        for path in self.directory.glob("root-*.key"):
            hex_id = path.name[len("root-") : -len(".key")]
            found.add(":".join(hex_id[i : i + 2] for i in range(0, len(hex_id), 2)))
        return found

    def delete(self, root_id: str) -> None:
        """Destroy the key of `root_id`, and this node's copy of its record."""
        self._path(root_id).unlink(missing_ok=True)
        self._record_path(root_id).unlink(missing_ok=True)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only, via a rename (never half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
