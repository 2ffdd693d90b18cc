"""JwtTokenService: what it mints, what it accepts, its cache and its asymmetric modes."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from stateport.adapters.jwt import JwtTokenService
from stateport.config import ConfigError, load_settings
from stateport.domain.errors import Forbidden, Unauthenticated
from stateport.domain.ports import TokenClaims
from tests.fixtures.keys import write_pem_pair

SECRET = "unit-secret-" + "z" * 80


def service(tmp_path: Path, **overrides: object) -> JwtTokenService:
    return JwtTokenService.from_settings(
        load_settings({}, data_dir=str(tmp_path), jwt_secret=SECRET, **overrides)
    )


def test_task_token_claims_and_header(tmp_path: Path) -> None:
    tokens = service(tmp_path)
    ti = uuid.uuid4()
    token = tokens.mint_task_token(ti)
    assert jwt.get_unverified_header(token) == {"alg": "HS512", "kid": "not-used", "typ": "JWT"}
    claims = jwt.decode(token, SECRET, algorithms=["HS512"], audience="urn:airflow.apache.org:task")
    assert set(claims) == {"jti", "aud", "nbf", "iat", "exp", "sub", "scope"}
    assert claims["sub"] == str(ti)
    assert claims["scope"] == "execution"
    assert claims["exp"] - claims["iat"] == 600
    verified = tokens.verify_task_token(token)
    assert verified.subject == str(ti)
    assert verified.scopes == frozenset({"execution"})


def test_api_token_scopes_and_audience(tmp_path: Path) -> None:
    tokens = service(tmp_path, jwt_issuer="stateport-test")
    token = tokens.mint_api_token("ops", frozenset({"runs:read", "state:admin"}))
    claims = jwt.decode(
        token, SECRET, algorithms=["HS512"], audience="urn:stateport:api", issuer="stateport-test"
    )
    assert claims["scope"] == "runs:read state:admin"
    assert tokens.verify_api_token(token).scopes == frozenset({"runs:read", "state:admin"})
    with pytest.raises(Forbidden):
        tokens.verify_task_token(token)
    with pytest.raises(ValueError, match="unknown scopes"):
        tokens.mint_api_token("ops", frozenset({"root"}))


@pytest.mark.parametrize("separator", ["\u00a0", "\t", "\n", "\u2003"])
def test_api_scopes_are_separated_by_spaces_only(tmp_path: Path, separator: str) -> None:
    # An outsider's find: "runs:read<NBSP>dags:write" granted both scopes.
    tokens = service(tmp_path)
    now = int(time.time())
    claims = {"sub": "ops", "aud": "urn:stateport:api", "iat": now, "exp": now + 60}
    odd = jwt.encode({**claims, "scope": f"runs:read{separator}dags:write"}, SECRET, algorithm="HS512")
    assert tokens.verify_api_token(odd).scopes == frozenset({f"runs:read{separator}dags:write"})
    spaced = jwt.encode({**claims, "scope": "runs:read  dags:write "}, SECRET, algorithm="HS512")
    assert tokens.verify_api_token(spaced).scopes == frozenset({"runs:read", "dags:write"})


def test_issuer_is_required_when_configured(tmp_path: Path) -> None:
    tokens = service(tmp_path, jwt_issuer="stateport-test")
    now = int(time.time())
    no_iss = jwt.encode(
        {"sub": "x", "aud": "urn:stateport:api", "iat": now, "exp": now + 60}, SECRET, "HS512"
    )
    with pytest.raises(Forbidden, match="Invalid auth token"):
        tokens.verify_api_token(no_iss)


def test_an_issuer_is_refused_when_none_is_configured(tmp_path: Path) -> None:
    now = int(time.time())
    claims = {"sub": "x", "aud": "urn:stateport:api", "iat": now, "exp": now + 60, "iss": "someone"}
    with pytest.raises(Forbidden, match="unexpected issuer 'someone'"):
        service(tmp_path).verify_api_token(jwt.encode(claims, SECRET, "HS512"))
    with pytest.raises(Forbidden, match="wrong issuer"):
        service(tmp_path, jwt_issuer="stateport-test").verify_api_token(jwt.encode(claims, SECRET, "HS512"))
    assert service(tmp_path, jwt_issuer="someone").verify_api_token(jwt.encode(claims, SECRET, "HS512"))


def test_a_signature_from_another_key_says_so(tmp_path: Path) -> None:
    other = JwtTokenService.from_settings(
        load_settings({}, data_dir=str(tmp_path), jwt_secret="another-" + "k" * 80)
    )
    with pytest.raises(Forbidden, match="signature did not verify"):
        service(tmp_path).verify_api_token(other.mint_api_token("me", frozenset({"worker"})))


def _claims_of(token: str) -> TokenClaims:
    """The claims of a token whose times may lie in the future (a simulated clock), unverified."""
    payload = jwt.decode(token, options={"verify_signature": False})
    return TokenClaims(
        kind="api",
        subject=payload["sub"],
        scopes=frozenset(payload["scope"].split()),
        expires_at=datetime.fromtimestamp(payload["exp"], UTC),
        issued_at=datetime.fromtimestamp(payload["iat"], UTC),
        original_issued_at=datetime.fromtimestamp(payload["orig_iat"], UTC),
    )


def test_api_token_renewal_stops_at_the_maximum_lifetime(tmp_path: Path) -> None:
    tokens = service(tmp_path, api_token_max_lifetime_days=1)
    token = tokens.mint_api_token("worker-1", frozenset({"worker"}), ttl_s=600)
    first = _claims_of(token)
    origin = first.issued_at.timestamp()
    assert first.original_issued_at == first.issued_at
    # Renew each token 100 s before it expires, as a client in constant use would, on a simulated clock.
    renewals = 0
    claims = first
    while (renewed := tokens.refresh_api_token(claims, claims.expires_at.timestamp() - 100)) is not None:
        claims = _claims_of(renewed)
        renewals += 1
        assert renewals < 1000, "renewal never stopped"
        assert claims.original_issued_at == first.issued_at  # carried through every renewal
        assert claims.scopes == {"worker"} and claims.subject == "worker-1"
    # One day of 500 s steps: renewed until the chain's last token expires exactly at the bound.
    assert renewals == 172
    assert claims.expires_at.timestamp() == origin + 86400
    assert tokens.refresh_api_token(claims, claims.expires_at.timestamp() - 10) is None


def test_a_renewed_api_token_verifies_and_keeps_its_origin(tmp_path: Path) -> None:
    tokens = service(tmp_path)
    now = int(time.time())
    claims = {"sub": "w", "aud": "urn:stateport:api", "scope": "worker", "iat": now - 500, "exp": now + 100}
    claims["orig_iat"] = now - 7200
    presented = tokens.verify_api_token(jwt.encode(claims, SECRET, "HS512"))
    renewed = tokens.refresh_api_token(presented, time.time())
    assert renewed is not None
    verified = tokens.verify_api_token(renewed)
    assert verified.original_issued_at == datetime.fromtimestamp(now - 7200, UTC)
    assert verified.expires_at.timestamp() - verified.issued_at.timestamp() == 600


def test_a_token_presented_again_in_the_same_second_gets_the_same_renewal(tmp_path: Path) -> None:
    """A client that does not adopt renewed tokens costs a signature a second, not one a request."""
    tokens = service(tmp_path)
    now = int(time.time())
    claims = {"sub": "w", "aud": "urn:stateport:api", "scope": "worker", "iat": now - 500, "exp": now + 100}
    presented = tokens.verify_api_token(jwt.encode(claims, SECRET, "HS512"))
    first = tokens.refresh_api_token(presented, now + 0.1)
    assert first is not None and tokens.refresh_api_token(presented, now + 0.9) == first
    later = tokens.refresh_api_token(presented, now + 1.2)
    assert later is not None and later != first
    assert tokens.verify_api_token(later).issued_at.timestamp() == now + 1


@pytest.mark.parametrize(("presented_s", "renewed_s"), [(30, 120), (5, 120), (10**9, 120)])
def test_a_renewed_task_token_lives_the_longer_of_the_jwt_lifetime_and_the_lease(
    tmp_path: Path, presented_s: int, renewed_s: int
) -> None:
    """JWT lifetime 60 s, lease 120 s: a claim's token lives at least the lease, and so does each renewal,
    or it would expire between two heartbeats (a third of the lease apart). A token of any lifetime, even
    one minted by hand for 30 years, renews to that: no chain of renewals outlives the server's bound."""
    tokens = service(tmp_path, jwt_expiration_s=60, lease_s=120)
    ti = uuid.uuid4()
    presented = tokens.verify_task_token(tokens.mint_task_token(ti, ttl_s=presented_s))
    renewed = tokens.verify_task_token(tokens.refresh_task_token(presented))
    assert renewed.subject == str(ti) and renewed.scopes == {"execution"}
    assert renewed.expires_at.timestamp() - renewed.issued_at.timestamp() == renewed_s


