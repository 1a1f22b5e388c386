#!/usr/bin/env bash
# A local Airflow 3 stack for this project, without Docker: api-server, scheduler,
# dag-processor and triggerer (LocalExecutor, SQLite metadata DB), plus the MLflow UI
# on the project's tracking store and the prediction server (gunicorn) on the local model
# store, which the DAG's deploy task (deployment.target: local) keeps on the champion. Environment settings alone (below) turn it into the
# production topology of docker-compose.yaml: CeleryExecutor with Celery workers as
# separate processes, PostgreSQL metadata DB, Redis broker, MLflow server on PostgreSQL.
#
#   scripts/airflow_stack.sh up       # start what is not running, wait until healthy, print URLs and login
#   scripts/airflow_stack.sh status   # what runs, and the api-server's health report
#   scripts/airflow_stack.sh down     # stop exactly what `up` started
#   eval "$(scripts/airflow_stack.sh env)"   # then `airflow ...` CLI commands talk to this stack
#
# Everything lives in $AIRFLOW_STACK_HOME (default <repo>/airflow_home, git-ignored):
#   airflow.db                          the metadata DB
#   logs/                               Airflow's task and dag-processor logs
#   stack/<component>.log, .pid         each component's console output and "pid start-time"
#   stack/secrets.env                   JWT secret, API secret key, Fernet key (made once, mode 600)
#   simple_auth_manager_passwords.json  the UI/API login (SimpleAuthManager reads it)
#
# Settings (environment variables):
#   AIRFLOW_STACK_HOME         default <repo>/airflow_home
#   AIRFLOW_STACK_HOST         default 127.0.0.1 (both servers bind to it)
#   AIRFLOW_STACK_API_PORT     default 8080
#   AIRFLOW_STACK_MLFLOW_PORT  default 5000
#   AIRFLOW_STACK_MLFLOW       default 1; 0 = no MLflow UI
#   AIRFLOW_STACK_SERVING_PORT default 8000: the prediction server (deploy tasks target it: MLOPS_SERVING_URL)
#   AIRFLOW_STACK_SERVING      default 1; 0 = no prediction server
#   AIRFLOW_STACK_ADMIN_USER   default admin
#   AIRFLOW_STACK_ADMIN_PASSWORD  default: generated on the first `up`, then kept in the passwords file
#   AIRFLOW_STACK_DAGS_FOLDER / AIRFLOW_STACK_PLUGINS_FOLDER  default <repo>/dags, <repo>/plugins
#   AIRFLOW_STACK_VENV         default <repo>/.venv
#   AIRFLOW_STACK_TIMEOUT      seconds `up` waits for health, default 180
#   AIRFLOW_STACK_STOP_TIMEOUT seconds `down` waits after a second SIGTERM before SIGKILL, default 20
# The production topology (README, "Production topology"):
#   AIRFLOW_STACK_EXECUTOR     local (default: LocalExecutor) or celery (CeleryExecutor)
#   AIRFLOW_STACK_SQL_CONN     metadata DB, default sqlite:///$AIRFLOW_STACK_HOME/airflow.db;
#                              e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/airflow (required for celery)
#   AIRFLOW_STACK_BROKER_URL   Celery broker (celery only, required), e.g. redis://127.0.0.1:6379/0
#   AIRFLOW_STACK_WORKERS      Celery workers, default 2: processes worker-1 ... worker-N, each named
#                              worker-<n>@<host> in Celery and in its task instances' hostname
#   AIRFLOW_STACK_WORKER_CONCURRENCY  task slots per worker, default 2
#   AIRFLOW_STACK_QUEUES       queues the workers serve, default: [operators] default_queue (default)
#   AIRFLOW_STACK_MLFLOW_BACKEND_URI  the MLflow server's backend store, e.g. postgresql://postgres@127.0.0.1:5432/mlflow;
#                              tasks then log through the server (MLOPS_TRACKING_URI=http://<host>:<mlflow port>)
#                              and artifacts go to MLOPS_ARTIFACT_LOCATION (s3://... or a directory)
# The caller's environment reaches every process, tasks included: set MLOPS_* (see
# include/config/config.yaml) or any AIRFLOW__SECTION__KEY before `up` to change them.
set -euo pipefail
set +m  # background jobs must stay in our process group so `setsid` makes each one a group leader

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_HOME="$(mkdir -p "${AIRFLOW_STACK_HOME:-$REPO/airflow_home}" && cd "${AIRFLOW_STACK_HOME:-$REPO/airflow_home}" && pwd)"
HOST="${AIRFLOW_STACK_HOST:-127.0.0.1}"
API_PORT="${AIRFLOW_STACK_API_PORT:-8080}"
MLFLOW_PORT="${AIRFLOW_STACK_MLFLOW_PORT:-5000}"
WITH_MLFLOW="${AIRFLOW_STACK_MLFLOW:-1}"
SERVING_PORT="${AIRFLOW_STACK_SERVING_PORT:-8000}"
WITH_SERVING="${AIRFLOW_STACK_SERVING:-1}"
ADMIN_USER="${AIRFLOW_STACK_ADMIN_USER:-admin}"
DAGS_FOLDER="${AIRFLOW_STACK_DAGS_FOLDER:-$REPO/dags}"
PLUGINS_FOLDER="${AIRFLOW_STACK_PLUGINS_FOLDER:-$REPO/plugins}"
VENV="${AIRFLOW_STACK_VENV:-$REPO/.venv}"
TIMEOUT="${AIRFLOW_STACK_TIMEOUT:-180}"
STOP_TIMEOUT="${AIRFLOW_STACK_STOP_TIMEOUT:-20}"
EXECUTOR="${AIRFLOW_STACK_EXECUTOR:-local}"
SQL_CONN="${AIRFLOW_STACK_SQL_CONN:-sqlite:///$STACK_HOME/airflow.db}"
BROKER_URL="${AIRFLOW_STACK_BROKER_URL:-}"
WORKERS="${AIRFLOW_STACK_WORKERS:-2}"
WORKER_CONCURRENCY="${AIRFLOW_STACK_WORKER_CONCURRENCY:-2}"
QUEUES="${AIRFLOW_STACK_QUEUES:-${AIRFLOW__OPERATORS__DEFAULT_QUEUE:-default}}"
MLFLOW_BACKEND_URI="${AIRFLOW_STACK_MLFLOW_BACKEND_URI:-}"

