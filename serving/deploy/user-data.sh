#!/bin/bash
# cloud-init user-data: turns a fresh EC2 instance into a prediction server that the Airflow deploy task can
# update through SSM (docs/ec2.md). Supported: Amazon Linux 2023, Ubuntu 22.04 and 24.04.
#
#   1. Python: AL2023 -> python3.11 (dnf); Ubuntu 22.04 -> python3.11 (jammy's universe package, 3.11.0);
#      Ubuntu 24.04 -> python3.12, its system Python (noble has no python3.11 package; every pin in
#      serving/requirements.txt has cp312 wheels). Plus the AWS CLI when APP_SOURCE is on S3, git for a git one.
#   2. the unprivileged user mlops; /opt/mlops/{app,venv,models,bin}
#   3. the app code from APP_SOURCE into /opt/mlops/app (root-owned: the server cannot modify its own code)
#   4. serving/requirements.txt (exact pins, wheels only) into /opt/mlops/venv; `pip check`
#   5. /etc/mlops/serving.env (settings) and /etc/mlops/serving-secrets.env (API key from SSM, root-only)
#   6. prediction-server.service from the app code: installed, enabled, (re)started
#   7. the model s3://BUCKET/PREFIX/MODEL_NAME/CURRENT names, through the deploy task's own refresh command
#
# Idempotent: run it again at any time with `sudo /usr/local/sbin/mlops-setup` (a copy of this script) to pick up
# a new APP_SOURCE release, a rotated API key or changed settings. Fails on the first error (set -Eeuo pipefail)
# and says where. Log: /var/log/mlops-setup.log (cloud-init also keeps /var/log/cloud-init-output.log).
set -Eeuo pipefail

# ---- settings: edit these, or template them when you build the launch template -----------------------------
BUCKET="my-mlops-bucket"            # deployment.ec2.s3_bucket in include/config/config.yaml
PREFIX="models"                     # deployment.ec2.s3_prefix
MODEL_NAME="wine-quality"           # mlflow.registered_model_name
# The app code, one of:
#   s3://BUCKET/PREFIX/app/<release>.tar.gz  a tarball of the repository (default; needs only the instance role):
#                                            git archive --format=tar.gz -o <release>.tar.gz HEAD
#   https://.../<release>.tar.gz              the same tarball from a web server
#   https://github.com/<org>/<repo>.git       a git clone of APP_REF (public, or credentials outside this file)
#   /absolute/path                            a directory or tarball already on the instance (e.g. a baked AMI)
APP_SOURCE="s3://${BUCKET}/${PREFIX}/app/release.tar.gz"
APP_REF="main"                      # branch or tag, for a git APP_SOURCE only
SERVING_PORT=8000                   # must match the port in deployment.ec2.instance_url
SERVING_WORKERS=2                   # gunicorn workers; each holds the model in memory
# Name of an SSM Parameter Store SecureString holding the API key (never the key itself). Empty: no API key,
# anyone who reaches the port can predict.
API_KEY_PARAMETER="/mlops/prediction-server/api-key"
AWS_REGION=""                       # empty: this instance's region, from the instance metadata service

# ---- fixed layout (serving/deploy/prediction-server.service uses the same paths) ----------------------------
MLOPS_ROOT=/opt/mlops
APP_DIR=$MLOPS_ROOT/app
VENV=$MLOPS_ROOT/venv
MODEL_STORE=$MLOPS_ROOT/models
BIN_DIR=$MLOPS_ROOT/bin
ETC_DIR=/etc/mlops
SERVICE=prediction-server
SERVICE_USER=mlops
LOG_FILE=/var/log/mlops-setup.log
SELF=/usr/local/sbin/mlops-setup
CLI=/usr/local/bin/mlops-serving
OS_RELEASE=/etc/os-release

log() { printf '%s mlops-setup: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# "<python binary> <packages>" for a distribution (os-release ID and VERSION_ID); fails for any other.
python_for() {
    case "$1:$2" in
        amzn:2023) echo "python3.11 python3.11 python3.11-pip" ;;
        ubuntu:22.04) echo "python3.11 python3.11 python3.11-venv" ;;
        ubuntu:24.04) echo "python3.12 python3.12 python3.12-venv" ;;
        *) return 1 ;;
    esac
}