def test_a_lifetime_under_a_second_is_rounded_up_not_down_to_an_expired_token(tmp_path: Path) -> None:
    tokens = service(tmp_path, jwt_expiration_s=0.5)
    claims = tokens.verify_task_token(tokens.mint_task_token(uuid.uuid4()))
    assert claims.expires_at.timestamp() - claims.issued_at.timestamp() == 1


def test_empty_token_is_unauthenticated(tmp_path: Path) -> None:
    with pytest.raises(Unauthenticated):
        service(tmp_path).verify_task_token("")


def test_cached_tokens_are_rechecked_for_expiry(tmp_path: Path) -> None:
    tokens = service(tmp_path, jwt_leeway_s=0)
    # Expiry is in whole seconds from the current second: 2 s leaves at least 1 s to verify it while valid.
    token = tokens.mint_task_token(uuid.uuid4(), ttl_s=2)
    claims = tokens.verify_task_token(token)  # now cached
    time.sleep(max(0.0, claims.expires_at.timestamp() - time.time()) + 0.1)
    with pytest.raises(Forbidden):
        tokens.verify_task_token(token)


@pytest.mark.parametrize("scope", ["execution", "workload"])
def test_a_task_token_minted_here_verifies_as_it_would_anywhere_else(tmp_path: Path, scope: str) -> None:
    # The minting process keeps the token as verified (its first use skips the signature): what it answers
    # must be what a process that checks the signature answers, for each token type and endpoint.
    minter, elsewhere = service(tmp_path), service(tmp_path)
    token = minter.mint_task_token(uuid.uuid4(), scope=scope)
    both = frozenset({"execution", "workload"})
    assert minter.verify_task_token(token, allowed_types=both) == elsewhere.verify_task_token(
        token, allowed_types=both
    )
    for tokens in (minter, elsewhere):
        with pytest.raises(Forbidden):
            tokens.verify_api_token(token)  # another audience
        if scope == "workload":
            with pytest.raises(Forbidden, match="Token type 'workload' not allowed"):
                tokens.verify_task_token(token)
    # Not a way around the signature: the same claims signed with another key are refused by the minter.
    forged = jwt.encode(
        jwt.decode(token, options={"verify_signature": False}), "other-" + SECRET, algorithm="HS512"
    )
    with pytest.raises(Forbidden, match="signature"):
        minter.verify_task_token(forged, allowed_types=both)


