"""Key material at rest: how a pool's FCM service account and APNs key are kept in the store.

A stored secret is one of:

- ``fernet:<token>``: encrypted with the first key of ``PUSHSYNC_SECRET_KEY`` (Fernet: AES-128-CBC
  with an HMAC-SHA256, so a changed or truncated value fails to open instead of decrypting to junk);
  every key of the list can open it, which is how a key is rotated (``pushsync pool rekey``);
- ``file:<absolute path>``: a reference; the worker reads the file each time it loads the pool;
- anything else: plain text written by a version before encryption, still readable so that an
  upgrade loses no push, shown as ``plaintext`` by ``pool show`` until ``pool rekey`` seals it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

ENCRYPTED = "fernet:"
REFERENCE = "file:"


class SecretError(ValueError):
    """Key material that cannot be stored or opened; the message never holds the material."""


@dataclass(frozen=True)
class Keyring:
    keys: tuple[str, ...]

    @classmethod
    def from_setting(cls, value: str | tuple[str, ...] | None) -> Keyring:
        if not value:
            return cls(())
        keys = tuple(k for k in (value.replace(",", " ").split() if isinstance(value, str) else value) if k)
        for n, key in enumerate(keys, start=1):
            try:
                Fernet(key)
            except (ValueError, TypeError):
                raise SecretError(f"PUSHSYNC_SECRET_KEY: key {n} of {len(keys)} is not a Fernet key "
                                  "(32 url-safe base64-encoded bytes; make one with "
                                  "`pushsync pool new-key`)") from None
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def _fernet(self) -> MultiFernet:
        return MultiFernet([Fernet(k) for k in self.keys])

    def seal(self, material: str) -> str:
        if not self.keys:
            raise SecretError("refusing to store key material unencrypted: set PUSHSYNC_SECRET_KEY (make a key "
                              "with `pushsync pool new-key`), or keep the key in a file the workers can read "
                              "and pass --by-reference")
        return ENCRYPTED + self._fernet().encrypt(material.encode()).decode()

    def open(self, stored: str) -> str:
        if stored.startswith(ENCRYPTED):
            if not self.keys:
                raise SecretError("the pool's credentials are encrypted and PUSHSYNC_SECRET_KEY is not set")
            try:
                return self._fernet().decrypt(stored[len(ENCRYPTED):].encode()).decode()
            except InvalidToken:
                raise SecretError("the pool's credentials do not open with any key of PUSHSYNC_SECRET_KEY "
                                  "(a key was removed before `pushsync pool rekey` ran, or the value was changed)"
                                  ) from None
        if stored.startswith(REFERENCE):
            path = stored[len(REFERENCE):]
            try:
                return Path(path).read_text()
            except OSError as exc:
                raise SecretError(f"cannot read the pool's key file {path}: {exc.strerror}") from None
            except UnicodeDecodeError:  # a key file replaced by something that is not a PEM or JSON text
                raise SecretError(f"the pool's key file {path} is not text") from None
        return stored

    def reseal(self, stored: str) -> str:
        """The value sealed under the first key (plain text too); a reference stays a reference."""
        if stored.startswith(REFERENCE):
            return stored
        return self.seal(self.open(stored))


def storage(stored: str | None) -> str | None:
    """How a stored secret is kept, for ``pool show``: encrypted, file reference or plaintext."""
    if stored is None:
        return None
    if stored.startswith(ENCRYPTED):
        return "encrypted"
    if stored.startswith(REFERENCE):
        return f"file {stored[len(REFERENCE):]}"
    return "plaintext (run `pushsync pool rekey`)"


def reference(path: str) -> str:
    return REFERENCE + str(Path(path).resolve())


def new_key() -> str:
    return Fernet.generate_key().decode()