RUN_DIR="$STACK_HOME/stack"
SECRETS="$RUN_DIR/secrets.env"
PASSWORDS="$STACK_HOME/simple_auth_manager_passwords.json"
PY="$VENV/bin/python"
API_URL="http://$HOST:$API_PORT"
MLFLOW_URL="http://$HOST:$MLFLOW_PORT"
SERVING_URL="http://$HOST:$SERVING_PORT"
AIRFLOW_COMPONENTS=(api-server scheduler dag-processor triggerer)
# Every process `up` starts carries this marker; `down` uses it to find stragglers.
STACK_ID="$STACK_HOME"

die() { echo "airflow_stack: $*" >&2; exit 1; }

case "$EXECUTOR" in
    local) ;;
    celery)
        [[ -n "$BROKER_URL" ]] || die "AIRFLOW_STACK_EXECUTOR=celery needs AIRFLOW_STACK_BROKER_URL"
        [[ "$SQL_CONN" != sqlite* ]] || die "the CeleryExecutor cannot use SQLite; set AIRFLOW_STACK_SQL_CONN"
        [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "AIRFLOW_STACK_WORKERS must be a positive integer, not '$WORKERS'"
        for ((i = 1; i <= WORKERS; i++)); do AIRFLOW_COMPONENTS+=("worker-$i"); done
        ;;
    *) die "AIRFLOW_STACK_EXECUTOR must be local or celery, not '$EXECUTOR'" ;;
esac

worker_name() {  # component (worker-<n>) -> its Celery node name, also its task instances' hostname
    echo "$1@${HOSTNAME:-$(hostname)}"
}

redacted() {  # a URL without its password, for messages
    sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"
}

components() {
    printf '%s\n' "${AIRFLOW_COMPONENTS[@]}"
    if [[ "$WITH_MLFLOW" == 1 ]]; then echo mlflow; fi
    if [[ "$WITH_SERVING" == 1 ]]; then echo serving; fi
}

# --- process bookkeeping ---------------------------------------------------------

start_time() {  # pid -> its start time in clock ticks since boot (guards against PID reuse)
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $stat
    [[ "$1" != Z ]] || return 1  # a zombie is dead
    echo "${20}"
}