def test_a_claimed_task_tokens_claimant_is_kept_through_renewals(tmp_path: Path) -> None:
    # A worker's task tokens count as that worker where callers get shares (the body budget): the claim
    # names who claimed, and a renewal keeps it, in the minting process and anywhere else.
    minter, elsewhere = service(tmp_path), service(tmp_path)
    token = minter.mint_task_token(uuid.uuid4(), claimant="f" * 32)
    assert jwt.decode(token, options={"verify_signature": False})["claimant"] == "f" * 32
    for tokens in (minter, elsewhere):
        claims = tokens.verify_task_token(token)
        assert claims.claimant == "f" * 32
        assert tokens.verify_task_token(tokens.refresh_task_token(claims)).claimant == "f" * 32
    assert minter.verify_task_token(minter.mint_task_token(uuid.uuid4())).claimant is None


@pytest.mark.parametrize("claimant", [1, True, None, ["a"], {"a": 1}, "", "x" * 65])
def test_a_task_token_whose_claimant_is_no_short_string_is_refused(tmp_path: Path, claimant: object) -> None:
    tokens = service(tmp_path)
    payload = jwt.decode(tokens.mint_task_token(uuid.uuid4()), options={"verify_signature": False})
    payload["claimant"] = claimant
    odd = jwt.encode(payload, SECRET, algorithm="HS512")
    if claimant is None:  # JSON null: as if absent
        assert tokens.verify_task_token(odd).claimant is None
        return
    with pytest.raises(Forbidden, match="claimant"):
        tokens.verify_task_token(odd)


@pytest.mark.parametrize("subject", ["a\x00b", "tab\tnew\nline", "\x85", "x" * 257])
def test_an_api_token_whose_subject_is_no_identifier_is_refused_and_never_minted(
    tmp_path: Path, subject: str
) -> None:
    # An outsider's find: such subjects were taken (the caller's key, log lines, the runs it triggers)
    # and carried into every renewal.
    tokens = service(tmp_path)
    payload = jwt.decode(
        tokens.mint_api_token("ops", frozenset({"runs:read"})), options={"verify_signature": False}
    )
    payload["sub"] = subject
    with pytest.raises(Forbidden, match="claim 'sub'"):
        tokens.verify_api_token(jwt.encode(payload, SECRET, algorithm="HS512"))
    with pytest.raises(ValueError, match="subject"):
        tokens.mint_api_token(subject, frozenset({"runs:read"}))
    assert (
        tokens.verify_api_token(tokens.mint_api_token("x" * 256, frozenset({"runs:read"}))).subject
        == "x" * 256
    )


