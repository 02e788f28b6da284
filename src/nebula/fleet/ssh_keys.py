"""Private keys for agentless nodes, and the host keys we pin them to.

Keys arrive as pasted text: OpenSSH (`BEGIN OPENSSH PRIVATE KEY`), PKCS#1 RSA, SEC1 EC
or PKCS#8 PEM, encrypted or not. asyncssh reads all of these; this module turns its
exceptions into messages a person can act on.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final

import asyncssh

from nebula.kernel.errors import InvalidInput

SUPPORTED_FORMATS: Final = "OpenSSH, or PEM (PKCS#1 RSA, PKCS#8, EC)"
_PUBLIC_KEY_STARTS: Final = (
    b"ssh-",
    b"ecdsa-",
    b"sk-",
    b"-----BEGIN PUBLIC KEY",
    b"-----BEGIN RSA PUBLIC KEY",
    b"---- BEGIN SSH2 PUBLIC KEY",
)
# asyncssh raises KeyImportError for all of these; its messages are the only way to
# tell "encrypted, no passphrase" from "wrong passphrase" from "not a key".
_ENCRYPTED_MARK: Final = "Passphrase must be specified"
_NEEDS_BCRYPT: Final = "bcrypt"


def load_private_key(data: str | bytes, passphrase: str | None = None) -> asyncssh.SSHKey:
    """Read a private key; a bad key, a missing or wrong passphrase raise `InvalidInput`."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    raw = raw.replace(b"\r\n", b"\n").strip()
    if not raw:
        raise InvalidInput("The SSH private key is empty.")
    if raw.startswith(_PUBLIC_KEY_STARTS):
        raise InvalidInput(
            "This is a public key. Give the private key (the file without .pub).",
        )
    try:
        return asyncssh.import_private_key(raw, passphrase or None)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as err:
        raise _key_problem(raw, passphrase, str(err)) from None


def _key_problem(raw: bytes, passphrase: str | None, reason: str) -> InvalidInput:
    if _NEEDS_BCRYPT in reason:
        return InvalidInput(
            "This OpenSSH private key is encrypted, and reading encrypted OpenSSH keys "
            "needs the Python package bcrypt, which is not installed.",
            hint="Install bcrypt, or convert the key to PEM: ssh-keygen -p -m PEM -f KEYFILE",
        )
    if _ENCRYPTED_MARK in reason:
        return InvalidInput("The SSH private key is encrypted: give its passphrase.")
    if passphrase and _is_encrypted(raw):
        return InvalidInput("The passphrase does not open this SSH private key.")
    return InvalidInput(
        f"The SSH private key could not be read ({reason}).",
        hint=f"Paste the whole private key file: {SUPPORTED_FORMATS}.",
    )


def _is_encrypted(raw: bytes) -> bool:
    try:
        asyncssh.import_private_key(raw)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as err:
        return _ENCRYPTED_MARK in str(err)
    return False


def public_key_line(key: asyncssh.SSHKey) -> str:
    """The OpenSSH one-line form (`ssh-ed25519 AAAA...`), without a comment."""
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{algorithm} {blob}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


@dataclass(frozen=True)
class HostKeyPin:
    """A pinned host key: the whole public key, or only its SHA256 fingerprint."""

    fingerprint: str
    key: asyncssh.SSHKey | None

    def matches(self, key: asyncssh.SSHKey) -> bool:
        return hmac.compare_digest(self.fingerprint, fingerprint(key))


def parse_host_key(text: str) -> HostKeyPin:
    """Accept `ssh-ed25519 AAAA...`, a known_hosts line, or `SHA256:...`."""
    value = text.strip()
    if value.startswith("SHA256:") and len(value.split()) == 1:
        return HostKeyPin(fingerprint=value, key=None)
    words = value.split()
    # A known_hosts line starts with the host pattern; a public key line with its type.
    for candidate in (value, " ".join(words[1:])):
        try:
            key = asyncssh.import_public_key(candidate)
        except (asyncssh.KeyImportError, ValueError):
            continue
        return HostKeyPin(fingerprint=fingerprint(key), key=key)
    raise InvalidInput(
        "The pinned host key is not an SSH public key.",
        hint="Use the node's key as `ssh-keyscan` prints it (ssh-ed25519 AAAA...) "
        "or its fingerprint (SHA256:...).",
    )
