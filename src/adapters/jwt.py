"""TokenService over pyjwt: task-instance tokens as Airflow issues them, and public API tokens.

Symmetric mode (the Airflow default) signs with the shared secret and HS512. Asymmetric mode (RS256 or
EdDSA) mints with a private key and verifies with its public half, or with a public key alone; its tokens
must carry the configured key's ``kid`` header. Verification accepts exactly the configured algorithm, so
``none`` and a weaker HMAC are refused. ``iss`` must be the configured issuer, and a token carrying one is
refused when none is configured.

Every claim Stateport reads is type- and range-checked after the signature: a validly signed token with
odd claims (a list for ``scope``, an ``exp`` past year 9999, a boolean ``iat``) is refused with 403 like any
other bad token. API tokens are renewed (``refresh_api_token``) up to a maximum lifetime counted from the
first token of the chain, whose issue time they carry in ``orig_iat``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey, Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import HMACAlgorithm

from stateport.config import ConfigError, Settings, ensure_secret
from stateport.domain.errors import Forbidden, Invalid, TokenExpired, Unauthenticated
from stateport.domain.lru import Lru
from stateport.domain.ports import TokenClaims
from stateport.domain.values import check_name

API_SCOPES = frozenset({"dags:write", "runs:write", "runs:read", "state:admin", "worker"})
TASK_TOKEN_TYPES = frozenset({"execution", "workload"})
INVALID = "Invalid auth token"
ASYMMETRIC = frozenset({"RS256", "EdDSA"})
# The issue time of the first token of a chain of API token renewals (a private claim).
ORIGINAL_IAT = "orig_iat"
# Stateport's claim of a task token minted for a claim: the key of the caller that claimed the task instance
# (``TokenClaims.claimant``; a digest of 32 hex digits, longer ones refused).
CLAIMANT = "claimant"
MAX_CLAIMANT = 64
# The longest subject a token may carry (a task token's is its task instance's id, 36 characters).
MAX_SUBJECT = 256
# 9999-12-31T23:59:59Z: any time claim past it (or before 1970) is refused, so it is always a valid date.
MAX_TIMESTAMP = 253_402_300_799
# Why pyjwt refused a token, said after INVALID (Airflow says only INVALID; the reason helps a user whose
# token was minted with another key or has expired, and tells an attacker nothing they do not know).
REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, "the signature did not verify (was it minted with this server's key?)"),
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not valid yet"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.MissingRequiredClaimError, "a required claim is missing"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
)

PrivateKey = RSAPrivateKey | Ed25519PrivateKey | Ed448PrivateKey
PublicKey = RSAPublicKey | Ed25519PublicKey | Ed448PublicKey


class _VerifiedCache:
    """A bounded LRU of verified tokens, each kept until it expires.

    HS512 verification costs real CPU on every request while a worker reuses one token for minutes, so a
    hit skips the signature check; expiry is still checked on every hit. Hand-written because the entry's
    lifetime depends on the token (``functools.lru_cache`` has no per-entry expiry).
    """

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._items: OrderedDict[str, tuple[TokenClaims, float]] = OrderedDict()

    def get(self, token: str, now: float) -> TokenClaims | None:
        item = self._items.get(token)
        if item is None:
            return None
        claims, valid_until = item
        if now >= valid_until:
            del self._items[token]
            return None
        self._items.move_to_end(token)
        return claims

    def put(self, token: str, claims: TokenClaims, valid_until: float) -> None:
        self._items[token] = (claims, valid_until)
        if len(self._items) > self._max:
            self._items.popitem(last=False)


class _KeyCheckedOnce(HMACAlgorithm):
    """PyJWT's HMAC, checking its key's shape once per key rather than on every signature.

    PyJWT checks an HMAC key for PEM, SSH, DER and JSON shapes each time it signs with it: 16 µs of a 63 µs
    mint here, and a chain run mints a token per task. The signing key is this service's own and never
    changes, so one check is the same check. Only for minting (``JwtTokenService._jws``): verification
    goes through ``jwt.decode`` unchanged.
    """

    def __init__(self, hash_alg: Any) -> None:
        super().__init__(hash_alg)
        self._checked: tuple[str | bytes, bytes] | None = None

    def prepare_key(self, key: str | bytes) -> bytes:
        checked = self._checked
        if checked is None or checked[0] is not key:
            checked = (key, super().prepare_key(key))
            self._checked = checked
        return checked[1]


def _signer(algorithm: str) -> jwt.PyJWS:
    """A PyJWS of its own for minting with ``algorithm`` (PyJWT's module-level one stays as it is)."""
    jws = jwt.PyJWS(algorithms=[algorithm])
    hashes = {"HS256": HMACAlgorithm.SHA256, "HS384": HMACAlgorithm.SHA384, "HS512": HMACAlgorithm.SHA512}
    if algorithm in hashes:
        jws.unregister_algorithm(algorithm)
        jws.register_algorithm(algorithm, _KeyCheckedOnce(hashes[algorithm]))
    return jws


class JwtTokenService:
    """Mints and verifies task-instance and public API tokens."""

    def __init__(
        self,
        *,
        algorithm: str,
        signing_key: str | PrivateKey | None,
        verifying_key: str | PublicKey,
        kid: str,
        task_audience: str,
        api_audience: str,
        issuer: str = "",
        leeway_s: float = 10.0,
        expiration_s: float = 600.0,
        task_renewal_s: float | None = None,
        api_max_lifetime_s: float = 30 * 86400.0,
        cache_size: int = 10_000,
    ) -> None:
        """``task_renewal_s``: the lifetime of a renewed task token (default ``expiration_s``); the server
        gives the longer of its JWT lifetime and its lease, so that a renewal outlives the heartbeat period.
        """
        self.algorithm = algorithm
        self._signing_key = signing_key
        self._verifying_key = verifying_key
        self.kid = kid
        self.task_audience = task_audience
        self.api_audience = api_audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.expiration_s = expiration_s
        self.task_renewal_s = expiration_s if task_renewal_s is None else task_renewal_s
        self.api_max_lifetime_s = api_max_lifetime_s
        self._require = ["aud", "exp", "iat", "sub", *(["iss"] if issuer else [])]
        self._task_cache = _VerifiedCache(cache_size)
        self._jws = _signer(algorithm)
        self._api_cache = _VerifiedCache(cache_size)
        # The renewal of a presented API token, per second it was made in: a client that keeps sending its
        # old token (it does not read Refreshed-API-Token) costs one signature a second, not one a request,
        # for the half of the token's life in which every answer carries a renewal.
        self._renewals: Lru[tuple[TokenClaims, int], str] = Lru(cache_size)

    def key_print(self) -> str:
        """A fingerprint of the key tokens are verified with, that tells keys apart and gives none away: an
        HMAC of a fixed text under a secret, a hash of a public key. Servers of one database compare theirs
        (``stateport.domain.deployment``)."""
        if isinstance(self._verifying_key, str):
            secret = self._verifying_key.encode()
            digest = hmac.new(secret, b"stateport token key", hashlib.sha256).hexdigest()
        else:
            der = self._verifying_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            digest = hashlib.sha256(der).hexdigest()
        return f"{self.algorithm}:{digest[:16]}"

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtTokenService:
        """Build the service from settings, loading key files (asymmetric) or the shared secret."""
        common: dict[str, Any] = {
            "task_audience": settings.jwt_audience,
            "api_audience": settings.api_audience,
            "issuer": settings.jwt_issuer,
            "leeway_s": settings.jwt_leeway_s,
            "expiration_s": settings.jwt_expiration_s,
            # A claim's token lives at least as long as the lease (domain/engine/claims.py): so must its
            # renewals, or with a JWT lifetime under a third of the lease (a heartbeat's period) a running
            # task's token would expire between two heartbeats.
            "task_renewal_s": max(settings.jwt_expiration_s, settings.lease_s),
            "api_max_lifetime_s": settings.api_token_max_lifetime_days * 86400,
        }
        if settings.jwt_algorithm not in ASYMMETRIC:
            secret = ensure_secret(settings).jwt_secret
            return cls(
                algorithm=settings.jwt_algorithm,
                signing_key=secret,
                verifying_key=secret,
                kid=settings.jwt_kid or "not-used",
                **common,
            )
        private: PrivateKey | None = None
        if settings.jwt_private_key_path:
            private = _load_private(Path(settings.jwt_private_key_path))
            public: PublicKey = private.public_key()
            if settings.jwt_public_key_path and not _same_key(
                public, _load_public(Path(settings.jwt_public_key_path))
            ):
                # Both given: the private key's own public key verifies, so another one given was passed
                # over without a word, a missing file too (an outsider's find).
                raise ConfigError(
                    f"STATEPORT_JWT_PUBLIC_KEY_PATH={settings.jwt_public_key_path} is not the public key of "
                    f"STATEPORT_JWT_PRIVATE_KEY_PATH={settings.jwt_private_key_path}: give the pair, or the "
                    "private key alone"
                )
        elif settings.jwt_public_key_path:
            public = _load_public(Path(settings.jwt_public_key_path))
        else:
            raise ConfigError("STATEPORT_JWT_PRIVATE_KEY_PATH or STATEPORT_JWT_PUBLIC_KEY_PATH is required")
        _check_key_type(settings.jwt_algorithm, public)
        return cls(
            algorithm=settings.jwt_algorithm,
            signing_key=private,
            verifying_key=public,
            kid=settings.jwt_kid or _thumbprint(public),
            **common,
        )

    # --- minting ---------------------------------------------------------------------------------------

    def mint_task_token(
        self,
        ti_id: uuid.UUID,
        *,
        ttl_s: float | None = None,
        scope: str = "execution",
        claimant: str | None = None,
    ) -> str:
        """A task-instance token as Airflow issues it: ``sub`` = the TI id, ``scope`` = execution; with
        ``claimant``, Stateport's claim of that name (``TokenClaims.claimant``)."""
        if scope not in TASK_TOKEN_TYPES:
            raise ValueError(f"scope must be one of {sorted(TASK_TOKEN_TYPES)}")
        return self._mint(self.task_audience, str(ti_id), scope, ttl_s, claimant=claimant)

    def mint_api_token(self, subject: str, scopes: frozenset[str], *, ttl_s: float | None = None) -> str:
        """A public API token carrying the given scopes (space-separated in the ``scope`` claim)."""
        unknown = scopes - API_SCOPES
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}; known: {' '.join(sorted(API_SCOPES))}")
        try:
            check_subject(subject, new=True)
        except Invalid as exc:
            raise ValueError(f"the subject: {exc.detail}") from exc
        now = int(time.time())
        scope = " ".join(sorted(scopes))
        return self._mint(self.api_audience, subject, scope, ttl_s, now=now, original_iat=now)

    def refresh_task_token(self, claims: TokenClaims) -> str:
        """A fresh token for the same task instance and scope, living ``task_renewal_s`` (see the port)."""
        scope = next(iter(claims.scopes))
        return self._mint(
            self.task_audience, claims.subject, scope, self.task_renewal_s, claimant=claims.claimant
        )

    def refresh_api_token(self, claims: TokenClaims, now: float) -> str | None:
        """A renewed API token (same subject, scopes and lifetime), or None when it may not be renewed.

        Renewal never goes past ``api_max_lifetime_s`` after the first token of the chain was minted: the
        new token expires at the earlier of now + its lifetime and that bound, and None is returned once
        that would not extend the presented token (so renewal stops; 0 turns it off).
        """
        if self.api_max_lifetime_s <= 0:
            return None
        issued = int(claims.issued_at.timestamp())
        expires = int(claims.expires_at.timestamp())
        origin = int((claims.original_issued_at or claims.issued_at).timestamp())
        start = int(now)
        until = min(start + (expires - issued), origin + int(self.api_max_lifetime_s))
        if until <= expires:
            return None
        renewed = self._renewals.get((claims, start))
        if renewed is None:
            scope = " ".join(sorted(claims.scopes))
            renewed = self._mint(
                self.api_audience, claims.subject, scope, until - start, now=start, original_iat=origin
            )
            self._renewals.put((claims, start), renewed)
        return renewed

    def _mint(
        self,
        audience: str,
        subject: str,
        scope: str,
        ttl_s: float | None,
        *,
        now: int | None = None,
        original_iat: int | None = None,
        claimant: str | None = None,
    ) -> str:
        """A signed token; ``ttl_s`` None is the configured lifetime, ``now`` None the current second."""
        if self._signing_key is None:
            raise ConfigError("this service verifies only: configure STATEPORT_JWT_PRIVATE_KEY_PATH to mint")
        now = int(time.time()) if now is None else now
        ttl = self.expiration_s if ttl_s is None else ttl_s
        if not math.isfinite(ttl) or not 0 <= now + ttl <= MAX_TIMESTAMP:
            raise ValueError(f"a lifetime of {ttl} s puts the expiry outside the years 1970-9999")
        claims: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "aud": audience,
            "nbf": now,
            "iat": now,
            # JWT times are whole seconds: rounded up, a lifetime under a second is not an expired token.
            "exp": now + math.ceil(ttl),
            "sub": subject,
            "scope": scope,
        }
        if original_iat is not None:
            claims[ORIGINAL_IAT] = original_iat
        if claimant is not None:
            claims[CLAIMANT] = claimant
        if self.issuer:
            claims["iss"] = self.issuer
        # What ``jwt.encode`` signs (the same JSON, byte for byte), signed by ``_jws``.
        payload = json.dumps(claims, separators=(",", ":")).encode()
        headers = {"kid": self.kid}
        token = self._jws.encode(payload, self._signing_key, algorithm=self.algorithm, headers=headers)
        if audience == self.task_audience:
            # A task token minted here is known good: the first call made with it (a worker's report, most
            # often the only one) skips verifying the signature this process just made, a few percent of a
            # chain run's server CPU. Expiry is still checked on every use (``_VerifiedCache.get``).
            self._task_cache.put(
                token, _claims("task", claims, frozenset({scope})), claims["exp"] + self.leeway_s
            )
        return token

    # --- verifying -------------------------------------------------------------------------------------

    def verify_task_token(
        self, token: str, *, allowed_types: frozenset[str] = frozenset({"execution"})
    ) -> TokenClaims:
        """Verify an Execution API token; its type (scope claim) must be one of ``allowed_types``."""
        now = time.time()
        claims = self._task_cache.get(token, now)
        if claims is None:
            payload = self._decode(token, self.task_audience)
            scope = payload.get("scope", "execution")
            if not isinstance(scope, str) or scope not in TASK_TOKEN_TYPES:
                raise Forbidden(f"{INVALID}: scope must be 'execution' or 'workload', got {_shown(scope)}")
            _check_claimant(payload)
            claims = _claims("task", payload, frozenset({scope}))
            self._task_cache.put(token, claims, payload["exp"] + self.leeway_s)
        kind = next(iter(claims.scopes))
        if kind not in allowed_types:
            raise Forbidden(
                f"Token type '{kind}' not allowed for this endpoint. "
                f"Allowed types: {', '.join(sorted(allowed_types))}"
            )
        return claims

    def verify_held_task_token(self, token: str) -> TokenClaims:
        """``verify_task_token`` whatever the token's expiry (not cached: a renewal's proof, rare)."""
        payload = self._decode(token, self.task_audience, expired_ok=True)
        scope = payload.get("scope", "execution")
        if scope != "execution":
            raise Forbidden(f"{INVALID}: only an execution token is renewed, not {_shown(scope)}")
        _check_claimant(payload)
        return _claims("task", payload, frozenset({scope}))

    def verify_api_token(self, token: str) -> TokenClaims:
        """Verify a public API token and return its claims."""
        now = time.time()
        claims = self._api_cache.get(token, now)
        if claims is None:
            payload = self._decode(token, self.api_audience)
            scope = payload.get("scope", "")
            if not isinstance(scope, str):
                raise Forbidden(f"{INVALID}: scope must be a space-separated string")
            original = payload.get(ORIGINAL_IAT)
            if original is not None and not _time_claim(original, upto=payload["iat"]):
                raise Forbidden(f"{INVALID}: claim '{ORIGINAL_IAT}' must be a time no later than 'iat'")
            # Scopes are separated by spaces (U+0020) only, as OAuth 2.0's (RFC 6749, 3.3): a tab or a
            # no-break space is part of a scope name, which then names no scope (it granted both).
            claims = _claims("api", payload, frozenset(scope.split(" ")) - {""})
            self._api_cache.put(token, claims, payload["exp"] + self.leeway_s)
        return claims

    def _decode(self, token: str, audience: str, *, expired_ok: bool = False) -> dict[str, Any]:
        if not token:
            raise Unauthenticated("Missing auth token")
        try:
            if self.algorithm in ASYMMETRIC:
                self._check_kid(jwt.get_unverified_header(token).get("kid"))
            payload: dict[str, Any] = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self.algorithm],
                audience=audience,
                issuer=self.issuer or None,
                leeway=self.leeway_s,
                options={"require": self._require, "verify_exp": not expired_ok},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired(_reason(exc)) from exc
        except jwt.PyJWTError as exc:
            raise Forbidden(_reason(exc)) from exc
        except (TypeError, ValueError, OverflowError) as exc:  # a claim pyjwt did not expect to see
            raise Forbidden(INVALID) from exc
        _check_payload(payload, issuer=self.issuer)
        other = self.api_audience if audience == self.task_audience else self.task_audience
        if other != audience and isinstance(payload["aud"], list) and other in payload["aud"]:
            # One token for both APIs: PyJWT takes any audience of a list, so it passed on each (an
            # outsider's find); a token is of one kind.
            raise Forbidden(f"{INVALID}: its audience names both APIs; a token is for one of them")
        return payload

    def _check_kid(self, kid: object) -> None:
        """Asymmetric tokens name their key (as Airflow requires): it must be the one configured."""
        if not kid:
            raise Forbidden(f"{INVALID}: the 'kid' header is required")
        if kid != self.kid:
            raise Forbidden(f"{INVALID}: unknown key id {_shown(kid)}")