def test_minted_tokens_are_what_pyjwt_makes_of_the_same_claims(tmp_path: Path) -> None:
    # Minting signs with a PyJWS of its own (the key checked once, not per token): byte for byte what
    # jwt.encode makes of the same claims and headers, for both token kinds.
    tokens = service(tmp_path, jwt_issuer="stateport-test")
    for token in (tokens.mint_task_token(uuid.uuid4()), tokens.mint_api_token("ops", frozenset({"worker"}))):
        claims = jwt.decode(token, options={"verify_signature": False})
        assert token == jwt.encode(claims, SECRET, algorithm="HS512", headers={"kid": "not-used"})


def test_cached_workload_token_is_still_refused(tmp_path: Path) -> None:
    tokens = service(tmp_path)
    token = tokens.mint_task_token(uuid.uuid4(), scope="workload")
    assert tokens.verify_task_token(token, allowed_types=frozenset({"execution", "workload"})).scopes == {
        "workload"
    }
    with pytest.raises(Forbidden, match="Token type 'workload' not allowed"):
        tokens.verify_task_token(token)


def _write_rsa(tmp_path: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return write_pem_pair(key, tmp_path / "key.pem", tmp_path / "pub.pem")


def test_rs256_mint_with_private_verify_with_public(tmp_path: Path) -> None:
    private, public = _write_rsa(tmp_path)
    minter = service(tmp_path, jwt_algorithm="RS256", jwt_private_key_path=str(private))
    verifier = service(tmp_path, jwt_algorithm="RS256", jwt_public_key_path=str(public))
    ti = uuid.uuid4()
    token = minter.mint_task_token(ti)
    assert jwt.get_unverified_header(token)["kid"] == minter.kid == verifier.kid
    assert verifier.verify_task_token(token).subject == str(ti)
    with pytest.raises(ConfigError):
        verifier.mint_task_token(ti)
    # No kid header, or the kid of another key: refused in asymmetric mode (issue #12 item 17).
    now = int(time.time())
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    claims = {"sub": str(ti), "aud": "urn:airflow.apache.org:task", "iat": now, "exp": now + 60}
    bare = jwt.encode(claims, key, "RS256")
    with pytest.raises(Forbidden, match="'kid' header is required"):
        verifier.verify_task_token(bare)
    other_kid = jwt.encode(claims, key, "RS256", headers={"kid": "some-other-key"})
    with pytest.raises(Forbidden, match="unknown key id 'some-other-key'"):
        verifier.verify_task_token(other_kid)
    named = jwt.encode(claims, key, "RS256", headers={"kid": verifier.kid})
    assert verifier.verify_task_token(named).subject == str(ti)
    # A verifier told the minter's kid explicitly accepts it.
    told = service(tmp_path, jwt_algorithm="RS256", jwt_public_key_path=str(public), jwt_kid="some-other-key")
    assert told.verify_task_token(other_kid).subject == str(ti)
    # The shared-secret HS512 token is not accepted by an RS256 service.
    with pytest.raises(Forbidden):
        verifier.verify_task_token(service(tmp_path).mint_task_token(ti))


def test_eddsa_and_key_type_mismatch(tmp_path: Path) -> None:
    path, _ = write_pem_pair(ed25519.Ed25519PrivateKey.generate(), tmp_path / "ed.pem", tmp_path / "ed.pub")
    tokens = service(tmp_path, jwt_algorithm="EdDSA", jwt_private_key_path=str(path), jwt_kid="k1")
    token = tokens.mint_api_token("me", frozenset({"worker"}))
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    assert tokens.verify_api_token(token).scopes == {"worker"}
    with pytest.raises(ConfigError, match="does not match"):
        service(tmp_path, jwt_algorithm="RS256", jwt_private_key_path=str(path))


def test_a_public_key_given_with_the_private_key_must_be_its_own(tmp_path: Path) -> None:
    # An outsider's find: with a private key set, the public key setting was passed over, whatever it
    # named (a missing file, another pair's key, an RSA key for EdDSA).
    private, public = write_pem_pair(
        ed25519.Ed25519PrivateKey.generate(), tmp_path / "a.pem", tmp_path / "a.pub"
    )
    _, other = write_pem_pair(ed25519.Ed25519PrivateKey.generate(), tmp_path / "b.pem", tmp_path / "b.pub")
    keys = {"jwt_algorithm": "EdDSA", "jwt_private_key_path": str(private)}
    paired = service(tmp_path, jwt_public_key_path=str(public), **keys)
    assert paired.verify_api_token(paired.mint_api_token("me", frozenset({"worker"}))).subject == "me"
    with pytest.raises(ConfigError, match="is not the public key of STATEPORT_JWT_PRIVATE_KEY_PATH"):
        service(tmp_path, jwt_public_key_path=str(other), **keys)
    with pytest.raises(ConfigError, match="STATEPORT_JWT_PUBLIC_KEY_PATH"):
        service(tmp_path, jwt_public_key_path=str(tmp_path / "missing.pub"), **keys)