recorded_pid() {  # component -> pid, if its pid file names a process that still runs
    local file="$RUN_DIR/$1.pid" pid started now
    [[ -f "$file" ]] || return 1
    read -r pid started <"$file" || return 1
    now="$(start_time "$pid")" || return 1
    [[ "$now" == "$started" ]] || return 1
    echo "$pid"
}

port_in_use() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

launch() {  # component command... : start it detached, in its own session and process group
    local name=$1 log="$RUN_DIR/$1.log" pid
    shift
    echo "==== $(date -u +%FT%TZ) starting: $*" >>"$log"
    setsid "$@" >>"$log" 2>&1 </dev/null 9>&- &  # fd 9 holds the stack lock: not for the daemons
    pid=$!
    echo "$pid $(start_time "$pid")" >"$RUN_DIR/$name.pid"
    echo "  started $name (pid $pid, log $log)"
}

# --- configuration -----------------------------------------------------------------

ensure_secrets() {
    [[ -s "$SECRETS" ]] && return
    (umask 077 && "$PY" - >"$SECRETS" <<'EOF'
import secrets
from cryptography.fernet import Fernet
print(f"AIRFLOW__API_AUTH__JWT_SECRET='{secrets.token_urlsafe(48)}'")
print(f"AIRFLOW__API__SECRET_KEY='{secrets.token_urlsafe(32)}'")
print(f"AIRFLOW__CORE__FERNET_KEY='{Fernet.generate_key().decode()}'")
EOF
    )
}

ensure_password() {  # the SimpleAuthManager keeps {"user": "password"} in this file and never overwrites an entry
    (umask 077 && ADMIN_USER="$ADMIN_USER" PASSWORDS="$PASSWORDS" "$PY" - <<'EOF'
import json, os, secrets
path, user = os.environ["PASSWORDS"], os.environ["ADMIN_USER"]
try:
    with open(path) as f:
        passwords = json.loads(f.read() or "{}")
except FileNotFoundError:
    passwords = {}
wanted = os.environ.get("AIRFLOW_STACK_ADMIN_PASSWORD") or passwords.get(user) or secrets.token_urlsafe(12)
if passwords.get(user) != wanted:
    passwords[user] = wanted
    with open(path, "w") as f:
        f.write(json.dumps(passwords) + "\n")
EOF
    )
}

admin_password() {
    ADMIN_USER="$ADMIN_USER" PASSWORDS="$PASSWORDS" "$PY" -c \
        'import json, os; print(json.load(open(os.environ["PASSWORDS"])).get(os.environ["ADMIN_USER"], "?"))'
}

export_airflow_env() {
    [[ -x "$PY" ]] || die "no Python at $PY; run 'make venv' first (or set AIRFLOW_STACK_VENV)"
    mkdir -p "$RUN_DIR" "$DAGS_FOLDER" "$PLUGINS_FOLDER"
    ensure_secrets
    set -a
    # shellcheck disable=SC1090
    . "$SECRETS"
    set +a
    export AIRFLOW_HOME="$STACK_HOME"
    export AIRFLOW__CORE__DAGS_FOLDER="$DAGS_FOLDER"
    export AIRFLOW__CORE__PLUGINS_FOLDER="$PLUGINS_FOLDER"
    export AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$SQL_CONN"
    if [[ "$EXECUTOR" == celery ]]; then
        export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
        # Task results go to the metadata DB (db+<SQL_CONN>) unless AIRFLOW__CELERY__RESULT_BACKEND says otherwise.
        export AIRFLOW__CELERY__BROKER_URL="$BROKER_URL"
    else
        export AIRFLOW__CORE__EXECUTOR=LocalExecutor
    fi
    if [[ -n "$MLFLOW_BACKEND_URI" ]]; then
        [[ "$WITH_MLFLOW" == 1 ]] || die "AIRFLOW_STACK_MLFLOW_BACKEND_URI needs the MLflow server (AIRFLOW_STACK_MLFLOW=1)"
        # Tasks log through the tracking server; only the server talks to its backend store.
        export MLOPS_TRACKING_URI="$MLFLOW_URL"
    fi
    export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="$ADMIN_USER:admin"
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$PASSWORDS"
    export AIRFLOW__API__HOST="$HOST"
    export AIRFLOW__API__PORT="$API_PORT"
    export AIRFLOW__API__BASE_URL="$API_URL"
    # Task links to MLflow runs (plugins/mlops_links.py) point at this stack's MLflow UI.
    if [[ "$WITH_MLFLOW" == 1 ]]; then export MLOPS_MLFLOW_UI_URL="${MLOPS_MLFLOW_UI_URL:-$MLFLOW_URL}"; fi
    # The local deploy target refreshes this stack's prediction server.
    if [[ "$WITH_SERVING" == 1 ]]; then export MLOPS_SERVING_URL="$SERVING_URL"; fi
    # Task processes report to the api-server's Execution API; must follow a non-default port.
    export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$API_URL/execution/"
    export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$STACK_HOME/logs"
    # LocalExecutor forks this many worker processes up front (Airflow's default, 32, is a lot on a laptop).
    export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
    # scikit-learn's OpenMP threads spin while idle and fight other busy processes on a small box
    # (HistGradientBoosting fit 4 s -> 8 s beside one busy loop; see docs/benchmarks.md).
    export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
    # Tasks and the dag-processor import `include.ml` from the repo root.
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$VENV/bin:$PATH"
}

