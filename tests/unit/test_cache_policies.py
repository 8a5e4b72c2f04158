"""The filesystem's default settings are the default cache policy's, exactly."""

from __future__ import annotations

import dataclasses

import pytest

from zcfs.fs import CACHE_POLICIES, FsOptions


def test_defaults_are_the_watch_policy():
    # A mount without -o cache= must behave as one with -o cache=watch.
    assert FsOptions().cache == "watch"
    assert dataclasses.replace(FsOptions(), **CACHE_POLICIES["watch"]) == FsOptions()


@pytest.mark.parametrize("policy", sorted(CACHE_POLICIES))
def test_every_policy_sets_every_cache_setting(policy):
    assert set(CACHE_POLICIES[policy]) == set(CACHE_POLICIES["watch"])


def test_unwatched_defaults_are_the_auto_policy():
    expected = dataclasses.replace(FsOptions(), **CACHE_POLICIES["auto"])
    assert FsOptions().unwatched() == dataclasses.replace(expected, cache="watch")
