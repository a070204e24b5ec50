"""JWKS rotation without an outage (issue 15, item 5), through the Authenticator's seams:
a fake fetcher (the IdP), a fake monotonic clock and a fake sleep that moves it on."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from holdgate.configfile import parse_yaml
from holdgate.identity import (
    JWKS_LONGEST_AGE,
    Authenticator,
    JwksResponse,
    cache_max_age,
    parse_identity,
)

ISSUER = "https://idp.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class IdP:
    """Serves its current keys with a Cache-Control max-age; counts fetches; can fail, and
    can hold a fetch until released (to make callers overlap)."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.max_age: float | None = None
        self.fetches = 0
        self.failing = False
        self.gate: asyncio.Event | None = None

    def rotate(self, kid: str) -> rsa.RSAPrivateKey:
        """The IdP's only key is replaced by a new one."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys = {kid: key}
        return key

    async def fetch(self, url: str) -> JwksResponse:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise OSError("connection refused")
        keys = [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())), "kid": kid}
            for kid, k in self.keys.items()
        ]
        return JwksResponse(json.dumps({"keys": keys}).encode(), self.max_age)


def config(extra: str = ""):
    text = (
        f"identity:\n  oidc:\n    - issuer: {ISSUER}\n      audience: holdgate\n"
        "      jwks_uri: https://idp.test/jwks\n      algorithms: [RS256]\n" + extra
    )
    return parse_identity(parse_yaml(text, "id.yaml").root.child("identity"))


def token(key, kid: str) -> str:
    claims = {"iss": ISSUER, "aud": "holdgate", "sub": "ann", "exp": int(time.time()) + 600}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def idp() -> IdP:
    return IdP()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(idp: IdP, clock: Clock, extra: str = "", sleep=asyncio.sleep) -> Authenticator:
    return Authenticator(config(extra), idp.fetch, clock=clock, sleep=sleep)


async def check(auth: Authenticator, bearer: str):
    return await auth.authenticate({"authorization": [f"Bearer {bearer}"]}, "127.0.0.1")


def test_defaults_are_a_2s_fetch_window_and_an_hour_without_max_age():
    issuer = config().oidc[0]
    assert (issuer.min_refresh, issuer.min_age, issuer.max_age) == (2.0, 60.0, 3600.0)


async def _rotation(idp: IdP, clock: Clock) -> None:
    old = idp.rotate("k1")
    auth = make(idp, clock)
    assert (await check(auth, token(old, "k1"))).identity is not None
    assert idp.fetches == 1
    clock.now += 2.0  # the window since the last fetch is over (30 s before this issue)
    new = idp.rotate("k2")
    outcome = await check(auth, token(new, "k2"))
    assert outcome.identity is not None, outcome.error
    assert idp.fetches == 2
    assert (await check(auth, token(old, "k1"))).reason == "unknown signing key"


def test_the_first_token_with_a_rotated_key_is_accepted(idp, clock):
    asyncio.run(_rotation(idp, clock))


async def _coalesced(idp: IdP, clock: Clock) -> None:
    key = idp.rotate("k1")
    auth = make(idp, clock)
    idp.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(check(auth, token(key, "k1"))) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert idp.fetches == 1  # all twenty wait for the one fetch under way
    idp.gate.set()
    outcomes = await asyncio.gather(*waiting)
    assert all(o.identity is not None for o in outcomes)
    assert idp.fetches == 1


def test_concurrent_unknown_kids_share_one_fetch(idp, clock):
    asyncio.run(_coalesced(idp, clock))


async def _flood(idp: IdP, clock: Clock) -> None:
    key = idp.rotate("k1")
    auth = make(idp, clock)
    assert (await check(auth, token(key, "k1"))).identity is not None
    clock.now += 5.0
    fetches = idp.fetches
    for round_ in range(3):
        bearers = [token(key, f"random-{round_}-{i}") for i in range(50)]
        outcomes = await asyncio.gather(*(check(auth, b) for b in bearers))
        assert {o.reason for o in outcomes} == {"unknown signing key"}
        clock.now += 0.5  # three rounds inside one 2 s window
    assert idp.fetches == fetches + 1
    clock.now += 2.0
    await check(auth, token(key, "random-later"))
    assert idp.fetches == fetches + 2  # the next window allows one more


def test_random_kids_cause_at_most_one_fetch_per_window(idp, clock):
    asyncio.run(_flood(idp, clock))


async def _caller_gives_up(idp: IdP, clock: Clock) -> None:
    key = idp.rotate("k1")
    auth = make(idp, clock)
    idp.gate = asyncio.Event()
    first = asyncio.ensure_future(check(auth, token(key, "k1")))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(check(auth, token(key, "k1")))
    await asyncio.sleep(0.01)
    first.cancel()  # its client went away: the fetch goes on for the other one
    idp.gate.set()
    assert (await second).identity is not None
    assert idp.fetches == 1


def test_a_caller_that_gives_up_does_not_end_the_fetch_others_wait_for(idp, clock):
    asyncio.run(_caller_gives_up(idp, clock))


async def _failure(idp: IdP, clock: Clock, caplog) -> None:
    key = idp.rotate("k1")
    auth = make(idp, clock)
    assert (await check(auth, token(key, "k1"))).identity is not None
    idp.failing = True
    clock.now += 3.0
    with caplog.at_level(logging.WARNING, logger="holdgate"):
        refused = await check(auth, token(key, "k9"))
    assert refused.reason == "cannot fetch the issuer's keys"
    assert "keeping the 1 keys fetched before" in caplog.text
    assert (await check(auth, token(key, "k1"))).identity is not None  # the last good set


def test_a_failed_fetch_keeps_the_last_good_keys_and_says_so(idp, clock, caplog):
    asyncio.run(_failure(idp, clock, caplog))


class Sleeper:
    """asyncio.sleep for the background refresh on the fake clock: each sleep is recorded
    and ends (moving the clock on) when the test releases it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.slept: list[float] = []
        self._released: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        await self._released.get()
        self.clock.now += seconds

    def release(self) -> None:
        self._released.put_nowait(None)

    async def until_asleep(self, times: int) -> None:
        for _ in range(1000):
            if len(self.slept) >= times:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"the refresh slept {self.slept}, not {times} times")


