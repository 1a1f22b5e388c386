"""Issue 23: how a release splits requests (serving/release.py): deterministic by key, uniform over keys."""

from __future__ import annotations

import hashlib

from serving.probe import release_matches
from serving.release import in_share, routing_key


def test_the_same_key_always_lands_on_the_same_side() -> None:
    keys = [f"client-{i}" for i in range(2_000)]
    first = [in_share(k, 0.1) for k in keys]
    assert first == [in_share(k, 0.1) for k in keys]  # again: the same answers
    assert 100 < sum(first) < 300


def test_the_split_is_the_hash_of_the_key_over_2_to_the_64() -> None:
    key = "abc"
    position = int.from_bytes(hashlib.sha256(b"abc").digest()[:8], "big") / 2 ** 64
    assert in_share(key, position + 1e-9) and not in_share(key, position)


def test_shares_are_honoured_and_nested() -> None:
    keys = [f"{i:08x}" for i in range(100_000)]
    for share in (0.01, 0.1, 0.5):
        inside = sum(in_share(k, share) for k in keys)
        assert abs(inside / len(keys) - share) < 0.005, (share, inside)
    assert all(in_share(k, 1.0) for k in keys[:1000])
    # a key in a 10 % canary is in a 50 % canary too: widening a release never moves a client back
    assert all(in_share(k, 0.5) for k in keys if in_share(k, 0.1))


def test_the_sticky_header_wins_over_the_request_id() -> None:
    assert routing_key("user-7", "req-1") == "user-7"
    assert routing_key(None, "req-1") == "req-1" and routing_key("", "req-1") == "req-1"


def test_release_matches_what_version_shows() -> None:
    shown = {"version": "2", "mode": "canary", "share": 0.1}
    assert release_matches(None, None) and not release_matches(shown, None) and not release_matches(None, shown)
    assert release_matches(shown, {"version": "2", "mode": "canary"})
    assert release_matches(shown, {"version": "2", "mode": "canary", "share": 0.1})
    assert not release_matches(shown, {"version": "2", "mode": "canary", "share": 0.5})
    assert not release_matches(shown, {"version": "2", "mode": "shadow"})
    assert not release_matches(shown, {"version": "3", "mode": "canary"})
