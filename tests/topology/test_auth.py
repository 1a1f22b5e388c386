"""The production topology's logins, on the native stack: Airflow's FAB auth manager and MLflow's basic-auth app.

The stack (tests/support/stacks.py) runs with AIRFLOW_STACK_AUTH=fab and an MLflow backend URI, which turns on
MLflow's basic-auth app with the admin the tasks log in as. A DAG run succeeds with those logins; without them
MLflow refuses writes, the REST API refuses requests, and the Data Docs route (plugins/mlops_links.py) refuses to
show a run's data. A bad Data Docs path is a 404, never a server error.
"""

from __future__ import annotations

import re
import secrets

import pytest
import requests

from include.ml.artifacts import safe_run_id
from scripts.airflow_client import AirflowClient
from tests.support.stacks import CeleryStack

pytestmark = pytest.mark.integration

DAG_ID = "ml_pipeline"


@pytest.fixture
def finished_run(tuned_run: str) -> str:
    """A successful ml_pipeline run on the stack (the session's, tests/topology/conftest.py): its tasks logged to
    MLflow with the stack's login."""
    return tuned_run


def docs_url(stack: CeleryStack, run_id: str) -> str:
    url = stack.client.links(DAG_ID, run_id, "validate")["Data Docs"]
    assert url == f"{stack.api_url}/mlops/data-docs/{safe_run_id(run_id)}/index.html"
    return url


# --- MLflow ---------------------------------------------------------------------------------------------


def test_the_run_logged_to_mlflow_with_the_stack_login(celery_stack: CeleryStack, finished_run: str) -> None:
    """The tasks registered a model through the basic-auth server; what they wrote is there only for a login."""
    url, login = celery_stack.mlflow_url, celery_stack.mlflow_login
    evaluated = celery_stack.client.xcom(DAG_ID, finished_run, "evaluate")
    reads = {"runs/get": {"run_id": evaluated["mlflow_run_id"]},
             "registered-models/get": {"name": evaluated["model_name"]},
             "model-versions/get": {"name": evaluated["model_name"], "version": evaluated["version"]}}
    for path, params in reads.items():
        found = requests.get(f"{url}/api/2.0/mlflow/{path}", params=params, auth=login, timeout=30)
        assert found.status_code == 200, (path, found.text[:300])
        assert requests.get(f"{url}/api/2.0/mlflow/{path}", params=params, timeout=30).status_code == 401, path


def test_mlflow_refuses_requests_without_a_valid_login(celery_stack: CeleryStack) -> None:
    url, (user, password) = celery_stack.mlflow_url, celery_stack.mlflow_login
    name = f"auth-check-{secrets.token_hex(4)}"
    create = f"{url}/api/2.0/mlflow/experiments/create"
    # Health stays open (load balancers, `up`); nothing else does.
    assert requests.get(f"{url}/health", timeout=30).status_code == 200
    for auth in (None, (user, "not-the-password"), ("nobody", password)):
        refused = requests.post(create, json={"name": name}, auth=auth, timeout=30)
        assert refused.status_code == 401, (auth and auth[0], refused.status_code, refused.text[:300])
        assert refused.headers.get("WWW-Authenticate", "").startswith("Basic")
    for path in ("/api/2.0/mlflow/experiments/search?max_results=1", "/api/2.0/mlflow/registered-models/search",
                 "/ajax-api/2.0/mlflow/experiments/search?max_results=1"):
        assert requests.get(url + path, timeout=30).status_code == 401, path
    # Setting an alias (what picks the next deployed model) needs a login too.
    alias = requests.post(f"{url}/api/2.0/mlflow/registered-models/alias", timeout=30,
                          json={"name": "wine-quality", "alias": "previous_champion", "version": "1"})
    assert alias.status_code == 401
    assert requests.get(f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name},
                        auth=(user, password), timeout=30).status_code == 404, "a refused write created something"
    created = requests.post(create, json={"name": name}, auth=(user, password), timeout=30)
    assert created.status_code == 200, created.text


# --- Airflow: the FAB auth manager ----------------------------------------------------------------------------


