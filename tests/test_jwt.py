"""JWT auth over real sockets: `JWTAuth` reads Box's config.json (passphrase-encrypted PKCS#8
key) and gets a token from the simulator, which verifies each assertion against the public key
and refuses every kind of bad one the way Box does (400 invalid_grant)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from monitor.box.auth import JWT_AUDIENCE, JWTAuth
from monitor.box.client import BoxClient
from monitor.box.errors import BoxAuthBackoff, BoxAuthError
from monitor.simulator import RunningSimulator, SimulatorConfig, start_simulator

CLIENT_ID, CLIENT_SECRET, ENTERPRISE = "jwt-client", "jwt-secret", "ent-1"
KID, PASSPHRASE = "key-1", "correct horse"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY, OTHER_KEY = _key(), _key()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def box_config_json(path: Path, passphrase: str = PASSPHRASE) -> Path:
    """What the Box developer console downloads."""
    pem = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    ).decode()
    assert pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    path.write_text(json.dumps({
        "boxAppSettings": {
            "clientID": CLIENT_ID,
            "clientSecret": CLIENT_SECRET,
            "appAuth": {"publicKeyID": KID, "privateKey": pem, "passphrase": passphrase},
        },
        "enterpriseID": ENTERPRISE,
    }))
    return path


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    config = SimulatorConfig(
        client_id=CLIENT_ID,
        client_secret=SecretStr(CLIENT_SECRET),
        enterprise_id=ENTERPRISE,
        user_ids=["4242"],
        jwt_public_keys={KID: public_pem(KEY)},
    )
    async with await start_simulator(config) as running:
        yield running


async def test_jwt_auth_from_box_config_json_lists_jobs(sim: RunningSimulator,
                                                        tmp_path: Path) -> None:
    auth = JWTAuth.from_config_file(f"{sim.url}/oauth2/token", box_config_json(tmp_path / "c.json"))
    async with auth, BoxClient(sim.url, auth) as box:
        pages = [page async for page in box.iter_job_pages()]
        assert pages[0].entries == []
        await auth.invalidate(await auth.token())
        await auth.token()  # a second grant: a fresh jti, accepted
    assert sim.state.stats.count("token", 200) == 2
    assert CLIENT_SECRET not in repr(auth) and PASSPHRASE not in repr(auth)


async def test_the_assertion_carries_boxs_claims(tmp_path: Path) -> None:
    auth = JWTAuth.from_config_file("http://x/oauth2/token", box_config_json(tmp_path / "c.json"),
                                    user_id="4242")
    token = auth.assertion()
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, KEY.public_key(), algorithms=["RS512"], audience=JWT_AUDIENCE)
    assert header["kid"] == KID and header["alg"] == "RS512"
    assert (claims["iss"], claims["sub"], claims["box_sub_type"]) == (CLIENT_ID, "4242", "user")
    assert 16 <= len(claims["jti"]) <= 128 and claims["jti"] != jwt.decode(
        auth.assertion(), options={"verify_signature": False})["jti"]
    assert 0 < claims["exp"] - time.time() <= 60


def test_a_wrong_passphrase_is_reported_without_the_secret(tmp_path: Path) -> None:
    path = box_config_json(tmp_path / "c.json", passphrase="wrong guess")
    with pytest.raises(ValueError, match="cannot be decrypted") as refused:
        JWTAuth.from_config_file("http://x/oauth2/token", path)
    assert "wrong guess" not in str(refused.value)


def test_a_file_that_is_not_a_box_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match=r"not a Box config\.json"):
        JWTAuth.from_config_file("http://x/oauth2/token", path)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": CLIENT_ID, "sub": ENTERPRISE, "box_sub_type": "enterprise", "aud": JWT_AUDIENCE,
        "jti": secrets.token_hex(16), "exp": now + 30, "iat": now,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(body: dict[str, Any], key: Any = KEY, alg: str = "RS256", kid: str | None = KID) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(body, key, algorithm=alg, headers=headers)


async def grant(sim: RunningSimulator, assertion: str, **form: str) -> tuple[int, dict[str, Any]]:
    data = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion,
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **form}
    async with aiohttp.ClientSession() as session, session.post(
        f"{sim.url}/oauth2/token", data=data
    ) as resp:
        return resp.status, await resp.json()


async def test_a_good_assertion_with_each_rs_algorithm_is_accepted(sim: RunningSimulator) -> None:
    for alg in ("RS256", "RS384", "RS512"):
        status, body = await grant(sim, sign(claims(), alg=alg))
        assert status == 200 and body["access_token"]


@pytest.mark.parametrize(
    ("assertion", "error"),
    [
        pytest.param(lambda: sign(claims(), key=OTHER_KEY), "invalid_grant", id="bad-signature"),
        pytest.param(lambda: sign(claims(aud="https://example.com/token")), "invalid_grant",
                     id="wrong-aud"),
        pytest.param(lambda: sign(claims(exp=int(time.time()) + 120)), "invalid_grant",
                     id="exp-too-far"),
        pytest.param(lambda: sign(claims(exp=int(time.time()) - 5)), "invalid_grant",
                     id="expired"),
        pytest.param(lambda: sign(claims(jti=None)), "invalid_grant", id="missing-jti"),
        pytest.param(lambda: sign(claims(jti="short")), "invalid_grant", id="short-jti"),
        pytest.param(lambda: sign(claims(jti="x" * 129)), "invalid_grant", id="long-jti"),
        pytest.param(lambda: sign(claims(), key="shared-secret-but-long-enough-for-hs256!",
                                  alg="HS256"), "invalid_grant", id="hs256-alg"),
        pytest.param(lambda: sign(claims(), key=None, alg="none"), "invalid_grant",
                     id="none-alg"),
        pytest.param(lambda: sign(claims(), kid="unknown-key"), "invalid_grant",
                     id="unknown-kid"),
        pytest.param(lambda: sign(claims(iss="someone-else")), "invalid_grant", id="wrong-iss"),
        pytest.param(lambda: sign(claims(sub="other-enterprise")), "invalid_grant",
                     id="wrong-sub"),
        pytest.param(lambda: sign(claims(box_sub_type="user")), "invalid_grant",
                     id="sub-type-mismatch"),
        pytest.param(lambda: sign(claims(exp=None)), "invalid_grant", id="missing-exp"),
        pytest.param(lambda: "not-a-jwt", "invalid_grant", id="garbage"),
    ],
)
async def test_a_bad_assertion_is_refused_like_box_does(
    sim: RunningSimulator, assertion: Any, error: str
) -> None:
    status, body = await grant(sim, assertion())
    assert (status, body["error"]) == (400, error)
    assert body["error_description"]


async def test_a_replayed_jti_is_refused(sim: RunningSimulator) -> None:
    assertion = sign(claims())
    assert (await grant(sim, assertion))[0] == 200
    status, body = await grant(sim, assertion)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "jti" in body["error_description"]


async def test_a_wrong_client_secret_is_refused_as_invalid_client(sim: RunningSimulator) -> None:
    status, body = await grant(sim, sign(claims()), client_secret="nope")
    assert (status, body["error"]) == (400, "invalid_client")


async def test_jwt_auth_surfaces_a_refusal_as_box_auth_error(sim: RunningSimulator,
                                                             tmp_path: Path) -> None:
    auth = JWTAuth.from_config_file(f"{sim.url}/oauth2/token",
                                    box_config_json(tmp_path / "c.json"), user_id="not-allowed")
    async with auth:
        with pytest.raises(BoxAuthError) as refused:
            await auth.token()
    assert refused.value.status == 400 and CLIENT_SECRET not in str(refused.value)


async def test_a_refused_jwt_grant_backs_off_like_ccg(sim: RunningSimulator,
                                                      tmp_path: Path) -> None:
    """A key Box does not know (a rotated key pair) is asked once; every caller meanwhile gets
    `BoxAuthBackoff` without a request, and the status names the OAuth2 error."""
    auth = JWTAuth.from_config_file(f"{sim.url}/oauth2/token",
                                    box_config_json(tmp_path / "c.json"), user_id="not-allowed")
    async with auth:
        results = await asyncio.gather(*(auth.token() for _ in range(5)), return_exceptions=True)
        status = auth.status()
    assert [type(r) for r in results] == [BoxAuthError] + [BoxAuthBackoff] * 4
    assert sim.state.stats.count("token") == 1
    assert not status.ok and status.detail.startswith("refused: invalid_grant, next try in")
