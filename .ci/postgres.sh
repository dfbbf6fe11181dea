# Start a throwaway PostgreSQL server on 127.0.0.1 for the test suite and export
# NEWSLETTER_TEST_POSTGRES_URL. Source it from bash (`. .ci/postgres.sh`), e.g. in .ci/run.
#
# Installs PostgreSQL with apt-get when no server binaries are found (NEWSLETTER_PG_BINDIR
# names other ones). The cluster lives under /tmp (NEWSLETTER_PG_DIR) and listens on
# NEWSLETTER_PG_PORT (default 54329); sourcing the script again reuses a running server. Any
# failure makes the `.` command itself return 1 (and so stops a `set -e` script). Stop it with:
#   runuser -u postgres -- "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl" -D /tmp/newsletter-pg stop

_newsletter_pg() {
    local port="${NEWSLETTER_PG_PORT:-54329}"
    local data="${NEWSLETTER_PG_DIR:-/tmp/newsletter-pg}"
    local role=newsletter_test
    local password=newsletter_test
    local bindir="${NEWSLETTER_PG_BINDIR:-}" as_pg=()

    if [ -z "$bindir" ] && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
        echo "postgres.sh: installing PostgreSQL with apt-get" >&2
        if [ "$(id -u)" = 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null ||
                { echo "postgres.sh: apt-get install postgresql failed" >&2; return 1; }
        else
            sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null ||
                { echo "postgres.sh: cannot install postgresql (need root or sudo)" >&2; return 1; }
        fi
    fi
    [ -n "$bindir" ] || bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    if [ ! -x "$bindir/pg_ctl" ]; then
        echo "postgres.sh: no PostgreSQL server binaries (pg_ctl) in '${bindir}'" >&2
        return 1
    fi

    # The server refuses to run as root: run it as the postgres user when we are root.
    if [ "$(id -u)" = 0 ]; then
        as_pg=(runuser -u postgres --)
    fi

    if ! "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then
        if [ ! -f "$data/PG_VERSION" ]; then
            local pwfile status=0
            pwfile="$(mktemp)" && echo "superuser-$RANDOM$RANDOM$RANDOM" >"$pwfile" &&
                mkdir -p "$data" && chmod 700 "$data" ||
                { echo "postgres.sh: cannot make $data for the cluster" >&2; return 1; }
            if [ "$(id -u)" = 0 ]; then
                chown postgres: "$data" "$pwfile" ||
                    { rm -f "$pwfile"; echo "postgres.sh: cannot give $data to the postgres user" >&2; return 1; }
            fi
            # `|| status=$?` keeps a `set -e` caller from exiting before the message below.
            "${as_pg[@]}" "$bindir/initdb" -D "$data" -U postgres --auth-local=trust \
                --auth-host=scram-sha-256 --pwfile="$pwfile" \
                --encoding=UTF8 --locale=C.UTF-8 >"$data.initdb.log" 2>&1 || status=$?
            rm -f "$pwfile"
            if [ "$status" != 0 ]; then
                echo "postgres.sh: initdb failed, see $data.initdb.log" >&2
                return 1
            fi
        fi
        "${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -s \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start || { echo "postgres.sh: server did not start, see $data/server.log" >&2; return 1; }
    fi

    # A login role that may create databases: each test makes its own and drops it.
    "${as_pg[@]}" "$bindir/psql" -q -h "$data" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL || { echo "postgres.sh: could not create the test role" >&2; return 1; }
SET client_min_messages TO WARNING;
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
    CREATE ROLE $role LOGIN CREATEDB PASSWORD '$password';
  END IF;
END \$\$;
-- DROP DATABASE ... WITH (FORCE) may have to stop an autovacuum worker.
GRANT pg_signal_backend TO $role;
SELECT 'CREATE DATABASE $role OWNER $role'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$role')\gexec
SQL

    export NEWSLETTER_TEST_POSTGRES_URL="postgresql+psycopg://$role:$password@127.0.0.1:$port/$role"
    echo "postgres.sh: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port; NEWSLETTER_TEST_POSTGRES_URL is set" >&2
}

# The function's status is the script's: `unset` as the last command would make every
# failure above look like success to the caller.
_newsletter_pg_status=0
_newsletter_pg || _newsletter_pg_status=$?
unset -f _newsletter_pg
if [ "$_newsletter_pg_status" != 0 ]; then
    unset _newsletter_pg_status
    return 1 2>/dev/null || exit 1  # sourced, as meant; or run as a script
fi
unset _newsletter_pg_status
