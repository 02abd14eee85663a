"""Test credentials: nkeys, NATS JWTs (operator mode, signed with nkeys), TLS certificates.

``nsc`` is not available, so the decentralised-auth chain is built by hand: an operator
signs an account, the account signs a user, and the user's JWT plus its seed make the
``.creds`` file nats-py reads. Certificates come from ``trustme`` (a throwaway CA).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nkeys


@dataclass(frozen=True)
class Key:
    """An nkey pair: the seed (secret) and the public key."""

    seed: bytes
    public: str

    @classmethod
    def new(cls, prefix: int) -> Key:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return cls(seed, nkeys.from_seed(bytearray(seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(issuer: Key, subject: str, name: str, nats: dict[str, object]) -> str:
    """A NATS v2 JWT for ``subject`` signed by ``issuer`` (ed25519-nkey)."""
    claims: dict[str, object] = {
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.sha512(json.dumps(claims, sort_keys=True).encode()).digest()[:32]
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = _b64(issuer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{signature}"


UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}


def operator_setup(directory: Path, users: list[str]) -> tuple[Path, dict[str, Path]]:
    """Write a server config (operator mode, memory resolver) and one .creds file per user."""
    operator = Key.new(nkeys.PREFIX_BYTE_OPERATOR)
    account = Key.new(nkeys.PREFIX_BYTE_ACCOUNT)
    op_jwt = jwt(operator, operator.public, "fedgate-op", {"type": "operator"})
    acct_jwt = jwt(operator, account.public, "FEDGATE", {"type": "account", "limits": UNLIMITED})
    (directory / "operator.jwt").write_text(op_jwt)
    conf = directory / "operator.conf"
    conf.write_text(
        f'operator: "{directory / "operator.jwt"}"\n'
        "resolver: MEMORY\n"
        f'resolver_preload: {{ {account.public}: "{acct_jwt}" }}\n'
    )
    creds: dict[str, Path] = {}
    for name in users:
        user = Key.new(nkeys.PREFIX_BYTE_USER)
        user_jwt = jwt(
            account,
            user.public,
            name,
            {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
        )
        path = creds[name] = directory / f"{name}.creds"
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
    return conf, creds