async def _background(idp: IdP, clock: Clock) -> None:
    idp.rotate("k1")
    idp.max_age = 300
    sleeper = Sleeper(clock)
    auth = make(idp, clock, sleep=sleeper)
    auth.start()
    await sleeper.until_asleep(1)
    assert (idp.fetches, sleeper.slept) == (1, [300])  # fetched at start, kept for max-age
    new = idp.rotate("k2")
    sleeper.release()
    await sleeper.until_asleep(2)
    assert idp.fetches == 2
    outcome = await check(auth, token(new, "k2"))
    assert outcome.identity is not None, outcome.error
    assert idp.fetches == 2  # no token had to ask for the new key
    auth.close()


def test_the_background_refresh_honours_max_age(idp, clock):
    asyncio.run(_background(idp, clock))


async def _background_failure(idp: IdP, clock: Clock, caplog) -> None:
    key = idp.rotate("k1")
    idp.max_age = 120
    sleeper = Sleeper(clock)
    auth = make(idp, clock, sleep=sleeper)
    auth.start()
    await sleeper.until_asleep(1)
    idp.failing = True
    with caplog.at_level(logging.WARNING, logger="holdgate"):
        sleeper.release()
        await sleeper.until_asleep(2)
    assert sleeper.slept == [120, 60]  # after a failure, again after jwks_min_age
    assert f"cannot fetch the keys of issuer {ISSUER}" in caplog.text
    assert (await check(auth, token(key, "k1"))).identity is not None  # the last good set
    auth.close()


def test_a_failed_background_refresh_keeps_the_keys_and_retries(idp, clock, caplog):
    asyncio.run(_background_failure(idp, clock, caplog))


@pytest.mark.parametrize(
    ("max_age", "interval"),
    [(None, 3600.0), (5, 60.0), (0, 60.0), (7200, 7200.0), (10**9, JWKS_LONGEST_AGE)],
)
def test_max_age_is_bounded(idp, clock, max_age, interval):
    async def run() -> float:
        idp.rotate("k1")
        idp.max_age = max_age
        sleeper = Sleeper(clock)
        auth = make(idp, clock, sleep=sleeper)
        auth.start()
        await sleeper.until_asleep(1)
        auth.close()
        return sleeper.slept[0]

    assert asyncio.run(run()) == interval


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("max-age=300", 300.0),
        ("public, max-age=86400, must-revalidate", 86400.0),
        ('max-age="60"', 60.0),
        ("no-store", 0.0),
        ("no-cache, max-age=10", 0.0),
        ("max-age=soon", None),
        ("private", None),
        (None, None),
    ],
)
def test_cache_control_max_age(header, seconds):
    assert cache_max_age(header) == seconds


def test_the_limits_are_settable_per_issuer():
    issuer = config("      jwks_min_refresh: 5s\n      jwks_min_age: 1s\n      jwks_max_age: 2h\n")
    assert (issuer.oidc[0].min_refresh, issuer.oidc[0].min_age, issuer.oidc[0].max_age) == (
        5.0,
        1.0,
        7200.0,
    )
