#!/bin/bash
# cloud-init user-data: turns a fresh EC2 instance into a prediction server that the Airflow deploy task can
# update through SSM (docs/ec2.md). Supported: Amazon Linux 2023, Ubuntu 22.04 and 24.04.
#
#   0. the settings are checked first: a release pinned by APP_SHA256 (or a full git commit in APP_REF), the
#      bundle-signing public key, ports and TLS files; anything wrong stops the script before it installs anything
#   1. Python: AL2023 -> python3.11 (dnf); Ubuntu 22.04 -> python3.11 (jammy's universe package, 3.11.0);
#      Ubuntu 24.04 -> python3.12, its system Python (noble has no python3.11 package; every pin in
#      serving/requirements.txt has cp312 wheels). nginx. The AWS CLI when APP_SOURCE is on S3, git for a git one.
#   2. the unprivileged user mlops; /opt/mlops/{app,venv,models,bin}
#   3. the app code from APP_SOURCE into /opt/mlops/app (root-owned: the server cannot modify its own code), only
#      once its sha256 is APP_SHA256 (a tarball) or its commit is APP_REF (git)
#   4. serving/requirements.txt (exact pins, wheels only, every wheel's sha256: --require-hashes) into
#      /opt/mlops/venv; `pip check`
#   5. /etc/mlops/serving.env (settings), /etc/mlops/bundle-signing.pub (SIGNING_PUBLIC_KEY) and
#      /etc/mlops/serving-secrets.env (API key from SSM, root-only)
#   6. prediction-server.service from the app code: gunicorn on 127.0.0.1:SERVING_BACKEND_PORT; installed,
#      enabled, (re)started
#   7. nginx on SERVING_PORT in front of it (serving/deploy/nginx-prediction-server.conf: slow clients dropped,
#      whole requests and responses buffered, optional TLS)
#   8. the model s3://BUCKET/PREFIX/MODEL_NAME/CURRENT names, through the deploy task's own refresh command
#   9. prediction capture (CAPTURE_SAMPLE above 0): the server writes /var/lib/mlops-capture, and
#      capture-ship.timer ships the closed files to s3://BUCKET/PREFIX/capture/MODEL_NAME/<date>/ every 5 minutes
#
# Idempotent: run it again at any time with `sudo /usr/local/sbin/mlops-setup` (a copy of this script) to pick up
# a new APP_SOURCE release, a rotated API key or changed settings. Fails on the first error (set -Eeuo pipefail)
# and says where. Log: /var/log/mlops-setup.log (cloud-init also keeps /var/log/cloud-init-output.log).
set -Eeuo pipefail

# ---- settings: edit these, or template them when you build the launch template -----------------------------
BUCKET="my-mlops-bucket"            # deployment.ec2.s3_bucket in include/config/config.yaml
PREFIX="models"                     # deployment.ec2.s3_prefix (bundles: s3://BUCKET/PREFIX/MODEL_NAME/...)
MODEL_NAME="wine-quality"           # mlflow.registered_model_name
# The app code: a release this instance runs as root, so it is pinned here and checked before anything of it is
# extracted. One of:
#   s3://BUCKET/releases/app/<release>.tar.gz  a tarball of the repository (default; only the release publisher
#                                              may write there, serving/deploy/release-publisher-policy.json):
#                                              git archive --format=tar.gz -o app-<commit>.tar.gz <commit>
#   https://.../<release>.tar.gz               the same tarball from a web server
#   https://github.com/<org>/<repo>.git        a git checkout of the commit APP_REF (public, or credentials
#                                              outside this file)
#   /absolute/path                             a tarball already on the instance (pinned by APP_SHA256 too), or a
#                                              directory (a baked AMI: the image is the pin)
APP_SOURCE="s3://${BUCKET}/releases/app/release.tar.gz"
APP_SHA256=""                       # a tarball's sha256 (`sha256sum app-<commit>.tar.gz`); required for one
APP_REF=""                          # a git APP_SOURCE's full 40-hex commit; never a branch or tag, which can move
SERVING_PORT=8000                   # nginx, on every address; must match the port in deployment.ec2.instance_url
SERVING_BACKEND_PORT=8001           # gunicorn, on 127.0.0.1 only (nginx and the refresh command reach it there)
SERVING_WORKERS=2                   # gunicorn workers; each holds the model in memory
# TLS for the API key on the wire, either at a load balancer (an ALB with an ACM certificate forwarding to
# SERVING_PORT: leave these empty) or here at nginx, with a certificate already on the instance (baked into the
# AMI, or placed there before this script runs; docs/ec2.md):
TLS_CERTIFICATE=""                  # PEM certificate chain, e.g. /etc/mlops/tls/server.crt; empty: plain HTTP
TLS_CERTIFICATE_KEY=""              # its private key, e.g. /etc/mlops/tls/server.key (root-only)
TLS_REDIRECT_PORT=80                # with TLS: plain HTTP on this port answers 301 to https; empty: no redirect
TRUSTED_PROXY_CIDR=""               # the load balancer's network (e.g. 10.0.0.0/16): clients from X-Forwarded-For
# Name of an SSM Parameter Store SecureString holding the API key (never the key itself). Empty: no API key,
# anyone who reaches the port can predict.
API_KEY_PARAMETER="/mlops/prediction-server/api-key"
AWS_REGION=""                       # empty: this instance's region, from the instance metadata service
# The public key(s) the server verifies bundle signatures with, PEM (several blocks while a key is rotated): the
# pipeline's signing.public_key file, or a KMS key's, from
#   aws kms get-public-key --key-id <key> --query PublicKey --output text | base64 -d |
#       openssl pkey -pubin -inform DER -outform PEM
# Paste it between the quotes, line breaks and all. Empty: the script refuses to set the instance up, since the
# server loads only bundles signed by a key it trusts.
SIGNING_PUBLIC_KEY=""
# Prediction capture for the monitor (docs/serving.md): the fraction of prediction requests recorded, from 0 (off)
# to 1 (all). Files go to s3://BUCKET/PREFIX/capture/MODEL_NAME/<date>/ (the instance policy allows that prefix).
CAPTURE_SAMPLE="1.0"