mlflow_store() {  # prints the tracking URI and artifact location the pipeline uses (config + MLOPS_* overrides)
    (cd "$REPO" && "$PY" - <<'EOF'
from include.ml.configuration import ConfigurationManager
m = ConfigurationManager().config.mlflow
print(m.tracking_uri)
print(m.artifact_location or "")
EOF
    )
}

model_store() {  # the local deploy target's model store (config + MLOPS_MODEL_STORE)
    (cd "$REPO" && "$PY" -c \
        'from include.ml.configuration import ConfigurationManager as C; print(C().config.deployment.local.model_store)')
}

# --- commands ------------------------------------------------------------------------

wait_healthy() {  # since-epoch started-components... : poll the health endpoints, watch the processes
    local since=$1
    shift
    local pids=()
    local name
    for name in $(components); do pids+=("$name=$(recorded_pid "$name" || echo 0)"); done
    local mlflow_url="" serving_url="" workers=()
    if [[ "$WITH_MLFLOW" == 1 ]]; then mlflow_url="$MLFLOW_URL"; fi
    if [[ "$WITH_SERVING" == 1 ]]; then serving_url="$SERVING_URL"; fi
    for name in $(components); do
        if [[ "$name" == worker-* ]]; then workers+=("$name=$(worker_name "$name")"); fi
    done
    API_URL="$API_URL" MLFLOW_URL="$mlflow_url" SERVING_URL="$serving_url" WORKERS="${workers[*]}" \
        TIMEOUT="$TIMEOUT" SINCE="$since" STARTED="$*" RUN_DIR="$RUN_DIR" "$PY" - "${pids[@]}" <<'EOF'
import json, os, sys, time, urllib.request
from datetime import datetime

api, mlflow_url, serving_url = os.environ["API_URL"], os.environ["MLFLOW_URL"], os.environ["SERVING_URL"]
workers = dict(arg.split("=", 1) for arg in os.environ["WORKERS"].split())  # component -> Celery node name
celery_app = None
since, started = float(os.environ["SINCE"]), set(os.environ["STARTED"].split())
pids = dict(arg.split("=", 1) for arg in sys.argv[1:])
deadline = time.monotonic() + float(os.environ["TIMEOUT"])
key = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


state = "no answer yet"
while True:
    dead = [name for name, pid in pids.items() if not running(int(pid))]
    if dead:
        for name in dead:
            print(f"airflow_stack: {name} exited; last lines of {os.environ['RUN_DIR']}/{name}.log:", file=sys.stderr)
            with open(f"{os.environ['RUN_DIR']}/{name}.log", errors="replace") as f:
                sys.stderr.writelines(f.readlines()[-25:])
        sys.exit(1)
    try:
        health = json.loads(get(f"{api}/api/v2/monitor/health")[1])
        state = {"metadatabase": health["metadatabase"]["status"]}
        for component, field in key.items():
            info = health.get(field) or {}
            beat = info.get(f"latest_{field}_heartbeat")
            fresh = component not in started or (
                beat is not None and datetime.fromisoformat(beat).timestamp() >= since)
            state[component] = info.get("status") if fresh else "starting"
        if mlflow_url:
            try:
                state["mlflow"] = "healthy" if get(f"{mlflow_url}/health")[0] == 200 else "unhealthy"
            except OSError as exc:
                state["mlflow"] = f"no answer ({exc.__class__.__name__})"
        if serving_url:  # live, model or not: the first deploy gives it one
            try:
                state["serving"] = "healthy" if get(f"{serving_url}/health")[0] == 200 else "unhealthy"
            except OSError as exc:
                state["serving"] = f"no answer ({exc.__class__.__name__})"
        if workers:  # a Celery worker is healthy once it answers a ping through the broker
            if celery_app is None:
                from airflow.providers.celery.executors.celery_executor_utils import app as celery_app
            try:
                answered = {node for reply in celery_app.control.ping(list(workers.values()), timeout=1.0)
                            for node in reply}
            except Exception as exc:  # noqa: BLE001 - the broker may not answer yet
                answered = set()
                state["broker"] = f"no answer ({exc.__class__.__name__})"
            else:
                state.pop("broker", None)
            for component, node in workers.items():
                state[component] = "healthy" if node in answered else "starting"
        if all(value == "healthy" for value in state.values()):
            print("  healthy: " + ", ".join(state))
            sys.exit(0)
    except (OSError, ValueError, KeyError) as exc:
        state = f"api-server: no answer ({exc.__class__.__name__})"
    if time.monotonic() > deadline:
        print(f"airflow_stack: not healthy after {os.environ['TIMEOUT']}s: {state}", file=sys.stderr)
        sys.exit(1)
    time.sleep(1)
EOF
}

