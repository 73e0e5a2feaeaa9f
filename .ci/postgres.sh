# Sourced by .ci/run: start a throw-away local PostgreSQL server for the shared-storage
# test of `adex search` (tests/test_search.py) and export ADEX_TEST_POSTGRES_URL.
# Uses an installed server (postgres, initdb, pg_ctl on PATH or in /usr/lib/postgresql/*/bin),
# else installs Debian's `postgresql` package (root only). Data lives in a temp dir, the
# server listens on 127.0.0.1 on a free port (trust auth, local only), runs as a non-root
# user (postgres refuses root) and is stopped and deleted on exit. Without a server the
# test skips with its reason.

_pg_bindir() {
    local candidates=() dir
    if command -v postgres >/dev/null 2>&1; then
        candidates+=("$(dirname "$(command -v postgres)")")
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do candidates+=("$dir"); done
    for dir in "${candidates[@]}"; do
        if [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

start_test_postgres() {
    local bindir port user
    bindir=$(_pg_bindir) || true
    if [ -z "$bindir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "ci: installing PostgreSQL (Debian package postgresql)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        bindir=$(_pg_bindir) || true
    fi
    if [ -z "$bindir" ]; then
        echo "ci: warning: no PostgreSQL server found or installable; the PostgreSQL search test will skip" >&2
        return 0
    fi
    ADEX_CI_PG_RUN=()
    if [ "$(id -u)" = 0 ]; then
        user=postgres
        if ! id "$user" >/dev/null 2>&1; then
            user=adexci
            id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
        fi
        ADEX_CI_PG_RUN=(runuser -u "$user" --)
    fi
    ADEX_CI_PG_DIR=$(mktemp -d /tmp/adex-ci-pg.XXXXXX)
    ADEX_CI_PG_CTL="$bindir/pg_ctl"
    [ "$(id -u)" = 0 ] && chown "$user" "$ADEX_CI_PG_DIR"
    port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    ${ADEX_CI_PG_RUN[@]+"${ADEX_CI_PG_RUN[@]}"} "$bindir/initdb" -D "$ADEX_CI_PG_DIR/data" -U adex --auth=trust -E UTF8 >/dev/null
    trap stop_test_postgres EXIT
    ${ADEX_CI_PG_RUN[@]+"${ADEX_CI_PG_RUN[@]}"} "$bindir/pg_ctl" -D "$ADEX_CI_PG_DIR/data" -l "$ADEX_CI_PG_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $ADEX_CI_PG_DIR" start >/dev/null
    python - "$port" <<'PY'
import sys
import psycopg2

connection = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), user="adex", dbname="postgres")
connection.autocommit = True
connection.cursor().execute("CREATE DATABASE adex_test")
connection.close()
PY
    export ADEX_TEST_POSTGRES_URL="postgresql://adex@127.0.0.1:$port/adex_test"
    echo "ci: PostgreSQL ($bindir) on 127.0.0.1:$port, ADEX_TEST_POSTGRES_URL=$ADEX_TEST_POSTGRES_URL"
}

stop_test_postgres() {
    if [ -n "${ADEX_CI_PG_DIR:-}" ] && [ -d "$ADEX_CI_PG_DIR/data" ]; then
        ${ADEX_CI_PG_RUN[@]+"${ADEX_CI_PG_RUN[@]}"} "$ADEX_CI_PG_CTL" -D "$ADEX_CI_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    [ -n "${ADEX_CI_PG_DIR:-}" ] && rm -rf "$ADEX_CI_PG_DIR"
    return 0
}
