"""Quota: a call's hit can be given back when the call never reached the upstream."""

from holdgate.policy.quota import Hit, Quota

LIMIT = (2, 60.0)


def test_hits_taken_and_given_back():
    now = [100.0]
    quota = Quota(clock=lambda: now[0])
    first = quota.take("r", "alice", LIMIT)
    now[0] = 101.0
    second = quota.take("r", "alice", LIMIT)
    assert first == Hit("r", "alice", 100.0) and second == Hit("r", "alice", 101.0)
    assert quota.take("r", "alice", LIMIT) is None  # the limit is reached
    assert quota.take("r", "bob", LIMIT) is not None  # per user
    quota.give_back([second])
    assert quota.take("r", "alice", LIMIT) == Hit("r", "alice", 101.0)
    assert quota.take("r", "alice", LIMIT) is None


def test_giving_back_only_removes_that_hit_and_survives_expiry():
    now = [0.0]
    quota = Quota(clock=lambda: now[0])
    old = quota.take("r", "u", LIMIT)
    now[0] = 30.0
    kept = quota.take("r", "u", LIMIT)
    now[0] = 61.0
    assert quota.take("r", "u", LIMIT) is not None  # `old` left the window
    quota.give_back([old, Hit("other", "u", 1.0)])  # both already gone: nothing happens
    assert quota.take("r", "u", LIMIT) is None  # `kept` and the new one still count
    now[0] = 91.0  # `kept` leaves the window; giving it back now changes nothing
    quota.give_back([kept])
    assert quota.take("r", "u", LIMIT) is not None