# ---- fixed layout (serving/deploy/prediction-server.service uses the same paths) ----------------------------
MLOPS_ROOT=/opt/mlops
APP_DIR=$MLOPS_ROOT/app
VENV=$MLOPS_ROOT/venv
MODEL_STORE=$MLOPS_ROOT/models
BIN_DIR=$MLOPS_ROOT/bin
ETC_DIR=/etc/mlops
SIGNING_KEY_FILE=$ETC_DIR/bundle-signing.pub
NGINX_TEMPLATE=serving/deploy/nginx-prediction-server.conf  # in the app code
NGINX_SITE=/etc/nginx/conf.d/prediction-server.conf
RELEASE_PREFIX=releases/app         # s3://BUCKET/RELEASE_PREFIX/: the release publisher's, read-only to instances
SERVICE=prediction-server
SHIP_SERVICE=capture-ship           # capture-ship.service and .timer, from serving/deploy/
CAPTURE_DIR=/var/lib/mlops-capture  # the units' StateDirectory=mlops-capture
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

# A release is pinned before anything of it is fetched or extracted: a tarball by APP_SHA256, a git source by a
# full commit id. A directory on the instance's own disk (a baked AMI) is the image's, and needs no pin.
check_app_pin() {
    local kind=$1
    case "$kind" in
        git)
            [[ "$APP_REF" =~ ^[0-9a-f]{40}$ ]] ||
                die "APP_REF must be the full 40-hex commit id of the release for a git APP_SOURCE, not a branch or tag (those move): got '$APP_REF'"
            ;;
        local)
            if [ -d "$APP_SOURCE" ]; then
                [ -z "$APP_SHA256" ] || die "APP_SHA256 pins a tarball, but APP_SOURCE $APP_SOURCE is a directory"
            else
                check_sha256_setting
            fi
            ;;
        *) check_sha256_setting ;;
    esac
    if [ "$kind" = s3 ]; then
        case "$APP_SOURCE" in
            "s3://$BUCKET/$PREFIX/"*)
                die "APP_SOURCE $APP_SOURCE is under the bundle prefix s3://$BUCKET/$PREFIX/, where the deploy role writes: publish releases under s3://$BUCKET/$RELEASE_PREFIX/ (docs/ec2.md)"
                ;;
        esac
    fi
}

check_sha256_setting() {
    [[ "$APP_SHA256" =~ ^[0-9a-f]{64}$ ]] ||
        die "APP_SHA256 must be the sha256 of $APP_SOURCE (64 lowercase hex digits, from sha256sum), got '$APP_SHA256': refusing to install code that is not pinned"
}