def _reason(exc: jwt.PyJWTError) -> str:
    for kind, reason in REASONS:
        if isinstance(exc, kind):
            return f"{INVALID}: {reason}"
    return INVALID


def _shown(value: object) -> str:
    """A claim's value for an error message, cut short (it came from the caller)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _time_claim(value: object, *, upto: float = MAX_TIMESTAMP) -> bool:
    """A NumericDate Stateport can turn into a datetime: a finite number in 1970..``upto``, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # The comparisons alone: NaN compares false and the infinities fall outside the range; ``math.isfinite``
    # would turn an int into a float, and a 400-digit integer overflows one.
    return 0 <= value <= upto


def check_subject(subject: str, *, new: bool = False) -> None:
    """Invalid unless ``subject`` is a token subject Stateport takes: it names the caller in logs, metrics'
    keys and the runs it triggers, so it follows an identifier's rules (``values.check_name``) up to
    ``MAX_SUBJECT`` characters; a ``new`` one (being minted) has no whitespace at either end. A newline or
    NUL in it, or 6,000 characters, were taken and carried into every renewal (an outsider's find)."""
    check_name(subject, "sub", max_length=MAX_SUBJECT, new=new)


def _check_payload(payload: dict[str, Any], *, issuer: str) -> None:
    """The claims Stateport reads, checked for type and range (pyjwt checks only what it validates)."""
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Forbidden(f"{INVALID}: claim 'sub' must be a non-empty string")
    try:
        check_subject(subject)
    except Invalid as exc:
        raise Forbidden(f"{INVALID}: claim 'sub': {exc.detail}") from exc
    for name in ("exp", "iat", "nbf"):
        if name in payload and not _time_claim(payload[name]):
            raise Forbidden(f"{INVALID}: claim '{name}' must be a time between 1970 and 9999")
    if payload["iat"] > payload["exp"]:
        raise Forbidden(f"{INVALID}: claim 'iat' is later than 'exp'")
    if not issuer and "iss" in payload:
        # Without a configured issuer Stateport mints none: a token naming one came from another issuer
        # sharing the key (set STATEPORT_JWT_ISSUER to accept it).
        raise Forbidden(f"{INVALID}: unexpected issuer {_shown(payload['iss'])}")