# How APP_SOURCE is fetched: s3, https (a tarball), git or local; fails for anything else.
source_kind() {
    case "$1" in
        s3://*) echo s3 ;;
        https://*.tar.gz | https://*.tgz) echo https ;;
        https://* | ssh://* | git@*) echo git ;;
        /*) echo local ;;
        *) return 1 ;;
    esac
}

# The deploy task's refresh command, line for line (refresh_commands in include/release/rollout.py):
# settings from serving.env, then `python -m serving refresh --source <source> --version <version>`. Through
# MLOPS_PYTHON (the wrapper below) it runs as mlops, exactly as it does when SSM sends it as root.
refresh_model() {
    # shellcheck disable=SC2016  # expanded by the inner bash, from serving.env, like the SSM command
    bash -c 'set -euo pipefail
set -a; if [ -f /etc/mlops/serving.env ]; then . /etc/mlops/serving.env; fi; set +a
cd "${MLOPS_APP_DIR:-/opt/mlops/app}"
"${MLOPS_PYTHON:-/opt/mlops/venv/bin/python}" -m serving refresh --source "$1" --version "$2"' mlops-refresh "$1" "$2"
}

instance_region() {
    local token
    token=$(curl -fsS --retry 5 --connect-timeout 2 -X PUT \
        -H "X-aws-ec2-metadata-token-ttl-seconds: 300" http://169.254.169.254/latest/api/token)
    curl -fsS --retry 5 --connect-timeout 2 -H "X-aws-ec2-metadata-token: $token" \
        http://169.254.169.254/latest/meta-data/placement/region
}

install_packages() {
    local distro=$1 kind=$2
    shift 2
    local packages=("$@")
    case "$distro" in
        amzn)
            packages+=(tar gzip util-linux)
            if [ "$kind" = git ]; then packages+=(git); fi
            if [ "$kind" = s3 ] && ! command -v aws >/dev/null; then packages+=(awscli-2); fi
            dnf install -y -q "${packages[@]}"
            ;;
        ubuntu)
            export DEBIAN_FRONTEND=noninteractive
            packages+=(ca-certificates curl tar gzip util-linux)
            if [ "$kind" = git ]; then packages+=(git); fi
            apt-get -o DPkg::Lock::Timeout=600 update -q
            apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${packages[@]}"
            if [ "$kind" = s3 ] && ! command -v aws >/dev/null && [ ! -x /snap/bin/aws ]; then
                snap wait system seed.loaded
                snap install aws-cli --classic   # Ubuntu's apt has no AWS CLI v2; this is AWS's own snap
            fi
            ;;
    esac
}

create_user_and_dirs() {
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$MLOPS_ROOT" --no-create-home \
            --shell /usr/sbin/nologin "$SERVICE_USER"
        log "created system user $SERVICE_USER"
    fi
    install -d -o root -g root -m 0755 "$MLOPS_ROOT" "$BIN_DIR" "$ETC_DIR"
    # The store belongs to mlops: refresh runs as mlops (see the MLOPS_PYTHON wrapper), the server reads it.
    install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0755 "$MODEL_STORE"
}

fetch_app() {
    local kind=$1 new="$APP_DIR.new" old="$APP_DIR.old" archive="$MLOPS_ROOT/.app-download.tar.gz" f
    rm -rf "$new" "$old" "$archive"
    install -d -m 0755 "$new"
    case "$kind" in
        s3) "$AWS_CLI" s3 cp --only-show-errors --region "$REGION" "$APP_SOURCE" "$archive" ;;
        https) curl -fsSL --retry 5 -o "$archive" "$APP_SOURCE" ;;
        git)
            git clone --quiet --depth 1 --branch "$APP_REF" "$APP_SOURCE" "$new"
            git -C "$new" rev-parse HEAD >"$new/.release"
            rm -rf "$new/.git"
            ;;
        local)
            if [ -d "$APP_SOURCE" ]; then cp -a "$APP_SOURCE/." "$new/"; else cp "$APP_SOURCE" "$archive"; fi
            ;;
    esac
    if [ -f "$archive" ]; then
        tar -xzf "$archive" -C "$new" --no-same-owner
        rm -f "$archive"
    fi
    for f in serving/gunicorn.conf.py serving/requirements.txt "serving/deploy/$SERVICE.service"; do
        [ -f "$new/$f" ] || die "$APP_SOURCE has no $f at its top level (make the tarball at the repository root: git archive --format=tar.gz -o release.tar.gz HEAD)"
    done
    printf '%s %s\n' "$APP_SOURCE" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$new/.release"
    chown -R root:root "$new"
    chmod -R u=rwX,go=rX "$new"
    if [ -d "$APP_DIR" ]; then mv "$APP_DIR" "$old"; fi
    mv "$new" "$APP_DIR"
    rm -rf "$old"
    log "app code from $APP_SOURCE in $APP_DIR"
}

# The venv is rebuilt from scratch when the interpreter or serving/requirements.txt changed, else left alone.
setup_venv() {
    local python=$1 want have="" stamp="$VENV/.requirements.sha256" digest
    want=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    digest="$want $(sha256sum "$APP_DIR/serving/requirements.txt" | cut -d' ' -f1)"
    if [ -f "$stamp" ]; then have=$(cat "$stamp"); fi
    if [ "$have" = "$digest" ] && [ -x "$VENV/bin/python" ]; then
        log "venv $VENV is up to date (Python $want)"
    else
        if systemctl is-active --quiet "$SERVICE"; then systemctl stop "$SERVICE"; fi
        rm -rf "$VENV"
        "$python" -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            -r "$APP_DIR/serving/requirements.txt"
        echo "$digest" >"$stamp"
        log "venv $VENV built with Python $want from serving/requirements.txt"
    fi
    "$VENV/bin/pip" check --disable-pip-version-check
    "$VENV/bin/python" -m compileall -q "$APP_DIR/serving" >/dev/null
}

# Written whole, then renamed: a reader sees the old file or the new one.
write_file() {
    local path=$1 mode=$2 tmp
    tmp=$(mktemp "$(dirname "$path")/.$(basename "$path").XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
}

write_config() {
    write_file "$ETC_DIR/serving.env" 0644 <<EOF
# Written by the mlops setup script (/usr/local/sbin/mlops-setup, from serving/deploy/user-data.sh); re-running
# it rewrites this file: change the settings at the top of the script instead. Plain KEY=value lines: systemd
# reads them (EnvironmentFile=) and the deploy task's refresh command sources them. No secrets here.
SERVING_BIND=0.0.0.0:${SERVING_PORT}
SERVING_WORKERS=${SERVING_WORKERS}
SERVING_MODEL_STORE=${MODEL_STORE}
SERVING_URL=http://127.0.0.1:${SERVING_PORT}
MLOPS_APP_DIR=${APP_DIR}
MLOPS_PYTHON=${BIN_DIR}/python
AWS_REGION=${REGION}
AWS_DEFAULT_REGION=${REGION}
EOF
    # refresh, activate and rollback run as the store's owner even when called as root (SSM runs commands as
    # root): bundles and the CURRENT pointer are then owned by mlops and always readable by the server.
    write_file "$BIN_DIR/python" 0755 <<EOF
#!/bin/sh
# The prediction server's Python, as user ${SERVICE_USER} when called as root. Written by the mlops setup script.
if [ "\$(id -u)" = 0 ]; then
    exec /usr/sbin/runuser -u "${SERVICE_USER}" -- "${VENV}/bin/python" "\$@"
fi
exec "${VENV}/bin/python" "\$@"
EOF
    write_file "$CLI" 0755 <<EOF
#!/bin/bash
# The model store commands with the server's settings, as the store's owner. Written by the mlops setup script.
#   sudo mlops-serving status | rollback | activate <version> | refresh --source s3://... --version <version>
set -euo pipefail
set -a; . ${ETC_DIR}/serving.env; set +a
cd "\$MLOPS_APP_DIR"
exec "\$MLOPS_PYTHON" -m serving "\$@"
EOF
    if [ -n "$API_KEY_PARAMETER" ]; then
        (cd "$APP_DIR" && "$VENV/bin/python" -m serving.deploy.bootstrap api-key-env \
            --parameter "$API_KEY_PARAMETER" --output "$ETC_DIR/serving-secrets.env")
        chown root:root "$ETC_DIR/serving-secrets.env"
        chmod 0600 "$ETC_DIR/serving-secrets.env"
    else
        rm -f "$ETC_DIR/serving-secrets.env"
        log "WARNING: API_KEY_PARAMETER is empty: /predict and /invocations need no API key"
    fi
}

wait_for() {
    local url=$1 seconds=$2 deadline
    deadline=$((SECONDS + seconds))
    until curl -fsS -o /dev/null --max-time 3 "$url"; do
        if [ "$SECONDS" -ge "$deadline" ]; then return 1; fi
        sleep 1
    done
}

start_service() {
    install -m 0644 -o root -g root "$APP_DIR/serving/deploy/$SERVICE.service" "/etc/systemd/system/$SERVICE.service"
    systemctl daemon-reload
    systemctl enable --quiet "$SERVICE"
    systemctl restart "$SERVICE"   # new code, venv and settings; Type=notify: returns once gunicorn listens
    wait_for "http://127.0.0.1:${SERVING_PORT}/health" 120 ||
        die "$SERVICE does not answer on port $SERVING_PORT (journalctl -u $SERVICE)"
    log "$SERVICE is up on port $SERVING_PORT"
}

# The server is already up (without a model, /ready 503): the refresh then confirms the switch on it
# (SERVING_URL), exactly as during a deploy.
fetch_model() {
    local source="s3://${BUCKET}/${PREFIX}/${MODEL_NAME}" version rc=0
    version=$(cd "$APP_DIR" && "$VENV/bin/python" -m serving.deploy.bootstrap current-version "$source") || rc=$?
    if [ "$rc" -eq 3 ]; then
        log "WARNING: no $source/CURRENT yet (no deploy has run): serving no model, /ready answers 503 until the first deploy"
        return 0
    fi
    [ "$rc" -eq 0 ] || die "cannot read $source/CURRENT (exit $rc)"
    log "fetching $MODEL_NAME version $version from $source"
    refresh_model "$source" "$version"
    wait_for "http://127.0.0.1:${SERVING_PORT}/ready" 120 ||
        die "$SERVICE is not ready with version $version (journalctl -u $SERVICE)"
    log "serving $MODEL_NAME version $version"
}

main() {
    [ "$(id -u)" -eq 0 ] || die "run as root (cloud-init does)"
    touch "$LOG_FILE" && chmod 0640 "$LOG_FILE"
    exec > >(tee -a "$LOG_FILE") 2>&1
    trap 'log "FAILED (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
    exec 9>/run/mlops-setup.lock
    flock -n 9 || die "another mlops-setup is running"
    log "start (BUCKET=$BUCKET PREFIX=$PREFIX MODEL_NAME=$MODEL_NAME APP_SOURCE=$APP_SOURCE)"

    PREFIX=${PREFIX#/}
    PREFIX=${PREFIX%/}
    local distro version spec python kind
    [ -r "$OS_RELEASE" ] || die "no $OS_RELEASE"
    # shellcheck source=/dev/null
    distro=$(. "$OS_RELEASE" && echo "${ID:-}")
    # shellcheck source=/dev/null
    version=$(. "$OS_RELEASE" && echo "${VERSION_ID:-}")
    spec=$(python_for "$distro" "$version") ||
        die "unsupported system $distro $version: Amazon Linux 2023, Ubuntu 22.04 and 24.04 are supported"
    kind=$(source_kind "$APP_SOURCE") ||
        die "APP_SOURCE must be s3://..., https://....tar.gz, a git URL or an absolute path, got '$APP_SOURCE'"
    read -r python _ <<<"$spec"
    # shellcheck disable=SC2086  # the package list splits on purpose
    install_packages "$distro" "$kind" ${spec#* }
    python=$(command -v "$python") || die "$python is not installed"
    AWS_CLI=$(command -v aws || echo /snap/bin/aws)
    if [ -n "$AWS_REGION" ]; then REGION=$AWS_REGION; else REGION=$(instance_region) || die "no region from IMDS"; fi
    export AWS_REGION=$REGION AWS_DEFAULT_REGION=$REGION

    create_user_and_dirs
    fetch_app "$kind"
    setup_venv "$python"
    write_config
    start_service
    fetch_model
    if [ -f "$0" ] && [ "$(readlink -f "$0")" != "$SELF" ]; then install -m 0700 "$0" "$SELF"; fi
    log "done: $("$CLI" status | tail -n 1)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