# Before extracting: the tarball is exactly the release the instance configuration names, or nothing happens.
verify_release() {
    local archive=$1 actual
    actual=$(sha256sum "$archive" | cut -d' ' -f1)
    if [ "$actual" != "$APP_SHA256" ]; then
        rm -f "$archive"
        die "APP_SHA256 mismatch: $APP_SOURCE has sha256 $actual but the instance configuration pins $APP_SHA256; refusing it, nothing extracted or installed"
    fi
    log "release $APP_SOURCE matches APP_SHA256 $APP_SHA256"
}

# SIGNING_PUBLIC_KEY is one or more PEM public keys; its lines without surrounding blanks on stdout.
signing_key_pem() {
    local line begin=0 end=0
    [ -n "${SIGNING_PUBLIC_KEY//[[:space:]]/}" ] ||
        die "SIGNING_PUBLIC_KEY is empty: set it to the PEM public key bundles are signed with (docs/ec2.md); the server refuses every bundle it cannot verify, so this instance could serve nothing"
    case "$SIGNING_PUBLIC_KEY" in
        *PRIVATE*) die "SIGNING_PUBLIC_KEY holds a private key: give instances the public key only, never the signing key" ;;
    esac
    while IFS= read -r line; do
        line=${line//[[:space:]]/}
        case "$line" in
            "") continue ;;
            -----BEGINPUBLICKEY-----) begin=$((begin + 1)); line="-----BEGIN PUBLIC KEY-----" ;;
            -----ENDPUBLICKEY-----) end=$((end + 1)); line="-----END PUBLIC KEY-----" ;;
            *) [[ "$line" =~ ^[A-Za-z0-9+/]+=*$ ]] || die "SIGNING_PUBLIC_KEY is not PEM: '$line'" ;;
        esac
        printf '%s
' "$line"
    done <<<"$SIGNING_PUBLIC_KEY"
    if [ "$begin" -lt 1 ] || [ "$begin" -ne "$end" ]; then
        die "SIGNING_PUBLIC_KEY is not a PEM public key (-----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----)"
    fi
}

check_port() {
    if ! [[ "$2" =~ ^[0-9]{1,5}$ ]] || [ "$2" -lt 1 ] || [ "$2" -gt 65535 ]; then
        die "$1 must be a TCP port, got '$2'"
    fi
}

# Everything that can be checked before installing anything; dies on the first wrong setting.
check_settings() {
    local kind=$1
    check_app_pin "$kind"
    signing_key_pem >/dev/null
    check_port SERVING_PORT "$SERVING_PORT"
    check_port SERVING_BACKEND_PORT "$SERVING_BACKEND_PORT"
    [ "$SERVING_PORT" != "$SERVING_BACKEND_PORT" ] ||
        die "SERVING_PORT (nginx) and SERVING_BACKEND_PORT (gunicorn) must differ, both are $SERVING_PORT"
    if [ -n "$TLS_CERTIFICATE$TLS_CERTIFICATE_KEY" ]; then
        local file
        for file in "$TLS_CERTIFICATE" "$TLS_CERTIFICATE_KEY"; do
            [[ "$file" =~ ^/[A-Za-z0-9._/-]+$ ]] ||
                die "TLS_CERTIFICATE and TLS_CERTIFICATE_KEY must both be absolute paths (letters, digits, . _ - /), got '$file'"
            [ -r "$file" ] || die "TLS file $file does not exist: put the certificate and key on the instance first"
        done
        if [ -n "$TLS_REDIRECT_PORT" ]; then
            [[ "$TLS_REDIRECT_PORT" =~ ^([0-9.]+:)?[0-9]+$ ]] || die "TLS_REDIRECT_PORT must be a port, got '$TLS_REDIRECT_PORT'"
        fi
    fi
    [[ "$CAPTURE_SAMPLE" =~ ^(0|1|0?\.[0-9]+|0\.[0-9]*|1\.0*)$ ]] ||
        die "CAPTURE_SAMPLE must be a fraction from 0 (capture off) to 1 (every request), got '$CAPTURE_SAMPLE'"
    if [ -n "$TRUSTED_PROXY_CIDR" ]; then
        [[ "$TRUSTED_PROXY_CIDR" =~ ^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$ ]] ||
            die "TRUSTED_PROXY_CIDR must be an address or CIDR block, got '$TRUSTED_PROXY_CIDR'"
    fi
}

