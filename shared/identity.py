"""Who is calling: the verified identity behind an HTTP request to an operator route
(rollback, approve, promote).

In the cloud, Cloud Run lets a request through only with a Google-signed ID token
(``Authorization: Bearer ...``) from a principal holding the invoker role, and passes the
header on; we verify the same token again (signature against Google's certificates,
issuer, audience = the function's URL, expiry) to learn *who* called. Locally the stack
creates an RSA signing key in its state directory (``identity/``) and mints tokens of the
same shape with it (``bookcast token``), so both run one code path: ``google.auth.jwt.decode``
with a set of certificates, only the certificates' source differs.

The body's ``actor`` is never trusted; routes keep it as a note beside the verified caller.

    caller = verified_caller(request.headers, cfg)   # raises IdentityError (401 / 403)
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from shared.config import Settings
from shared.logs import get_logger

log = get_logger(__name__)

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
LOCAL_ISSUER = "https://identity.bookcast.local"
LOCAL_CALLER = "operator@bookcast.local"
PRIVATE_KEY_FILE = "signing-key.pem"
CERTS_FILE = "certs.json"
CLOCK_SKEW_SECONDS = 30
GOOGLE_CERTS_TTL_SECONDS = 3600


@dataclass(frozen=True)
class Caller:
    email: str
    subject: str
    issuer: str


class IdentityError(Exception):
    """A request refused for its identity; ``status`` and ``code`` are the HTTP answer."""
    status = 403
    code = "forbidden"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class MissingIdentity(IdentityError):
    status = 401
    code = "unauthenticated"


class InvalidIdentity(IdentityError):
    code = "invalid_identity"


class CallerNotAllowed(IdentityError):
    code = "caller_not_allowed"


def bearer_token(headers: Mapping[str, str]) -> str:
    value = (headers.get("Authorization") or "").strip()
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MissingIdentity("send an ID token: Authorization: Bearer <token> "
                              "(locally `bookcast token --audience URL` mints one)")
    return token.strip()


def local_keys_dir(cfg: Settings) -> Path:
    return Path(cfg.identity.local_keys_dir or Path(cfg.state_dir) / "identity").resolve()


_google_certs: dict = {"certs": None, "fetched": 0.0}
_google_lock = threading.Lock()


def _certificates(cfg: Settings) -> dict[str, str]:
    """Key id → public key (PEM) of the issuer this deployment trusts."""
    if cfg.identity.issuer == "local":
        path = local_keys_dir(cfg) / CERTS_FILE
        if not path.exists():
            raise InvalidIdentity(f"no local signing key in {path.parent}: start the local cloud (`make up`) "
                                  "or mint a token first")
        return json.loads(path.read_text())
    import requests

    with _google_lock:  # Google rotates its keys daily and publishes them a day ahead: an hour's cache is safe
        if _google_certs["certs"] is None or time.monotonic() - _google_certs["fetched"] > GOOGLE_CERTS_TTL_SECONDS:
            response = requests.get(cfg.identity.google_certs_url, timeout=10)
            response.raise_for_status()
            _google_certs.update(certs=response.json(), fetched=time.monotonic())
        return _google_certs["certs"]


def verified_caller(headers: Mapping[str, str], cfg: Settings) -> Caller:
    """The caller behind a request's bearer ID token: signature, issuer, audience, expiry and
    a verified email checked, then the allow-list (empty: anyone the invoker IAM lets in)."""
    from google.auth import exceptions, jwt

    token = bearer_token(headers)
    if not cfg.identity.audiences:
        raise InvalidIdentity("this function has no audience configured (BOOKCAST_IDENTITY__AUDIENCES)")
    try:
        claims = jwt.decode(token, certs=_certificates(cfg), audience=cfg.identity.audiences,
                            clock_skew_in_seconds=CLOCK_SKEW_SECONDS)
    except (ValueError, exceptions.GoogleAuthError) as error:
        raise InvalidIdentity(f"the ID token was refused: {error}") from None
    trusted = {LOCAL_ISSUER} if cfg.identity.issuer == "local" else GOOGLE_ISSUERS
    if claims.get("iss") not in trusted:
        raise InvalidIdentity(f"the ID token comes from an untrusted issuer {claims.get('iss')!r}")
    email = claims.get("email")
    if not email or claims.get("email_verified") is not True:
        raise InvalidIdentity("the ID token carries no verified email")
    allowed = cfg.identity.allowed_callers
    if allowed and email not in allowed and f"domain:{email.rpartition('@')[2]}" not in allowed:
        raise CallerNotAllowed(f"{email} may not call this route")
    return Caller(email=email, subject=str(claims.get("sub", "")), issuer=claims["iss"])


def ensure_local_key(directory: Path) -> Path:
    """The local stack's token signing key (RSA 2048) and its public certificate set, made
    once per state directory."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    directory.mkdir(parents=True, exist_ok=True)
    if (directory / PRIVATE_KEY_FILE).exists() and (directory / CERTS_FILE).exists():
        return directory
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    key_id = hashlib.sha256(public).hexdigest()[:16]
    partial = directory / f"{PRIVATE_KEY_FILE}.{uuid.uuid4().hex}"
    partial.write_bytes(private)
    partial.chmod(0o600)
    partial.rename(directory / PRIVATE_KEY_FILE)
    (directory / CERTS_FILE).write_text(json.dumps({key_id: public.decode()}, indent=2))
    return directory


def mint_local_token(cfg: Settings, audience: str, email: str = LOCAL_CALLER, lifetime_seconds: int = 3600) -> str:
    """An ID token for ``audience`` signed with the local stack's key: what Google's token
    service issues to a caller in the cloud."""
    from google.auth import crypt, jwt

    directory = ensure_local_key(local_keys_dir(cfg))
    (key_id,) = json.loads((directory / CERTS_FILE).read_text())
    signer = crypt.RSASigner.from_string((directory / PRIVATE_KEY_FILE).read_bytes(), key_id=key_id)
    issued = int(time.time())
    payload = {"iss": LOCAL_ISSUER, "aud": audience, "sub": email, "email": email, "email_verified": True,
               "iat": issued, "exp": issued + lifetime_seconds}
    return jwt.encode(signer, payload).decode()


def record_refusal(cfg: Settings, error: IdentityError, route: str, note: str | None = None,
                   correlation_id: str | None = None, store=None) -> str:
    """Audits a refused request (who it claimed to be, why it was refused) in Firestore."""
    from shared.layout import AuditKind, Collection
    from shared.runstore import RunStore, now

    store = store or RunStore(cfg)
    audit_id = f"refused-{uuid.uuid4().hex[:12]}"
    store.col(Collection.AUDIT).document(audit_id).set({"kind": AuditKind.REFUSED, "route": route, "status": error.status,
                                               "code": error.code, "detail": error.message, "note": note,
                                               "at": now(), "correlation_id": correlation_id})
    log.warning("refused %s: %s", route, error.message, extra={"audit_id": audit_id, "code": error.code})
    return audit_id
