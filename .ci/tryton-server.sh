#!/usr/bin/env bash
# A real Tryton server (trytond + sale_opportunity, SQLite) on 127.0.0.1 for the connector tests.
#
#   .ci/tryton-server.sh start [ENV_FILE]   install (pinned) into the current venv, initialise a database in a
#                                           temp dir, start trytond on a free loopback port, seed opportunities;
#                                           writes ENV_FILE (default: <temp dir>/tryton.env) with
#                                           TRYTON_URL, TRYTON_DB, TRYTON_USER, TRYTON_PASSWORD, TRYTON_PID,
#                                           TRYTON_WORK_DIR as `export` lines and prints its path on stdout.
#   .ci/tryton-server.sh stop ENV_FILE      kill the server by its PID and remove its temp dir.
#
# Progress goes to stderr; stdout carries only the env file's path, so `ENV=$(.ci/tryton-server.sh start)`.
# Environment knobs:
#   TRYTON_PYTHON     interpreter of the venv to use (default: the active venv's python, else python3)
#   TRYTON_CACHE_DIR  where the initialised (not yet seeded) database is kept between runs
#                     (default: ${XDG_CACHE_HOME:-~/.cache}/deal-cockpit/tryton); TRYTON_NO_CACHE=1 disables it
#   TRYTON_START_TIMEOUT  seconds to wait for the first answer (default 90)
# See docs/tryton.md for the pitfalls this script works around (crm-apis.md section 5.3).
set -euo pipefail

TRYTOND_VERSION=8.2.1
SALE_OPPORTUNITY_VERSION=8.2.0
DB_NAME=crm
DB_USER=admin

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

