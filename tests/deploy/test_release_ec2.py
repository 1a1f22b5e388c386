"""Releases on the ec2 target: moto in server mode (S3, EC2, SSM, KMS) and real gunicorn servers standing in for
two instances, with the fixtures and the stand-in SSM agent of test_deploy_ec2.py.

Champion 1 is deployed, then version 2 goes shadow -> canary -> promote. On the way, one instance refuses the
canary step (its copy of bundle 2 no longer matches): the other instance, already moved, goes back to the shadow
it had (a new signed rollback pointer that keeps the candidate) and S3's CURRENT stays on the shadow. Then
version 1 goes canary and is aborted. Every step is a command through the mlops-serving document; no client of
either instance sees a failed request.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import pytest

from include.ml import registry
from include.ml.exceptions import DeploymentError
from include.release import progressive
from tests.deploy import test_deploy_ec2 as ec2
from tests.support.network import get_json
from tests.support.servers import Poller

pytestmark = pytest.mark.integration
aws, kms_key, config = ec2.aws, ec2.kms_key, ec2.config  # the module's fixtures, reused as they are


@pytest.fixture
def fleet(aws: Any, kms_key: tuple[str, Path], tmp_path: Path) -> Iterator[dict[str, ec2.StandIn]]:
    """Two tagged instances in moto, each a real gunicorn server on its own store, trusting only the KMS key."""
    stand_ins: dict[str, ec2.StandIn] = {}
    with ec2._servers(tmp_path, 2, kms_key[1]) as servers:
        for server in servers:
            launched = aws["ec2"].run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, TagSpecifications=[{
                "ResourceType": "instance", "Tags": [{"Key": "Role", "Value": "toy-server"},
                                                     {"Key": "ServingUrl", "Value": server.url}]}])
            stand_ins[launched["Instances"][0]["InstanceId"]] = ec2.StandIn(server, Poller(server.url, pause=0.05))
        yield stand_ins


def everywhere(fleet: dict[str, ec2.StandIn]) -> set[tuple[str, str | None]]:
    """What every instance's /version shows: (champion, "candidate mode share" or None)."""
    shown = set()
    for stand_in in fleet.values():
        info = get_json(f"{stand_in.server.url}/version")
        c = info.get("candidate")
        shown.add((info["version"], f"{c['version']} {c['mode']} {c['share']}" if c else None))
    return shown


def test_shadow_canary_promote_and_abort_through_ssm(config: Any, fleet: dict[str, ec2.StandIn], aws: Any,
                                                      s3_endpoint: str, tmp_path: Path) -> None:
    ec2.deploy(config, "1", fleet, s3_endpoint, tmp_path / "deploy-1")
    runner = ec2.StandInSsmRunner(config.deployment.ec2, fleet, s3_endpoint)
    first, second = (i.instance_id for i in ec2.deployment_fleet(config))
    with ExitStack() as polling:
        for stand_in in fleet.values():
            polling.enter_context(stand_in.poller)

        shadow = progressive.start(config, "2", "shadow", 1.0, runner=runner)
        assert [s["changed"] for s in shadow.servers] == [True, True]
        assert everywhere(fleet) == {("1", "2 shadow 1.0")}
        pointer = ec2.s3_pointer(aws, fleet)  # S3's CURRENT names the release, signed by the KMS key
        assert (pointer.version, pointer.candidate.version, pointer.candidate.mode) == ("1", "2", "shadow")
        published = ec2.s3_text(aws, "models/toy/2/MANIFEST.sha256")  # the candidate's bundle, published first
        assert pointer.candidate.bundle_sha256 == hashlib.sha256(published.encode()).hexdigest()
        assert registry.candidate_version("toy") == "2"

        # The second instance's copy of bundle 2 stops matching the published one: it refuses the canary step,
        # and the first instance, already on the canary, goes back to the shadow it had.
        manifest = fleet[second].server.store / "2" / "MANIFEST.sha256"
        good = manifest.read_bytes()
        manifest.chmod(0o644)
        manifest.write_bytes(good.replace(b"# version: 2", b"# version: 2 "))
        with pytest.raises(DeploymentError) as failed:
            progressive.start(config, "2", "canary", 0.5, runner=runner)
        assert f"instance {second}: the refresh command failed" in str(failed.value)
        assert f"{first} rolled back to version 1" in str(failed.value)
        assert everywhere(fleet) == {("1", "2 shadow 1.0")}
        back = ec2.store_pointer(fleet[first])
        assert back.rollback and back.candidate == pointer.candidate  # the shadow, by a new signed pointer
        assert ec2.s3_pointer(aws, fleet) == pointer  # S3's CURRENT never moved
        manifest.write_bytes(good)

        canary = progressive.start(config, "2", "canary", 0.5, runner=runner)
        assert (canary.champion, canary.candidate, canary.share) == ("1", "2", 0.5)
        assert everywhere(fleet) == {("1", "2 canary 0.5")}
        found = progressive.status(config)
        assert sorted(found.urls) == sorted(s.server.url for s in fleet.values()) and found.drifted() == []
        assert found.candidate is not None and found.candidate["mode"] == "canary"

        promoted = progressive.promote(config, runner=runner)
        assert (promoted.champion, promoted.candidate) == ("2", None)
        assert everywhere(fleet) == {("2", None)}
        assert ec2.s3_pointer(aws, fleet).candidate is None and ec2.s3_pointer(aws, fleet).version == "2"
        assert registry.champion_version("toy") == "2" and registry.candidate_version("toy") is None

        progressive.start(config, "1", "canary", 0.1, runner=runner)
        assert everywhere(fleet) == {("2", "1 canary 0.1")}
        aborted = progressive.abort(config, "canary p99 too high", runner=runner)
        assert (aborted.version, aborted.champion, aborted.candidate) == ("1", "2", None)
        assert everywhere(fleet) == {("2", None)}
        assert ec2.s3_pointer(aws, fleet).candidate is None and registry.candidate_version("toy") is None

    for iid, stand_in in fleet.items():
        assert not stand_in.poller.failures(), (iid, stand_in.poller.outcomes)
        assert stand_in.poller.versions() == {"1", "2"}
        assert ec2.store_pointer(stand_in) == ec2.s3_pointer(aws, fleet)  # every store holds S3's pointer
    comments = [c["Comment"] for c in sorted(aws["ssm"].list_commands()["Commands"],
                                             key=lambda c: c["RequestedDateTime"])]
    assert f"refresh toy to version 1 + candidate 2 (shadow 100%) on {first}" in comments
    assert comments[-2:] == [f"refresh toy to version 2 on {iid}" for iid in (first, second)]  # the abort