def _claims(kind: str, payload: dict[str, Any], scopes: frozenset[str]) -> TokenClaims:
    original = payload.get(ORIGINAL_IAT) if kind == "api" else None
    claimant = payload.get(CLAIMANT) if kind == "task" else None
    return TokenClaims(
        kind=kind,
        subject=payload["sub"],
        scopes=scopes,
        expires_at=datetime.fromtimestamp(payload["exp"], UTC),
        issued_at=datetime.fromtimestamp(payload["iat"], UTC),
        original_issued_at=None if original is None else datetime.fromtimestamp(original, UTC),
        claimant=claimant,
    )


def _load_private(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"STATEPORT_JWT_PRIVATE_KEY_PATH={path}: {exc}") from exc
    if not isinstance(key, RSAPrivateKey | Ed25519PrivateKey | Ed448PrivateKey):
        raise ConfigError(f"STATEPORT_JWT_PRIVATE_KEY_PATH={path}: expected an RSA or Ed25519 key")
    return key


def _load_public(path: Path) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"STATEPORT_JWT_PUBLIC_KEY_PATH={path}: {exc}") from exc
    if not isinstance(key, RSAPublicKey | Ed25519PublicKey | Ed448PublicKey):
        raise ConfigError(f"STATEPORT_JWT_PUBLIC_KEY_PATH={path}: expected an RSA or Ed25519 key")
    return key


def _same_key(one: PublicKey, other: PublicKey) -> bool:
    """Whether two public keys are the same key (their SubjectPublicKeyInfo bytes)."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return one.public_bytes(*spki) == other.public_bytes(*spki)


def _check_key_type(algorithm: str, key: PublicKey) -> None:
    rsa = isinstance(key, RSAPublicKey)
    if (algorithm == "RS256") != rsa:
        raise ConfigError(f"STATEPORT_JWT_ALGORITHM={algorithm} does not match the {type(key).__name__} key")


def _thumbprint(key: PublicKey) -> str:
    """A stable key id derived from the public key, so every process sharing the key agrees on it."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:16]).rstrip(b"=").decode()


def _check_claimant(payload: dict[str, Any]) -> None:
    """A task token's ``claimant``, if any, is a string of 1 to ``MAX_CLAIMANT`` characters."""
    claimant = payload.get(CLAIMANT)
    if claimant is not None and not (isinstance(claimant, str) and 0 < len(claimant) <= MAX_CLAIMANT):
        raise Forbidden(f"{INVALID}: claim '{CLAIMANT}' must be a string of 1 to {MAX_CLAIMANT} characters")
