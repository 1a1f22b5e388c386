"""The MLflow server's login check, with the model registry's writes kept to named users.

MLflow's basic-auth app lets any logged-in user create a registered model, and makes its creator the model's
manager: a READ-only user could claim the pipeline's model name before the pipeline registered it, then move the
`champion` alias that deploy, rollback, batch and serve follow. This module is the app's `authorization_function`
(basic_auth.ini), the hook MLflow calls for every request it does not leave open (/health), on the Flask routes, on
GraphQL and, through MLflow's bridge, on its FastAPI routes alike. It logs the user in as MLflow does
(`authenticate_request_basic_auth`), then refuses (403) every write to the model registry by a user who is not
named in the same file's `registry_writers` (names separated by commas or spaces): creating, renaming, updating
or deleting a registered model, creating, updating, transitioning or deleting a version, setting or deleting an
alias or a tag, and starting a prompt-optimisation job (which writes prompt versions). Reads are left to
MLflow's own permissions (`default_permission = NO_PERMISSIONS`: nothing without a grant).

Written by scripts/stack_settings.py (native stack) and docker/mlflow/basic-auth-entrypoint.sh (compose): both name the
MLflow admin, the pipeline's login, as the writer. MLflow admins not listed are refused too.
"""

from __future__ import annotations

import configparser
import functools
import re

from flask import Response, make_response, request
from mlflow.environment_variables import MLFLOW_AUTH_CONFIG_PATH
from mlflow.server.auth import authenticate_request_basic_auth
from werkzeug.datastructures import Authorization

WRITERS_SETTING = "registry_writers"
# Any API version, REST or ajax, under any static prefix; repeated slashes count as one (werkzeug merges them).
_REGISTRY_PATH = re.compile(r"/mlflow/(?:registered-models|model-versions)(?:/|$)")
_JOB_CREATE_PATH = re.compile(r"/mlflow/prompt-optimization/jobs/?$")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_READ_ONLY_POSTS = ("/registered-models/get-latest-versions", "/registered-models/search",
                    "/model-versions/search")


@functools.cache
def registry_writers() -> frozenset[str]:
    """The users who may write to the registry: `registry_writers` of the auth config (none when it is absent)."""
    config = configparser.ConfigParser()  # as MLflow reads the file: %% is %
    config.read(MLFLOW_AUTH_CONFIG_PATH.get() or ())
    listed = config.get("mlflow", WRITERS_SETTING, fallback="")
    return frozenset(name for name in re.split(r"[\s,]+", listed) if name)


def is_registry_write(method: str, path: str) -> bool:
    """Whether a request (its method and URL path) writes to the model registry."""
    path = re.sub(r"/{2,}", "/", path)
    if _JOB_CREATE_PATH.search(path):
        return method.upper() == "POST"
    if not _REGISTRY_PATH.search(path) or method.upper() in _READ_METHODS:
        return False
    return not (method.upper() == "POST" and path.rstrip("/").endswith(_READ_ONLY_POSTS))


def refusal(username: str) -> Response:
    response = make_response(
        f"Permission denied: {username!r} may not write to the model registry. Only the users listed in "
        f"{WRITERS_SETTING} of the MLflow server's auth config may create, rename, delete or version registered "
        "models and set their aliases.")
    response.status_code = 403
    return response


def authenticate_request() -> Authorization | Response:
    """MLflow's basic-auth login, then the registry writers' rule (see the module's docstring)."""
    authorization = authenticate_request_basic_auth()
    if isinstance(authorization, Response):
        return authorization
    if is_registry_write(request.method, request.path) and authorization.username not in registry_writers():
        return refusal(authorization.username or "")
    return authorization
