"""params.yaml's `release:` section: its defaults, its steps, and the errors a bad edit gets (file, key, what)."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.ml.configuration import ConfigurationManager, release_plan
from include.ml.exceptions import ConfigError
from include.ml.release_settings import ReleasePlan, ReleaseStep


def expect_error(config_dir: Path, key: str, words: str) -> None:
    for load in (lambda: ConfigurationManager(config_dir, env={}), lambda: release_plan(config_dir)):
        with pytest.raises(ConfigError) as caught:
            load()
        assert caught.value.file.endswith("params.yaml") and caught.value.key == key, caught.value
        assert words in str(caught.value), caught.value


def test_the_shipped_section_is_direct_with_a_shadow_and_two_canary_steps(config_dir: Path) -> None:
    cm = ConfigurationManager(config_dir, env={})
    plan = cm.config.release
    assert plan == release_plan(config_dir) == ReleasePlan()  # the YAML writes out the defaults
    assert (plan.strategy, cm.evaluation().release_strategy) == ("direct", "direct")
    assert plan.steps() == (ReleaseStep("shadow", "shadow", 1.0, 1800.0),
                            ReleaseStep("canary_10", "canary", 0.1, 1800.0),
                            ReleaseStep("canary_50", "canary", 0.5, 1800.0))
    assert (plan.agreement_min("regression"), plan.agreement_min("classification")) == (0.5, 0.8)


def test_without_the_section_releases_are_direct(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d.pop("release"))
    assert ConfigurationManager(config_dir, env={}).config.release.strategy == "direct"
    assert release_plan(config_dir) == ReleasePlan()


def test_a_progressive_plan_of_short_steps(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["release"].update(
        strategy="progressive", shadow=None, canary=[{"percent": 2.5, "bake_seconds": 5}, {"percent": 20}],
        approval=True, agreement={"min": 0.9}))
    cm = ConfigurationManager(config_dir, env={})
    assert cm.evaluation().release_strategy == "progressive"
    assert [(s.name, s.mode, s.share, s.bake_seconds) for s in cm.config.release.steps()] == \
        [("canary_2_5", "canary", 0.025, 5.0), ("canary_20", "canary", 0.2, 1800.0)]
    assert cm.config.release.approval and cm.config.release.agreement_min("regression") == 0.9


@pytest.mark.parametrize("change, key, words", [
    ({"strategy": "blue_green"}, "release.strategy", "expected one of direct, progressive, got str 'blue_green'"),
    ({"canary": [{"percent": 50}, {"percent": 10}]}, "release",
     "canary percents must grow step by step, got 50, 10"),
    ({"canary": [{"percent": 100}]}, "release.canary.0.percent", "expected less than 100"),
    ({"canary": [], "shadow": None}, "release", "a release needs at least one step"),
    ({"shadow": {"sample": 0}}, "release.shadow.sample", "expected more than 0"),
    ({"shadow": {"sample": 1.0, "bake": 60}}, "release.shadow.bake",
     "unknown key; expected one of: bake_seconds, sample"),
    ({"poll_seconds": "60"}, "release.poll_seconds", "expected float, got str '60'"),
    ({"approval": "yes"}, "release.approval", "expected bool, got str 'yes'"),
    ({"quality": {"alpha": 1.5}}, "release.quality.alpha", "expected less than 1"),
    ({"health": {"max_p99_ratio": 0.5}}, "release.health.max_p99_ratio", "expected at least 1"),
    ({"min_requests": True}, "release.min_requests", "expected int, got bool"),
])
def test_a_bad_release_setting_names_its_key(config_dir: Path, edit_yaml, change: dict, key: str, words: str) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["release"].update(change))
    expect_error(config_dir, key, words)


def test_the_section_must_be_a_mapping(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d.update(release=["progressive"]))
    expect_error(config_dir, "release", "expected a mapping")


def test_a_progressive_release_needs_servers(config_dir: Path, edit_yaml) -> None:
    edit_yaml(config_dir / "params.yaml", lambda d: d["release"].update(strategy="progressive"))
    with pytest.raises(ConfigError, match="release.strategy: progressive releases the candidate to the servers"):
        ConfigurationManager(config_dir, env={"MLOPS_DEPLOY_TARGET": "none"})