cmd_up() {
    local since started=() name
    since="$(date +%s)"
    export_airflow_env
    ensure_password

    local to_start=()
    for name in $(components); do
        if pid="$(recorded_pid "$name")"; then
            echo "  $name already running (pid $pid)"
        else
            to_start+=("$name")
        fi
    done
    if [[ ${#to_start[@]} -eq 0 ]]; then
        echo "Stack in $STACK_HOME is already up."
    else
        for name in "${to_start[@]}"; do
            case "$name" in
                api-server) port_in_use "$API_PORT" && die "port $HOST:$API_PORT is taken by another process" ;;
                mlflow) port_in_use "$MLFLOW_PORT" && die "port $HOST:$MLFLOW_PORT is taken by another process" ;;
                serving) port_in_use "$SERVING_PORT" && die "port $HOST:$SERVING_PORT is taken by another process" ;;
            esac
        done
        if printf '%s\n' "${to_start[@]}" | grep -qvxE 'mlflow|serving'; then  # an Airflow component
            echo "  migrating the metadata DB ($(redacted "$SQL_CONN"))"
            "$VENV/bin/airflow" db migrate >>"$RUN_DIR/db-migrate.log" 2>&1 \
                || die "airflow db migrate failed; see $RUN_DIR/db-migrate.log"
        fi
        export AIRFLOW_STACK_ID="$STACK_ID"
        for name in "${to_start[@]}"; do
            case "$name" in
                api-server) launch api-server "$VENV/bin/airflow" api-server --host "$HOST" --port "$API_PORT" ;;
                # Logs are local files the api-server reads directly: no log-serving sub-servers (and ports) needed.
                scheduler) launch scheduler "$VENV/bin/airflow" scheduler --skip-serve-logs ;;
                dag-processor) launch dag-processor "$VENV/bin/airflow" dag-processor ;;
                triggerer) launch triggerer "$VENV/bin/airflow" triggerer --skip-serve-logs ;;
                worker-*) start_worker "$name" ;;
                mlflow) start_mlflow ;;
                serving) start_serving ;;
            esac
            started+=("$name")
        done
        unset AIRFLOW_STACK_ID
    fi
    echo "  waiting for health (up to ${TIMEOUT}s)"
    wait_healthy "$since" "${started[@]}"
    echo
    echo "Airflow UI:  $API_URL   (REST API: $API_URL/api/v2, docs: $API_URL/docs)"
    echo "  login:     $ADMIN_USER / $(admin_password)   (kept in $PASSWORDS)"
    if [[ "$WITH_MLFLOW" == 1 ]]; then echo "MLflow UI:   $MLFLOW_URL"; fi
    if [[ "$WITH_SERVING" == 1 ]]; then echo "Predictions: $SERVING_URL   (model store $(model_store))"; fi
    if [[ "$EXECUTOR" == celery ]]; then
        echo "Workers:     $WORKERS Celery workers, $(worker_name worker-1) ... $(worker_name "worker-$WORKERS"), queues $QUEUES; broker $(redacted "$BROKER_URL")"
    fi
    echo "Logs:        $RUN_DIR/*.log, task logs in $STACK_HOME/logs"
    echo "Stop with:   $0 down"
}