say() { printf 'tryton-server: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

python_bin() {
    if [ -n "${TRYTON_PYTHON:-}" ]; then
        echo "$TRYTON_PYTHON"
    elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        echo "$VIRTUAL_ENV/bin/python"
    else
        command -v python3 || die "no python3 on PATH; set TRYTON_PYTHON"
    fi
}

installed_versions() {
    "$PY" - <<'PYCODE' 2>/dev/null || true
from importlib.metadata import PackageNotFoundError, version
out = []
for name in ("trytond", "trytond-sale-opportunity"):
    try:
        out.append(version(name))
    except PackageNotFoundError:
        out.append("-")
print(" ".join(out))
PYCODE
}

install_packages() {
    local want="$TRYTOND_VERSION $SALE_OPPORTUNITY_VERSION"
    if [ "$(installed_versions)" = "$want" ]; then
        say "trytond $TRYTOND_VERSION, trytond-sale-opportunity $SALE_OPPORTUNITY_VERSION already installed"
        return
    fi
    local t0; t0=$(now)
    say "installing trytond==$TRYTOND_VERSION trytond-sale-opportunity==$SALE_OPPORTUNITY_VERSION into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install --quiet --disable-pip-version-check \
        "trytond==$TRYTOND_VERSION" "trytond-sale-opportunity==$SALE_OPPORTUNITY_VERSION" >&2 || die "pip could not install trytond (see above)"
    say "installed in $(since "$t0") s"
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

write_conf() {  # $1 work dir, $2 port
    cat > "$1/trytond.conf" <<CONF
[database]
uri = sqlite://
path = $1/db

[web]
listen = 127.0.0.1:$2

[session]
# Tests try one wrong password on purpose; the default (5) is fine, stated here so nobody lowers it.
max_attempt = 5
CONF
}

cache_key() {
    { echo "$TRYTOND_VERSION $SALE_OPPORTUNITY_VERSION"; "$PY" -c 'import sys; print(sys.version_info[:2])'; } \
        | sha256sum | cut -c1-16
}

# Initialise $work/db/$DB_NAME.sqlite (from the cache when it holds one for these versions).
init_db() {  # $1 work dir
    local work="$1" cache="" t0
    mkdir -p "$work/db"
    if [ "${TRYTON_NO_CACHE:-0}" != 1 ]; then
        cache="${TRYTON_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/deal-cockpit/tryton}/$(cache_key)"
        if [ -f "$cache/$DB_NAME.sqlite" ] && [ -f "$cache/password" ]; then
            cp "$cache/$DB_NAME.sqlite" "$work/db/$DB_NAME.sqlite"
            cp "$cache/password" "$work/password"
            say "database copied from the cache ($cache)"
            return
        fi
    fi
    t0=$(now)
    "$PY" -c 'import secrets; print("ck-" + secrets.token_urlsafe(18))' > "$work/password"
    chmod 600 "$work/password"
    touch "$work/db/$DB_NAME.sqlite"   # SQLite: the file must exist before trytond-admin (pitfall 2)
    say "initialising database $DB_NAME with sale_opportunity (about 20-40 s)"
    # --email and TRYTONPASSFILE keep trytond-admin from prompting (pitfall 3).
    if ! TRYTONPASSFILE="$work/password" "$BIN/trytond-admin" -c "$work/trytond.conf" -d "$DB_NAME" --all \
            -u sale_opportunity --activate-dependencies --email admin@example.com > "$work/admin.log" 2>&1; then
        tail -n 30 "$work/admin.log" >&2
        die "trytond-admin failed (log above)"
    fi
    say "database initialised in $(since "$t0") s"
    if [ -n "$cache" ]; then
        mkdir -p "$(dirname "$cache")" && mkdir -p -m 700 "$cache"
        cp "$work/db/$DB_NAME.sqlite" "$cache/.$DB_NAME.sqlite.$$" && mv "$cache/.$DB_NAME.sqlite.$$" "$cache/$DB_NAME.sqlite"
        install -m 600 "$work/password" "$cache/password"
    fi
}

answers() {  # $1 url
    "$PY" - "$1" <<'PYCODE' >/dev/null 2>&1
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/rpc/", method="POST", headers={"Content-Type": "application/json"},
                             data=json.dumps({"id": 0, "method": "common.server.version", "params": []}).encode())
with urllib.request.urlopen(req, timeout=2) as resp:
    sys.exit(0 if json.load(resp).get("result") else 1)
PYCODE
}

start() {
    local env_file="${1:-}" work port url pid t0 waited
    PY="$(python_bin)"
    "$PY" -c 'import httpx' 2>/dev/null \
        || die "$PY cannot import httpx (the seed needs it): activate the project's venv or set TRYTON_PYTHON"
    install_packages
    BIN="$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
    [ -x "$BIN/trytond" ] || die "$BIN/trytond not found after the install"

    work="$(mktemp -d "${TMPDIR:-/tmp}/cockpit-tryton.XXXXXX")"
    env_file="${env_file:-$work/tryton.env}"
    # Anything failing from here on removes what was made, server included.
    trap 'rc=$?; if [ "$rc" -ne 0 ]; then [ -s "$work/trytond.pid" ] && kill "$(cat "$work/trytond.pid")" 2>/dev/null; rm -rf "$work"; fi' EXIT
    port="$(free_port)"
    url="http://127.0.0.1:$port"
    write_conf "$work" "$port"
    init_db "$work"

    t0=$(now)
    # -d preloads the pool; without it 8.2.1 answers every call with KeyError 'res.user' (pitfall 1).
    # Output to a file and stdin from /dev/null so no caller's pipe is held open by the server.
    "$BIN/trytond" -c "$work/trytond.conf" -d "$DB_NAME" --pidfile "$work/trytond.pid" \
        > "$work/server.log" 2>&1 < /dev/null &
    pid=$!
    waited=0
    until answers "$url"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$work/server.log" >&2
            die "trytond exited before answering (log above)"
        fi
        if [ "$waited" -ge "$(( ${TRYTON_START_TIMEOUT:-90} * 10 ))" ]; then
            tail -n 30 "$work/server.log" >&2
            die "trytond did not answer on $url within ${TRYTON_START_TIMEOUT:-90} s"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    echo "$pid" > "$work/trytond.pid"
    say "server pid $pid answers on $url after $(since "$t0") s"

    t0=$(now)
    TRYTON_PASSWORD="$(cat "$work/password")" "$PY" "$repo/tests/tryton_seed.py" "$url" "$DB_NAME" "$DB_USER" >&2 \
        || die "seeding failed (see above)"
    say "seeded in $(since "$t0") s"

    umask 077
    cat > "$env_file" <<ENV
export TRYTON_URL=$url
export TRYTON_DB=$DB_NAME
export TRYTON_USER=$DB_USER
export TRYTON_PASSWORD=$(cat "$work/password")
export TRYTON_PID=$pid
export TRYTON_WORK_DIR=$work
ENV
    trap - EXIT
    echo "$env_file"
}

stop() {
    local env_file="${1:-}" pid work cmdline
    [ -n "$env_file" ] || die "usage: $0 stop ENV_FILE"
    if [ ! -f "$env_file" ]; then
        say "nothing to stop: $env_file does not exist"
        return 0
    fi
    pid="$(sed -n 's/^export TRYTON_PID=//p' "$env_file")"
    work="$(sed -n 's/^export TRYTON_WORK_DIR=//p' "$env_file")"
    # Only a live process that is this trytond (its config lives in our work dir) is killed.
    cmdline="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ -n "$work" ] && [[ "$cmdline" == *"trytond -c $work/trytond.conf"* ]]; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        say "stopped server pid $pid"
    fi
    case "$work" in
        "${TMPDIR:-/tmp}"/cockpit-tryton.*) rm -rf "$work" ;;
    esac
    rm -f "$env_file"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) echo "usage: $0 start [ENV_FILE] | stop ENV_FILE" >&2; exit 2 ;;
esac
