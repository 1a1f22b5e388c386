"""Only the pipeline's login writes to the model registry, on a real basic-auth MLflow server (finding 4).

The server runs `mlflow server --app-name basic-auth` with the config the stacks write (scripts/stack_settings.py, and
docker/mlflow/basic-auth-entrypoint.sh for compose): `default_permission = NO_PERMISSIONS` and
scripts/mlflow_auth.py as the login check, whose `registry_writers` is the pipeline's login. Another logged-in
user, even one granted READ or MANAGE on the model, can neither claim the model's name before the pipeline
registers it nor move, delete or re-point the `champion` alias afterwards; the pipeline's own registration
(include/ml/registry.py) works as before.
"""

from __future__ import annotations

import secrets
from typing import Iterator

import pytest
import requests

from include.ml import registry
from scripts.mlflow_auth import is_registry_write
from tests.support.mlflow_server import AuthServer, basic_auth_mlflow_server

pytestmark = pytest.mark.integration

MODEL = "wine-quality"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    with basic_auth_mlflow_server(tmp_path_factory.mktemp("mlflow-auth")) as running:
        yield running


@pytest.fixture
def as_pipeline(server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[AuthServer]:
    """MLflow's client (and include/ml/registry.py) logged in as the pipeline, as the workers are."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin[1])
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    # An earlier module may have set its own URIs in this process, which win over the environment.
    mlflow.set_tracking_uri(server.url)
    mlflow.set_registry_uri(server.url)
    yield server
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def new_user(server: AuthServer, grant: str | None = None) -> tuple[str, str]:
    """A user the admin creates, with `grant` (READ, EDIT, MANAGE) on the model, or no grant at all."""
    name, password = f"user-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    made = requests.post(f"{server.url}/api/2.0/mlflow/users/create", auth=server.admin, timeout=30,
                         json={"username": name, "password": password})
    assert made.status_code == 200, made.text
    if grant:
        granted = requests.post(f"{server.url}/api/3.0/mlflow/users/permissions/grant", auth=server.admin, timeout=30,
                                json={"username": name, "resource_type": "registered_model", "resource_id": MODEL,
                                      "permission": grant})
        assert granted.status_code == 200, granted.text
    return name, password


def call(server: AuthServer, method: str, path: str, login: tuple[str, str], **body: str) -> requests.Response:
    kwargs = {"params": body} if method == "GET" else {"json": body}
    return requests.request(method, f"{server.url}{path}", auth=login, timeout=30, **kwargs)


def champion(server: AuthServer) -> str:
    got = call(server, "GET", "/api/2.0/mlflow/registered-models/alias", server.admin, name=MODEL, alias="champion")
    assert got.status_code == 200, got.text
    return got.json()["model_version"]["version"]


def pipeline_registers(server: AuthServer) -> str:
    """What the pipeline's train and evaluate tasks do: a run, its logged model, a version, the champion alias."""
    import mlflow

    with mlflow.start_run() as run:
        model = mlflow.MlflowClient().create_logged_model(run.info.experiment_id, source_run_id=run.info.run_id)
    version = registry.register(MODEL, f"models:/{model.model_id}", run.info.run_id)
    registry.promote(MODEL, version, reason="tests: the pipeline's gate")
    return version


def test_a_logged_in_user_cannot_claim_the_model_name_first(server: AuthServer, as_pipeline: AuthServer) -> None:
    """The attack's first half: before the pipeline registers the model, another user creates it (and would be
    its manager). Refused on the REST and the UI's ajax paths, however the path is spelt; the name stays free."""
    for grant in (None, "READ"):
        login = new_user(server, grant)
        for path in ("/api/2.0/mlflow/registered-models/create", "/ajax-api/2.0/mlflow/registered-models/create",
                     "//api/2.0/mlflow//registered-models/create"):
            claimed = call(server, "POST", path, login, name=MODEL)
            assert claimed.status_code in (403, 308), (grant, path, claimed.status_code, claimed.text[:200])
            if claimed.status_code == 403:
                assert "registry_writers" in claimed.text
        missing = call(server, "GET", "/api/2.0/mlflow/registered-models/get", server.admin, name=MODEL)
        assert missing.status_code == 404, f"a refused create made the model: {missing.text[:200]}"
    # The pipeline then registers and promotes as always.
    first = pipeline_registers(server)
    assert champion(server) == first
    owner = call(server, "GET", "/api/2.0/mlflow/registered-models/get", server.admin, name=MODEL)
    assert owner.status_code == 200, owner.text


@pytest.mark.parametrize("grant", ["READ", "MANAGE"])
def test_another_user_cannot_move_or_remove_the_champion(server: AuthServer, as_pipeline: AuthServer,
                                                        grant: str) -> None:
    """The attack's second half: after the admin moves `champion`, another user moves it back (or deletes it,
    adds a version of theirs, renames or deletes the model). Refused even with MANAGE on the model."""
    if call(server, "GET", "/api/2.0/mlflow/registered-models/get", server.admin, name=MODEL).status_code == 404:
        pipeline_registers(server)
    older = pipeline_registers(server)
    newer = pipeline_registers(server)
    assert champion(server) == newer
    login = new_user(server, grant)
    writes = [
        ("POST", "/api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "champion", "version": older}),
        ("POST", "/ajax-api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "champion",
                                                                  "version": older}),
        ("DELETE", "/api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "champion"}),
        ("POST", "/api/2.0/mlflow/model-versions/create", {"name": MODEL, "source": "models:/m-not-the-pipelines"}),
        ("POST", "/api/2.0/mlflow/registered-models/rename", {"name": MODEL, "new_name": "taken"}),
        ("DELETE", "/api/2.0/mlflow/registered-models/delete", {"name": MODEL}),
        ("DELETE", "/api/2.0/mlflow/model-versions/delete", {"name": MODEL, "version": newer}),
        ("POST", "/api/2.0/mlflow/model-versions/transition-stage", {"name": MODEL, "version": older,
                                                                     "stage": "Production"}),
        ("POST", "/api/2.0/mlflow/registered-models/set-tag", {"name": MODEL, "key": "champion_history",
                                                               "value": "[]"}),
    ]
    for method, path, body in writes:
        refused = call(server, method, path, login, **body)
        assert refused.status_code == 403, (grant, method, path, refused.status_code, refused.text[:200])
    assert champion(server) == newer
    versions = call(server, "GET", "/api/2.0/mlflow/model-versions/search", server.admin, filter=f"name='{MODEL}'")
    assert {v["version"] for v in versions.json()["model_versions"]} >= {older, newer}
    assert len(versions.json()["model_versions"]) == int(newer), "a refused request added a version"
    # What MLflow grants still holds for reading: READ reads the alias; without a grant (NO_PERMISSIONS) nothing.
    read = call(server, "GET", "/api/2.0/mlflow/registered-models/alias", login, name=MODEL, alias="champion")
    assert read.status_code == 200, (grant, read.text[:200])
    outsider = call(server, "GET", "/api/2.0/mlflow/registered-models/alias", new_user(server), name=MODEL,
                    alias="champion")
    assert outsider.status_code == 403, outsider.text[:200]
    # The pipeline's own rollback still moves the alias.
    registry.rollback(MODEL)
    assert champion(server) == older


def test_every_registry_write_route_of_mlflow_is_guarded() -> None:
    """Each route MLflow's server has under the registry's paths: every write method is one the check refuses to
    non-writers, every read is left to MLflow's permissions."""
    from mlflow.server import app

    seen = 0
    for rule in app.url_map.iter_rules():
        if "/registered-models" not in rule.rule and "/model-versions/" not in rule.rule:
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            seen += 1
            read = method == "GET" or rule.rule.endswith("/get-latest-versions")
            assert is_registry_write(method, rule.rule) is not read, (method, rule.rule)
    assert seen > 30
    assert is_registry_write("POST", "/api/3.0/mlflow/prompt-optimization/jobs")
    assert not is_registry_write("POST", "/api/2.0/mlflow/experiments/create")


def test_graphql_offers_no_registry_write() -> None:
    """/graphql is the one route the check does not classify by path: it must hold no mutation that writes the
    registry (today MLflow's mutations only search). An MLflow upgrade adding one fails here."""
    from mlflow.server.graphql.graphql_schema_extensions import schema

    mutations = set(schema.graphql_schema.mutation_type.fields)
    assert mutations <= {"mlflowSearchDatasets", "mlflowSearchRuns", "testMutation"}, sorted(mutations)


def test_the_server_logs_nothing_unexpected(server: AuthServer) -> None:
    assert "Traceback" not in server.log(), server.log()