start_worker() {  # worker-<n>: a Celery worker in its own process group
    local node
    node="$(worker_name "$1")"
    # Workers on one machine share its hostname: each records its Celery node name as the hostname of the
    # task instances it runs (scripts/stack_hostname.py), so the UI and the API tell which worker ran what.
    # Task logs are files on this machine that the api-server reads itself: no log server (and port) per worker.
    AIRFLOW_STACK_WORKER_NAME="$node" AIRFLOW__CORE__HOSTNAME_CALLABLE=scripts.stack_hostname.hostname \
        launch "$1" "$VENV/bin/airflow" celery worker --celery-hostname "$node" --queues "$QUEUES" \
        --concurrency "$WORKER_CONCURRENCY" --skip-serve-logs
}

start_serving() {
    local store
    store="$(model_store)" || die "could not read deployment.local.model_store from include/config"
    mkdir -p "$store"
    SERVING_MODEL_STORE="$store" SERVING_BIND="$HOST:$SERVING_PORT" SERVING_WORKERS="${SERVING_WORKERS:-2}" \
        launch serving "$VENV/bin/gunicorn" -c "$REPO/serving/gunicorn.conf.py"
}

start_mlflow() {
    local store tracking artifacts
    store="$(mlflow_store)" || die "could not read the MLflow settings from include/config"
    tracking="$(sed -n 1p <<<"$store")"
    artifacts="$(sed -n 2p <<<"$store")"
    if [[ -n "$MLFLOW_BACKEND_URI" ]]; then
        tracking="$MLFLOW_BACKEND_URI"  # the server's own store; tasks reach it over HTTP
    fi
    case "$tracking" in
        http://* | https://* | databricks*)
            echo "  mlflow: the tracking server is $tracking; not starting a local UI"
            WITH_MLFLOW=0
            return
            ;;
        sqlite:///*) mkdir -p "$(dirname "${tracking#sqlite:///}")" ;;
    esac
    local args=(server --backend-store-uri "$tracking" --host "$HOST" --port "$MLFLOW_PORT" --workers 1)
    if [[ -n "$artifacts" ]]; then args+=(--default-artifact-root "$artifacts"); fi
    # The server's job runner (GenAI jobs, ~7 extra processes) is not needed for a tracking UI.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
        launch mlflow "$VENV/bin/mlflow" "${args[@]}"
}

stack_pids() {  # pids of live processes carrying this stack's marker
    local environ pid
    for environ in /proc/[0-9]*/environ; do
        pid="${environ#/proc/}"
        pid="${pid%/environ}"
        [[ "$pid" != "$$" ]] || continue
        if grep -qzxF "AIRFLOW_STACK_ID=$STACK_ID" "$environ" 2>/dev/null; then echo "$pid"; fi
    done
}

alive_groups() {  # the given process groups that still have a member
    local pid
    for pid in "$@"; do
        if kill -0 -- "-$pid" 2>/dev/null; then echo "$pid"; fi
    done
}

wait_groups() {  # seconds groups... : wait until the groups are gone or the time is up
    local deadline=$((SECONDS + $1))
    shift
    while [[ -n "$(alive_groups "$@")" ]] && ((SECONDS < deadline)); do sleep 0.5; done
}

descendants() {  # pid -> the pids of every process below it
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END { for (p in parent) for (q = parent[p]; q > 1; q = parent[q]) if (q == root) { print p; break } }'
}