def test_airflow_runs_the_fab_auth_manager(celery_stack: CeleryStack) -> None:
    api, client = celery_stack.api_url, celery_stack.client
    assert requests.get(f"{api}/api/v2/dags", timeout=30).status_code == 401
    wrong = requests.post(f"{api}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=30)
    assert wrong.status_code == 401, wrong.text
    # The FAB auth manager's own API answers, and holds the admin `up` created from the stack's setting.
    admin = client.fetch(f"{api}/auth/fab/v1/users/admin")
    assert admin.status_code == 200, admin.text
    assert [role["name"] for role in admin.json()["roles"]] == ["Admin"]
    assert client.get("dags", dag_id_pattern=DAG_ID)["total_entries"] == 1


# --- the Data Docs route --------------------------------------------------------------------------------------


def test_data_docs_need_a_login(celery_stack: CeleryStack, finished_run: str) -> None:
    url, client = docs_url(celery_stack, finished_run), celery_stack.client
    anonymous = requests.get(url, timeout=30)
    assert anonymous.status_code == 401, anonymous.text[:300]
    assert "Expectation" not in anonymous.text
    forged = requests.get(url, headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert forged.status_code in (401, 403) and "Expectation" not in forged.text
    # With the REST API's token, or with the same token as the UI's cookie, the page is there.
    page = client.fetch(url)
    assert page.status_code == 200 and "Expectation" in page.text, page.text[:300]
    as_cookie = requests.get(url, cookies={"_token": client.token()}, timeout=30)
    assert as_cookie.status_code == 200 and "Expectation" in as_cookie.text


def test_data_docs_link_opens_after_a_login_in_the_ui(celery_stack: CeleryStack, finished_run: str) -> None:
    """A browser's path: FAB's login form, then the task's Data Docs link, with only the cookies the login set."""
    url, api = docs_url(celery_stack, finished_run), celery_stack.api_url
    browser = requests.Session()
    form = browser.get(f"{api}/auth/login/", timeout=30)
    assert form.status_code == 200, form.text[:300]
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form.text) or re.search(
        r'value="([^"]+)"[^>]*name="csrf_token"', form.text)
    assert token, "no CSRF token in FAB's login form"
    user, password = "admin", celery_stack.env["AIRFLOW_STACK_ADMIN_PASSWORD"]
    login = browser.post(form.url, data={"username": user, "password": password, "csrf_token": token.group(1)},
                         timeout=30)
    assert login.status_code == 200, login.text[:300]
    assert "_token" in browser.cookies, f"the login set no _token cookie: {list(browser.cookies.keys())}"
    page = browser.get(url, timeout=30)
    assert page.status_code == 200 and "Expectation" in page.text, page.text[:300]


def test_data_docs_need_read_access_to_the_dag(celery_stack: CeleryStack, finished_run: str) -> None:
    """A user whose role may not read the DAG's runs is turned away (403), though logged in."""
    url, api, admin = docs_url(celery_stack, finished_run), celery_stack.api_url, celery_stack.client
    name, password = f"public-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    created = admin.session.post(f"{api}/auth/fab/v1/users", timeout=30,
                                 headers={"Authorization": f"Bearer {admin.token()}"},
                                 json={"username": name, "password": password, "email": f"{name}@example.invalid",
                                       "first_name": "No", "last_name": "Access", "roles": [{"name": "Public"}]})
    assert created.status_code in (200, 201), created.text
    outsider = AirflowClient(api, name, password)
    refused = outsider.fetch(url)
    assert refused.status_code == 403, refused.text[:300]
    assert "Expectation" not in refused.text


@pytest.mark.parametrize("path", [
    "%00",  # NUL: used to be a 500
    "index.html%00.css",
    "..%2F..%2Fingest%2Fdata.csv",  # another stage's output of the same run
    "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd",
    "no-such-page.html",
])
def test_bad_data_docs_paths_are_not_found(celery_stack: CeleryStack, finished_run: str, path: str) -> None:
    url = docs_url(celery_stack, finished_run)
    response = celery_stack.client.fetch(url.replace("index.html", path))
    assert response.status_code == 404, (response.status_code, response.text[:300])


@pytest.mark.parametrize("run_part", ["%00", "%2E%2E", "%2E%2E%2F%2E%2E", "a%00b", "manual__no-such-run"])
def test_bad_data_docs_run_ids_are_not_found(celery_stack: CeleryStack, run_part: str) -> None:
    response = celery_stack.client.fetch(f"{celery_stack.api_url}/mlops/data-docs/{run_part}/index.html")
    assert response.status_code == 404, (response.status_code, response.text[:300])
