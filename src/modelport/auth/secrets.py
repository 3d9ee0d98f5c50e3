"""Secrets at rest: AES-GCM with a key derived from the platform key file (or `MODELPORT_SECRETS_KEY`).

Secret keys (SK) and app secrets must be recoverable — the verifier needs them to recompute a
signature — so they are encrypted, not hashed. The key comes from `MODELPORT_SECRETS_KEY` (hex,
a KMS-style injected key) when set, else from `$MODELPORT_HOME/secret.key` (mode 0600).
"""

from __future__ import annotations

import base64
import os
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_PREFIX = "v1:"


class SecretBox:
    def __init__(self, master_key: bytes) -> None:
        env = os.environ.get("MODELPORT_SECRETS_KEY")
        material = bytes.fromhex(env) if env else master_key
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"modelport secrets at rest").derive(material)
        self._aead = AESGCM(key)

    def seal(self, plaintext: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), b"modelport")
        return _PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, token: str) -> str:
        raw = base64.b64decode(token.removeprefix(_PREFIX))
        return self._aead.decrypt(raw[:12], raw[12:], b"modelport").decode()


def derive_hex(master_key: bytes, purpose: str) -> str:
    """A key for one purpose (e.g. the internal API between control plane and gateways), from the platform key."""
    info = f"modelport {purpose}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master_key).hex()