stop_components() {  # components... : SIGTERM their groups, SIGTERM again after 10s, SIGKILL after STOP_TIMEOUT more
    local name pid groups=() left child
    for name in "$@"; do
        if pid="$(recorded_pid "$name")"; then
            echo "  stopping $name (process group $pid)"
            # Task processes run in process groups of their own (a setproctitle'd one may no longer show the
            # stack's marker in /proc/<pid>/environ): remember them, `down` ends any that outlive their parent.
            for child in $(descendants "$pid"); do
                if [[ "$(ps -o pgid= -p "$child" | tr -d ' ')" != "$pid" ]]; then
                    OWN_GROUPS+=("$child $(start_time "$child" || echo gone)")
                fi
            done
            kill -TERM -- "-$pid" 2>/dev/null || true
            groups+=("$pid")
            STOPPED=$((STOPPED + 1))
        fi
        rm -f "$RUN_DIR/$name.pid"
    done
    [[ ${#groups[@]} -gt 0 ]] || return 0
    wait_groups 10 "${groups[@]}"
    # A second SIGTERM tells the scheduler not to wait for running tasks to finish.
    left="$(alive_groups "${groups[@]}")"
    if [[ -n "$left" ]]; then
        for pid in $left; do kill -TERM -- "-$pid" 2>/dev/null || true; done
        # shellcheck disable=SC2086
        wait_groups "$STOP_TIMEOUT" $left
    fi
    for pid in $(alive_groups "${groups[@]}"); do
        echo "  process group $pid still alive: SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
}

live_recorded() {  # "pid start-time"... : the pids that still name the same process
    local entry pid started
    for entry in "$@"; do
        read -r pid started <<<"$entry"
        if [[ "$(start_time "$pid" 2>/dev/null)" == "$started" ]]; then echo "$pid"; fi
    done
}

cmd_down() {
    STOPPED=0
    OWN_GROUPS=()
    local file workers=()
    for file in "$RUN_DIR"/worker-*.pid; do  # whatever `up` started, whatever the settings are now
        if [[ -f "$file" ]]; then workers+=("$(basename "$file" .pid)"); fi
    done
    # Scheduler side first, then the Celery workers (a warm shutdown lets running tasks finish), while the
    # api-server still answers the running tasks' Execution API calls.
    stop_components scheduler triggerer dag-processor
    if ((${#workers[@]})); then stop_components "${workers[@]}"; fi
    stop_components api-server mlflow serving
    # Task processes run in process groups of their own; they still carry the stack's marker.
    local strays
    strays="$( (stack_pids; live_recorded "${OWN_GROUPS[@]}") | sort -u)"
    if [[ -n "$strays" ]]; then
        echo "  stopping leftover processes: ${strays//$'\n'/ }"
        # shellcheck disable=SC2086
        kill -TERM $strays 2>/dev/null || true
        sleep 3
        strays="$( (stack_pids; live_recorded "${OWN_GROUPS[@]}") | sort -u)"
        # shellcheck disable=SC2086
        if [[ -n "$strays" ]]; then kill -KILL $strays 2>/dev/null || true; fi
    fi
    if ((STOPPED == 0)); then echo "Stack in $STACK_HOME was not running."; else echo "Stack in $STACK_HOME stopped."; fi
}

cmd_status() {
    local name pid down=0
    for name in $(components); do
        if pid="$(recorded_pid "$name")"; then
            printf '  %-14s running (pid %s)\n' "$name" "$pid"
        else
            printf '  %-14s stopped\n' "$name"
            down=1
        fi
    done
    local health
    if health="$(curl -fsS --max-time 5 "$API_URL/api/v2/monitor/health" 2>/dev/null)"; then
        echo "  health ($API_URL/api/v2/monitor/health): $health"
    else
        echo "  api-server at $API_URL does not answer"
        down=1
    fi
    return $down
}

cmd_env() {  # shell lines that point the `airflow` CLI at this stack
    export_airflow_env >/dev/null
    local var
    echo "set -a; . '$SECRETS'; set +a"
    for var in AIRFLOW_HOME AIRFLOW__CORE__DAGS_FOLDER AIRFLOW__CORE__PLUGINS_FOLDER AIRFLOW__CORE__LOAD_EXAMPLES \
        AIRFLOW__CORE__EXECUTOR AIRFLOW__DATABASE__SQL_ALCHEMY_CONN AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC \
        AIRFLOW__CORE__AUTH_MANAGER \
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE \
        AIRFLOW__API__HOST AIRFLOW__API__PORT AIRFLOW__API__BASE_URL AIRFLOW__CORE__EXECUTION_API_SERVER_URL \
        AIRFLOW__LOGGING__BASE_LOG_FOLDER AIRFLOW__CORE__PARALLELISM AIRFLOW__CELERY__BROKER_URL \
        AIRFLOW__CELERY__RESULT_BACKEND MLOPS_TRACKING_URI PYTHONPATH PATH; do
        if [[ -v $var ]]; then printf 'export %s=%q\n' "$var" "${!var}"; fi
    done
}

lock() {  # one `up` or `down` at a time per stack home
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/.lock"
    flock -w 300 9 || die "another up/down holds $RUN_DIR/.lock"
}

case "${1:-}" in
    up) lock && cmd_up ;;
    down) lock && cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
