"""SCRAM-SHA-256 verifiers, as PostgreSQL and PgBouncer store them.

Lets a role write `SCRAM-SHA-256$4096:salt$StoredKey:ServerKey` into a file
instead of a plaintext password. The salt derives from a seed (the role name)
so that re-runs produce the same verifier and the task stays idempotent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from ansible.errors import AnsibleFilterError

ITERATIONS = 4096


def scram_sha256(password: str, seed: str, iterations: int = ITERATIONS) -> str:
    """Return the SCRAM-SHA-256 verifier of `password` (RFC 5802/7677)."""
    if not password:
        raise AnsibleFilterError("scram_sha256: empty password")
    # 16 bytes of salt, stable for a (seed, password) pair.
    salt = hmac.new(str(seed).encode(), str(password).encode(), hashlib.sha256).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", str(password).encode(), salt, int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class FilterModule:
    """SCRAM filters for neurondb.ha."""

    def filters(self) -> dict[str, Any]:
        return {"scram_sha256": scram_sha256}
