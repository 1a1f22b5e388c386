"""The mlops-serving SSM document (serving/deploy/ssm-document-mlops-serving.json): the only command the deploy role
can run on a server, attacked through its parameters.

SSM substitutes {{ name }} into the script as text, so a value carrying shell syntax would run as root. The
document's allowedPattern refuses such values before anything runs (SSM checks them; so does the sending side, and
the local target's ShellRunner, which renders the document exactly as the SSM Agent does); the script puts each
value between single quotes, checks the patterns again and passes every value as one argument. A stub python
records the argument vector `python -m serving` would get.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from include.ml.exceptions import DeploymentError
from include.release.command_document import DOCUMENT_PATH, CommandDocument, document_parameters
from include.release.ports import Instance, ServingCommand
from include.release.rollout import activate_command, refresh_command
from include.release.targets.local import ShellRunner
from serving import pointer as pointers
from serving import store
from tests.support.bundles import make_bundle
from tests.support.pointers import named, token
from tests.support.project import REPO
from tests.support.signing import public_key_file

pytestmark = pytest.mark.integration
DOCUMENT = CommandDocument.load()
DIGEST = "ab" * 32
SHELL_SYNTAX = ["'", '"', "$", "`", ";", "&", "|", "<", ">", "(", ")", "{", "}", "\\", " ", "\t", "\n", "\r", "*",
                "?", "[", "]", "!", "#", "~", "%", "\x00", "\u00a0"]
VALID = {"action": "refresh", "source": "s3://my-bucket/models/toy", "version": "12", "manifestSha256": DIGEST,
         "pointer": "eyJwYXlsb2FkIjoi-_=", "executionTimeout": "600"}


@pytest.fixture
def python_stub(tmp_path: Path) -> dict[str, str]:
    """MLOPS_PYTHON as a script that writes its working directory and arguments, one a line, to $RECORD."""
    if Path("/etc/mlops/serving.env").exists():
        pytest.skip("this host has /etc/mlops/serving.env, which the script reads")
    stub = tmp_path / "python"
    stub.write_text("#!/bin/bash\nprintf '%s\\n' \"$(pwd)\" \"$@\" > \"$RECORD\"\n")
    stub.chmod(0o755)
    app = tmp_path / "app"
    app.mkdir()
    return {"MLOPS_PYTHON": str(stub), "MLOPS_APP_DIR": str(app), "RECORD": str(tmp_path / "argv.txt")}


def run_script(values: dict[str, str], env: dict[str, str], env_interpolation: bool = True,
               extra: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    rendered = DOCUMENT.render(values, env_interpolation)
    done = subprocess.run(["bash", "-c", rendered.script], env={**os.environ, **env, **rendered.env, **(extra or {})},
                          capture_output=True, text=True, timeout=30)
    record = Path(env["RECORD"])
    return done, record.read_text().split("\n")[:-1] if record.exists() else None


# --- the document itself ------------------------------------------------------------------------------------------


def test_the_document_runs_refresh_or_activate_and_nothing_else() -> None:
    content = json.loads(DOCUMENT_PATH.read_text())
    assert content["schemaVersion"] == "2.2"
    [step] = content["mainSteps"]
    assert step["action"] == "aws:runShellScript" and step["inputs"]["timeoutSeconds"] == "{{ executionTimeout }}"
    parameters = content["parameters"]
    assert set(parameters) == {"action", "source", "version", "manifestSha256", "pointer", "executionTimeout"}
    assert all(spec["type"] == "String" and spec["allowedPattern"].startswith("^")
               and spec["allowedPattern"].endswith("$") for spec in parameters.values())
    assert parameters["action"]["allowedValues"] == ["refresh", "activate"] and "default" not in parameters["action"]
    assert parameters["version"]["allowedPattern"] == store._VERSION.pattern  # the store's own version names
    assert parameters["manifestSha256"]["allowedPattern"] == "^([0-9a-f]{64})?$"
    assert parameters["pointer"]["allowedPattern"] == "^[A-Za-z0-9_=-]{0,4096}$"  # a signed pointer's token
    script = step["inputs"]["runCommand"]
    assert script[0] == "#!/bin/bash"  # the agent runs the file through sh: bash, not dash, reads it
    placeholders = [line for line in script if "{{" in line]
    assert placeholders == [f"if [ -z \"${{SSM_{name}+x}}\" ]; then SSM_{name}='{{{{ {name} }}}}'; fi"
                            for name in ("action", "source", "version", "manifestSha256", "pointer")]
    assert all(parameters[name]["interpolationType"] == "ENV_VAR"
               for name in ("action", "source", "version", "manifestSha256", "pointer"))
    # the script checks every value again with the very same patterns
    rechecked = dict(re.findall(r"^\[\[ \$SSM_(\w+) =~ (\S+) \]\] \|\| mlops_refuse", "\n".join(script), re.M))
    assert rechecked == {name: spec["allowedPattern"] for name, spec in parameters.items()
                         if name != "executionTimeout"}
    assert [line for line in script if "-m serving" in line and not line.startswith("#")] == [
        'exec "${MLOPS_PYTHON:-/opt/mlops/venv/bin/python}" -m serving "${arguments[@]}"']


def test_the_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is required (make test installs it)"
    for values in (VALID, document_parameters(activate_command("3", pointer="abc"))):
        done = subprocess.run([shellcheck, "-s", "bash", "-"], input=DOCUMENT.render(values).script,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("name", sorted(VALID))
def test_no_allowed_value_can_hold_shell_syntax(name: str) -> None:
    """Each character that could end a quote, start an expansion or a new command, put at the start, the middle
    and the end of a valid value: every one is refused."""
    base = VALID[name] if name != "action" else "activate"
    assert DOCUMENT.check({**VALID, name: base})[name] == base
    for char in SHELL_SYNTAX:
        for hostile in (char + base, base[:1] + char + base[1:], base + char):
            with pytest.raises(DeploymentError, match=f"parameter {name}="):
                DOCUMENT.check({**VALID, name: hostile})


# --- the attack: shell syntax in a parameter ------------------------------------------------------------------------


@pytest.mark.parametrize("parameter, value", [
    ("version", "1; touch {marker}"),
    ("version", "1\ntouch {marker}"),
    ("source", "s3://bucket/models/$(touch {marker})"),
    ("source", "s3://bucket/models/`touch {marker}`"),
    ("manifestSha256", DIGEST[:-1] + "'; touch {marker}; '"),
    ("pointer", "abc'; touch {marker}; echo '"),
    ("pointer", "abc\ntouch {marker}"),
    ("pointer", 'abc"$(touch {marker})"'),
])
def test_shell_syntax_in_a_parameter_is_refused_before_anything_runs(
        parameter: str, value: str, tmp_path: Path, python_stub: dict[str, str]) -> None:
    """Through the local target's runner (which renders the document as the SSM Agent does) and the rollout's
    own check: refused with a clear error, no shell started, no file touched, `python -m serving` never run."""
    marker = tmp_path / "pwned"
    value = value.format(marker=marker)
    values = {"source": VALID["source"], "version": "12", "manifestSha256": DIGEST, "pointer": "",
              parameter: value}
    command = refresh_command(values["source"], values["version"], values["manifestSha256"], values["pointer"])
    runner = ShellRunner(python_stub)
    with pytest.raises(DeploymentError, match=f"mlops-serving parameter {parameter}=.* does not match"):
        runner.run(Instance("local", ""), command, "refresh")
    with pytest.raises(DeploymentError, match=f"mlops-serving parameter {parameter}="):
        DOCUMENT.render(document_parameters(command))
    assert not marker.exists() and not Path(python_stub["RECORD"]).exists()


def test_an_unknown_action_or_parameter_is_refused() -> None:
    for command in (ServingCommand("rollback", {"version": "1"}), ServingCommand("status", {}),
                    ServingCommand("refresh; id", {"version": "1"})):
        with pytest.raises(DeploymentError, match="parameter action=.* is not one of"):
            DOCUMENT.check(document_parameters(command))
    with pytest.raises(DeploymentError, match="has no parameter commands"):
        DOCUMENT.check({**VALID, "commands": "id"})
    with pytest.raises(DeploymentError, match="needs the parameter version"):
        DOCUMENT.check({"action": "activate"})


# --- values are data ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_interpolation", [True, False], ids=["env-vars", "substituted-only"])
def test_allowed_values_reach_python_as_single_arguments(env_interpolation: bool, python_stub: dict[str, str]) -> None:
    """Values the patterns allow but an option parser could misread (a pointer that looks like an option, a version
    with '-' and '.', a path segment with '..' inside) arrive as data, one argument each, whether the agent passes
    them as SSM_<name> variables or only substitutes them (agents before 3.3.2746.0)."""
    app = python_stub["MLOPS_APP_DIR"]
    refresh = refresh_command("s3://my-bucket.eu/models/a..b/toy", "2.0-rc_1", DIGEST, pointer="--help")
    done, argv = run_script(document_parameters(refresh), python_stub, env_interpolation)
    assert done.returncode == 0, done.stderr
    assert argv == [app, "-m", "serving", "refresh", "--source", "s3://my-bucket.eu/models/a..b/toy",
                    "--version", "2.0-rc_1", "--manifest-sha256", DIGEST, "--pointer=--help"]
    done, argv = run_script(document_parameters(activate_command("1-x", pointer="-v=-_-")), python_stub,
                            env_interpolation)
    assert done.returncode == 0, done.stderr
    assert argv == [app, "-m", "serving", "activate", "1-x", "--pointer=-v=-_-"]
    done, argv = run_script(document_parameters(activate_command("7")), python_stub, env_interpolation)
    assert argv == [app, "-m", "serving", "activate", "7"]  # no pointer: no --pointer


def test_the_script_checks_again_what_the_agent_hands_it(python_stub: dict[str, str], tmp_path: Path) -> None:
    """The script's own checks, for an SSM_<name> variable that did not come through SSM's pattern check: refused
    with exit 2 before serving.env is read or python runs; a refresh without a digest and an activate with a
    source are refused too."""
    marker = tmp_path / "pwned"
    valid = document_parameters(refresh_command(VALID["source"], "12", DIGEST))
    for name, value in (("SSM_version", f"1$(touch {marker})"), ("SSM_pointer", "a\nb"),
                        ("SSM_source", "relative/path"), ("SSM_action", "status")):
        done, argv = run_script(valid, python_stub, extra={name: value})
        assert done.returncode == 2 and argv is None, (name, done.stdout, done.stderr)
        assert f"parameter {name.removeprefix('SSM_')} is not allowed" in done.stderr
    done, argv = run_script({**valid, "manifestSha256": ""}, python_stub)
    assert done.returncode == 2 and argv is None and "refresh needs source and manifestSha256" in done.stderr
    done, argv = run_script({**document_parameters(activate_command("1")), "source": VALID["source"]}, python_stub)
    assert done.returncode == 2 and argv is None and "activate takes no source" in done.stderr
    assert not marker.exists()


# --- the document for real: the local target's runner, `python -m serving` -------------------------------------------


def test_the_local_runner_refreshes_and_activates_through_the_document(tmp_path: Path) -> None:
    if Path("/etc/mlops/serving.env").exists():
        pytest.skip("this host has /etc/mlops/serving.env, which the script reads")
    releases, served = tmp_path / "releases", tmp_path / "store"
    make_bundle(releases, "1")
    make_bundle(releases, "2", offset=100.0)
    runner = ShellRunner({"MLOPS_APP_DIR": str(REPO), "MLOPS_PYTHON": sys.executable,
                          "SERVING_MODEL_STORE": str(served), "SERVING_URL": "",
                          "SERVING_PUBLIC_KEY": str(public_key_file())})
    local = Instance("local", "")
    for version in ("1", "2"):
        digest = store.sha256_file(releases / version / store.MANIFEST)
        done = runner.run(local, refresh_command(str(releases), version, digest, pointer=token(releases, version)),
                          f"refresh to {version}")
        assert done.exit_code == 0, done.tail()
        assert done.last_json()["status"] == "active" and named(served) == version
    refused = runner.run(local, refresh_command(str(releases), "1", "0" * 64, pointer=token(releases, "1")),
                         "refresh to 1, another bundle")
    assert refused.exit_code == 1 and "differs from the bundle sha256" in refused.last_json()["error"]
    back = token(releases, "1", sequence_after=pointers.peek(store.read_pointer(served)).sequence, rollback=True)
    done = runner.run(local, activate_command("1", pointer=back), "back to 1")
    assert done.exit_code == 0, done.tail()
    assert named(served) == "1" and named(served, store.PREVIOUS) == "2"