# serving/deploy/nginx-prediction-server.conf with its @NAMES@ filled in; lines marked #TLS# are kept with TLS,
# #PLAIN# without, #REDIRECT# with TLS and a TLS_REDIRECT_PORT, #REAL_IP# with a TRUSTED_PROXY_CIDR.
#   render_nginx_site <template> <output> <listen: port or address:port> <backend address:port>
render_nginx_site() {
    local template=$1 output=$2 listen=$3 backend=$4 line keep tls=0 suffix text=""
    if [ -n "$TLS_CERTIFICATE" ]; then tls=1; fi
    suffix=":${listen##*:}"
    if [ "$suffix" = ":443" ]; then suffix=""; fi
    while IFS= read -r line || [ -n "$line" ]; do
        if [[ "$line" =~ ^([[:space:]]*)#(TLS|PLAIN|REDIRECT|REAL_IP)#\ (.*)$ ]]; then
            case "${BASH_REMATCH[2]}" in
                TLS) keep=$tls ;;
                PLAIN) keep=$((1 - tls)) ;;
                REDIRECT) if [ "$tls" = 1 ] && [ -n "$TLS_REDIRECT_PORT" ]; then keep=1; else keep=0; fi ;;
                REAL_IP) if [ -n "$TRUSTED_PROXY_CIDR" ]; then keep=1; else keep=0; fi ;;
            esac
            [ "$keep" = 1 ] || continue
            line="${BASH_REMATCH[1]}${BASH_REMATCH[3]}"
        fi
        line=${line//@LISTEN@/"$listen"}
        line=${line//@BACKEND@/"$backend"}
        line=${line//@TLS_CERTIFICATE@/"$TLS_CERTIFICATE"}
        line=${line//@TLS_CERTIFICATE_KEY@/"$TLS_CERTIFICATE_KEY"}
        line=${line//@REDIRECT_LISTEN@/"$TLS_REDIRECT_PORT"}
        line=${line//@HTTPS_PORT_SUFFIX@/"$suffix"}
        line=${line//@TRUSTED_PROXY_CIDR@/"$TRUSTED_PROXY_CIDR"}
        if [[ "$line" =~ ^[[:space:]]*[^#[:space:]].*@[A-Z_]+@ ]]; then die "$template: no value for ${line}"; fi
        text+="$line"$'\n'
    done <"$template"
    printf '%s' "$text" | write_file "$output" 0644
}

# The deploy task's refresh command, flag for flag (the mlops-serving SSM document's script,
# ssm-document-mlops-serving.json): settings from serving.env, then `python -m serving refresh --source <source>
# --version <version> [--manifest-sha256 <digest>] --pointer <token>`. At boot the signed pointer of the CURRENT
# object (verified by bootstrap.py with SIGNING_PUBLIC_KEY) names the bundle's manifest digest; the bundle's
# signature is checked too. Through MLOPS_PYTHON (the wrapper below) it runs as mlops, exactly as it does when SSM
# sends it as root.
#   refresh_model <source> <version> [<manifest sha256>] [<pointer token>]
refresh_model() {
    local digest=()
    if [ -n "${3:-}" ]; then digest=(--manifest-sha256 "$3"); fi
    if [ -n "${4:-}" ]; then digest+=("--pointer=$4"); fi  # as the mlops-serving document passes it
    # shellcheck disable=SC2016  # expanded by the inner bash, from serving.env, like the SSM command
    bash -c 'set -euo pipefail
set -a; if [ -f /etc/mlops/serving.env ]; then . /etc/mlops/serving.env; fi; set +a
cd "${MLOPS_APP_DIR:-/opt/mlops/app}"
"${MLOPS_PYTHON:-/opt/mlops/venv/bin/python}" -m serving refresh --source "$1" --version "$2" "${@:3}"' \
        mlops-refresh "$1" "$2" "${digest[@]}"
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
            packages+=(tar gzip util-linux nginx)
            if [ "$kind" = git ]; then packages+=(git); fi
            if [ "$kind" = s3 ] && ! command -v aws >/dev/null; then packages+=(awscli-2); fi
            dnf install -y -q "${packages[@]}"
            ;;
        ubuntu)
            export DEBIAN_FRONTEND=noninteractive
            packages+=(ca-certificates curl tar gzip util-linux nginx)
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

# The release into APP_DIR.new, checked against its pin, then swapped in; a refused release leaves APP_DIR as it was.
fetch_app() {
    local kind=$1 new="$APP_DIR.new" old="$APP_DIR.old" archive="$MLOPS_ROOT/.app-download.tar.gz" f pin
    check_app_pin "$kind"
    rm -rf "$new" "$old" "$archive"
    case "$kind" in
        s3) "$AWS_CLI" s3 cp --only-show-errors --region "$REGION" "$APP_SOURCE" "$archive" ;;
        https) curl -fsSL --proto '=https' --retry 5 -o "$archive" "$APP_SOURCE" ;;
        local) if [ -f "$APP_SOURCE" ]; then cp "$APP_SOURCE" "$archive"; fi ;;
    esac
    if [ -f "$archive" ]; then
        verify_release "$archive"
        pin="sha256:$APP_SHA256"
    fi
    install -d -m 0755 "$new"
    case "$kind" in
        git)
            # Exactly the pinned commit: fetched by its id (no branch or tag is consulted), then checked.
            git -C "$new" init --quiet
            if ! GIT_TERMINAL_PROMPT=0 git -C "$new" fetch --quiet --depth 1 "$APP_SOURCE" "$APP_REF"; then
                GIT_TERMINAL_PROMPT=0 git -C "$new" fetch --quiet "$APP_SOURCE" '+refs/*:refs/remote-refs/*'
            fi
            git -C "$new" -c advice.detachedHead=false checkout --quiet --detach "$APP_REF^{commit}"
            if [ "$(git -C "$new" rev-parse HEAD)" != "$APP_REF" ]; then
                rm -rf "$new"
                die "$APP_SOURCE: the checkout is not commit $APP_REF"
            fi
            rm -rf "$new/.git"
            pin="commit:$APP_REF"
            ;;
        local)
            if [ -d "$APP_SOURCE" ]; then
                cp -a "$APP_SOURCE/." "$new/"
                pin="directory"
            fi
            ;;
    esac
    if [ -f "$archive" ]; then
        tar -xzf "$archive" -C "$new" --no-same-owner
        rm -f "$archive"
    fi
    for f in serving/gunicorn.conf.py serving/requirements.txt "serving/deploy/$SERVICE.service" \
        "serving/deploy/$SHIP_SERVICE.service" "serving/deploy/$SHIP_SERVICE.timer" "$NGINX_TEMPLATE"; do
        [ -f "$new/$f" ] || die "$APP_SOURCE has no $f at its top level (make the tarball at the repository root: git archive --format=tar.gz -o release.tar.gz HEAD)"
    done
    printf '%s %s %s\n' "$APP_SOURCE" "$pin" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$new/.release"
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
        # Every wheel must match a sha256 in the file (--require-hashes): an index or mirror serving anything else,
        # or a pin without hashes, fails the install.
        "$VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes --no-deps \
            --only-binary=:all: -r "$APP_DIR/serving/requirements.txt"
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
    # The key bundles must be signed with: public, readable by the server (user mlops), written by root only.
    signing_key_pem >/dev/null
    signing_key_pem | write_file "$SIGNING_KEY_FILE" 0644
    write_file "$ETC_DIR/serving.env" 0644 <<EOF
# Written by the mlops setup script (/usr/local/sbin/mlops-setup, from serving/deploy/user-data.sh); re-running
# it rewrites this file: change the settings at the top of the script instead. Plain KEY=value lines: systemd
# reads them (EnvironmentFile=) and the deploy task's refresh command sources them. No secrets here.
# gunicorn listens on the loopback only; nginx faces the network on port ${SERVING_PORT}.
SERVING_BIND=127.0.0.1:${SERVING_BACKEND_PORT}
SERVING_WORKERS=${SERVING_WORKERS}
SERVING_MODEL_STORE=${MODEL_STORE}
SERVING_PUBLIC_KEY=${SIGNING_KEY_FILE}
SERVING_MODEL_NAME=${MODEL_NAME}
SERVING_URL=http://127.0.0.1:${SERVING_BACKEND_PORT}
MLOPS_APP_DIR=${APP_DIR}
MLOPS_PYTHON=${BIN_DIR}/python
AWS_REGION=${REGION}
AWS_DEFAULT_REGION=${REGION}
$(capture_settings)
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
#   sudo mlops-serving status | rollback --pointer T | activate <version> --pointer T | refresh ... --pointer T
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

capture_on() {
    [[ ! "$CAPTURE_SAMPLE" =~ ^0?\.?0*$ ]]
}

# serving.env lines for prediction capture (none when CAPTURE_SAMPLE is 0: capture off).
capture_settings() {
    if capture_on; then
        printf '%s\n' "SERVING_CAPTURE_DIR=${CAPTURE_DIR}" "SERVING_CAPTURE_SAMPLE=${CAPTURE_SAMPLE}" \
            "MLOPS_CAPTURE_SHIP_TO=s3://${BUCKET}/${PREFIX}/capture"
    fi
}

wait_for() {
    local url=$1 seconds=$2 deadline insecure=()
    deadline=$((SECONDS + seconds))
    # Liveness on the loopback: with TLS at nginx, the certificate names the service, not 127.0.0.1.
    if [[ "$url" == https://* ]]; then insecure=(--insecure); fi
    until curl -fsS -o /dev/null --max-time 3 "${insecure[@]}" "$url"; do
        if [ "$SECONDS" -ge "$deadline" ]; then return 1; fi
        sleep 1
    done
}

start_service() {
    local unit
    for unit in "$SERVICE.service" "$SHIP_SERVICE.service" "$SHIP_SERVICE.timer"; do
        install -m 0644 -o root -g root "$APP_DIR/serving/deploy/$unit" "/etc/systemd/system/$unit"
    done
    systemctl daemon-reload
    if capture_on; then
        systemctl enable --quiet --now "$SHIP_SERVICE.timer"
    else
        systemctl disable --quiet --now "$SHIP_SERVICE.timer"
    fi
    systemctl enable --quiet "$SERVICE"
    systemctl restart "$SERVICE"   # new code, venv and settings; Type=notify: returns once gunicorn listens
    wait_for "http://127.0.0.1:${SERVING_BACKEND_PORT}/health" 120 ||
        die "$SERVICE does not answer on 127.0.0.1:$SERVING_BACKEND_PORT (journalctl -u $SERVICE)"
    log "$SERVICE is up on 127.0.0.1:$SERVING_BACKEND_PORT"
}

# nginx faces the network on SERVING_PORT and proxies to gunicorn on the loopback (after start_service, so
# that a gunicorn of an earlier setup no longer holds SERVING_PORT).
configure_nginx() {
    local scheme=http
    if [ -n "$TLS_CERTIFICATE" ]; then scheme=https; fi
    render_nginx_site "$APP_DIR/$NGINX_TEMPLATE" "$NGINX_SITE" "$SERVING_PORT" "127.0.0.1:$SERVING_BACKEND_PORT"
    rm -f /etc/nginx/sites-enabled/default   # Debian/Ubuntu's welcome page (port 80, default_server)
    nginx -t -q || die "nginx refuses its configuration (nginx -t; $NGINX_SITE)"
    systemctl enable --quiet nginx
    systemctl reload-or-restart nginx
    wait_for "$scheme://127.0.0.1:${SERVING_PORT}/health" 60 ||
        die "nginx does not answer on port $SERVING_PORT (journalctl -u nginx, /var/log/nginx/error.log)"
    log "nginx is up on port $SERVING_PORT ($scheme) in front of 127.0.0.1:$SERVING_BACKEND_PORT"
}

# The server is already up (without a model, /ready 503): the refresh then confirms the switch on it
# (SERVING_URL), exactly as during a deploy.
fetch_model() {
    local source="s3://${BUCKET}/${PREFIX}/${MODEL_NAME}" version token found rc=0
    found=$(cd "$APP_DIR" && "$VENV/bin/python" -m serving.deploy.bootstrap current-pointer "$source" \
        --public-key "$SIGNING_KEY_FILE" --model "$MODEL_NAME") || rc=$?
    if [ "$rc" -eq 3 ]; then
        log "WARNING: no $source/CURRENT yet (no deploy has run): serving no model, /ready answers 503 until the first deploy"
        return 0
    fi
    [ "$rc" -eq 0 ] || die "cannot read $source/CURRENT, or it is not a pointer signed for $MODEL_NAME (exit $rc)"
    read -r version token <<<"$found"
    log "fetching $MODEL_NAME version $version from $source"
    refresh_model "$source" "$version" "" "$token"
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
    log "start (BUCKET=$BUCKET PREFIX=$PREFIX MODEL_NAME=$MODEL_NAME APP_SOURCE=$APP_SOURCE APP_SHA256=$APP_SHA256 APP_REF=$APP_REF)"

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
    check_settings "$kind"
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
    configure_nginx
    fetch_model
    if [ -f "$0" ] && [ "$(readlink -f "$0")" != "$SELF" ]; then install -m 0700 "$0" "$SELF"; fi
    log "done: $("$CLI" status | tail -n 1)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
