# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with the mode scripts
# What every mode of scripts/bench shares: tools and services, psql sessions, the benchmarked
# daemon, process accounting, figures and results. Sourced by scripts/bench.d/<mode>.sh after
# it has set `mode`; nothing here runs a benchmark.
#
# Conventions: progress goes to stderr (say), results to stdout and to
# $FERRY_STATE_DIR/bench/<mode>-<timestamp>.txt as key=value lines (put, then write_results).
# Whatever a mode starts (the daemon, psql sessions, background jobs, slots, subscriptions) is
# stopped or dropped when the script exits, however it exits (on_exit stops the daemon, then runs
# the hooks that at_exit registered, newest first).

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo" || exit 1
state=$(realpath -m "${FERRY_STATE_DIR:-$repo/.ferry}")
bench_dir=$state/bench
ferry_bin=$repo/target/release/ferry
wait_timeout=${FERRY_BENCH_TIMEOUT:-1800}

# Our psql calls name host, port, user and database themselves.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGOPTIONS \
	PGSSLMODE PGTZ PGCLIENTENCODING

say() { printf 'bench %s: %s\n' "$mode" "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

# Prints the comment at the top of script $1 (its usage and method) and exits 2.
usage_from() {
	sed -n '2,/^set -euo/{/^# shellcheck/d;/^#/{s/^# \{0,1\}//;p}}' "$1" >&2
	exit 2
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
positive() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

# An option with a value, `--name value` or `--name=value`, at "$@": sets opt (its name), optarg
# (its value, empty when missing) and optshift (how many arguments it took, for the caller's
# `shift "$optshift"`).
option_arg() {
	if [[ $1 == *=* ]]; then
		opt=${1%%=*} optarg=${1#*=} optshift=1
	else
		opt=$1 optarg=${2:-} optshift=$(($# >= 2 ? 2 : 1))
	fi
}

# The value option_arg read must be a positive number; otherwise the script's usage.
positive_arg() {
	positive "$optarg" || {
		say "$opt needs a positive number"
		usage
	}
}

# True while process $1 runs (a zombie counts as gone).
alive() {
	local stat
	# Not $(<file): under set -e a missing file there ends the whole script.
	read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Seconds since the epoch, microseconds included; and the same as integer microseconds.
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
now_us() { printf '%s' "${EPOCHREALTIME/[.,]/}"; }

# a - b in seconds with three decimals; a / b with two.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
ratio_of() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
max_of() { if (($1 > $2)); then echo "$1"; else echo "$2"; fi; }

# The median of the numbers in $1 (space-separated); "-" when there are none.
median() {
	[[ -n ${1// /} ]] || {
		printf '-'
		return
	}
	tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END {
		if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Nearest-rank percentile $1 (0..1) of the numbers on stdin.
percentile() {
	sort -g | awk -v p="$1" '{ v[NR] = $1 } END {
		i = int(p * NR + 0.999999); if (i < 1) i = 1; printf "%.3f", v[i] }'
}

random_hex() { od -An -v -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# A value as a single-quoted SQL literal (PostgreSQL and ClickHouse alike: no backslashes in
# what is quoted here, which ClickHouse would read as escapes).
sql_literal() {
	[[ $1 != *\\* ]] || die "a backslash in '$1' is not supported here"
	printf "'%s'" "${1//\'/\'\'}"
}

# Percent-encodes a URL component.
urlencode() {
	local s=$1 out='' c i
	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		case $c in
		[A-Za-z0-9._~-]) out+=$c ;;
		*) out+=$(printf '%%%02X' "'$c") ;;
		esac
	done
	printf '%s' "$out"
}

# An LSN (X/Y) as a number, for comparisons.
lsn_num() {
	local h=${1%/*} l=${1#*/}
	printf '%d' $(((16#$h << 32) | 16#$l))
}

# ---------------------------------------------------------------------------------------------
# Clean-up

tmp=$(mktemp -d)
exit_hooks=()
at_exit() { exit_hooks+=("$1"); }

# The daemon goes first, so that the hooks find its slots inactive and can drop them.
on_exit() {
	local rc=$? i name
	trap - EXIT INT TERM
	for name in "${!sess_pid[@]}"; do session_close "$name"; done
	stop_ferry
	for ((i = ${#exit_hooks[@]} - 1; i >= 0; i--)); do
		eval "${exit_hooks[i]}" || true
	done
	rm -rf "$tmp"
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops background job $1 (started by this script) if it still runs.
stop_job() {
	[[ -n ${1:-} ]] || return 0
	if alive "$1"; then kill -TERM "$1" 2>/dev/null || true; fi
	wait "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Tools, services, the build

apt_install() {
	if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
		die "please install: $* (this script installs packages only as root on Debian/Ubuntu)"
	fi
	say "installing $* with apt-get"
	DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# Makes sure PostgreSQL's programs $@ are on PATH (after `scripts/services env`), installing
# the Debian packages of the server's major version when one is missing.
need_pg_tools() {
	local tool major
	for tool in "$@"; do
		command -v "$tool" >/dev/null && continue
		major=$(pg_value postgres "SELECT current_setting('server_version_num')::int / 10000")
		apt_install "postgresql-client-$major" "postgresql-$major"
		eval "$(scripts/services env)"
		command -v "$tool" >/dev/null || die "$tool not found even after installing PostgreSQL $major's packages"
	done
}

# Starts (or finds) the local servers and sets pg_host … ch_url.
setup_services() {
	if ! command -v cargo >/dev/null && [[ -x ${HOME:-}/.cargo/bin/cargo ]]; then
		PATH=$HOME/.cargo/bin:$PATH
	fi
	command -v curl >/dev/null || apt_install curl ca-certificates
	say "scripts/services start"
	scripts/services start
	eval "$(scripts/services env)"
	pg_host=$FERRY_TEST_PG_HOST
	pg_port=$FERRY_TEST_PG_PORT
	pg_user=$FERRY_TEST_PG_USER
	pg_password=$FERRY_TEST_PG_PASSWORD
	ch_port=$FERRY_TEST_CH_HTTP_PORT
	ch_url=http://127.0.0.1:$ch_port/
	need_pg_tools psql
	mkdir -p "$bench_dir"
	stamp=$(date -u +%Y%m%dT%H%M%SZ)
	result_file=$bench_dir/$mode-$stamp.txt
	ferry_log=$bench_dir/$mode-$stamp-ferry.log
}

# Builds the release daemon; sets `commit` to what it was built from.
build_ferry() {
	command -v cargo >/dev/null || die "cargo not found; install Rust (https://rustup.rs)"
	say "cargo build --release -p ferry-server"
	cargo build --release -p ferry-server || die "the release build failed (see above)"
	[[ -x $ferry_bin ]] || die "the build did not produce $ferry_bin"
	commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	git diff --quiet HEAD -- 2>/dev/null || commit+="+dirty"
}

# ---------------------------------------------------------------------------------------------
# Talking to the servers

# psql as the superuser of the local cluster, over TCP; extra arguments follow.
pg() {
	PGPASSWORD=$pg_password PGSSLMODE=disable PGTZ=UTC PGOPTIONS='-c client_min_messages=warning' \
		psql -X -q -v ON_ERROR_STOP=1 -h "$pg_host" -p "$pg_port" -U "$pg_user" "$@"
}

# A query's result, unaligned and without headers.
pg_value() {
	local db=$1
	shift
	pg -d "$db" -A -t -c "$@"
}

# A libpq connection string to database $1 of the local cluster.
pg_conninfo() {
	printf "host=%s port=%s user=%s password=%s dbname=%s sslmode=disable" \
		"$pg_host" "$pg_port" "$pg_user" "$pg_password" "$1"
}

# Runs SQL on ClickHouse over HTTP and prints the result; stops with ClickHouse's message.
ch() {
	local out
	if ! out=$(curl -sS --fail-with-body --data-binary "$1" "$ch_url" 2>&1); then
		fail "ClickHouse refused: $1"$'\n'"$out"
	fi
	[[ -z $out ]] || printf '%s\n' "$out"
}

# The same, but a refusal is only a non-zero status (say, a table not created yet).
ch_try() { curl -sS --fail-with-body --data-binary "$1" "$ch_url" 2>/dev/null; }

# Waits until ClickHouse runs no merges in the benchmark's databases (bench_*), so that earlier
# work does not slow the next step. Others' merges on a shared server are not ours to wait for.
ch_settle() {
	local i n
	for ((i = 0; i < 1200; i++)); do
		n=$(ch "SELECT count() FROM system.merges WHERE database LIKE 'bench\\_%'")
		[[ $n == 0 ]] && return
		sleep 0.1
	done
	say "warning: ClickHouse still merges after 120 s; going on"
}

fresh_ch_database() {
	ch "DROP DATABASE IF EXISTS $1 SYNC"
	ch "CREATE DATABASE $1"
}

fresh_pg_database() {
	pg -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
	pg -d postgres -c "CREATE DATABASE $1"
}

# Drops the inactive replication slots whose names match LIKE pattern $1: a slot left behind
# makes the shared cluster keep WAL for ever and keeps its database from being dropped. The
# pattern is the script's own (backslashes escape LIKE's _ and %).
drop_slots_like() {
	pg -d postgres -A -t -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		WHERE NOT active AND slot_name LIKE '$1'" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Long-lived psql sessions (to the daemon, to a database), so that polling costs a query, not a
# process and a login. A session reads statements from a FIFO and answers into another.

declare -A sess_in=() sess_out=() sess_pid=() sess_err=()

session_open() {
	local name=$1 password=$2 port=$3 user=$4 db=$5 fd
	mkfifo "$tmp/$name.in" "$tmp/$name.out"
	sess_err[$name]=$tmp/$name-psql.err
	: >"${sess_err[$name]}"
	PGPASSWORD=$password PGSSLMODE=disable PGCONNECT_TIMEOUT=10 PGTZ=UTC \
		psql -X -q -A -t -F $'\t' -v VERBOSITY=verbose -h 127.0.0.1 -p "$port" -U "$user" -d "$db" \
		<"$tmp/$name.in" >"$tmp/$name.out" 2>>"${sess_err[$name]}" &
	sess_pid[$name]=$!
	exec {fd}>"$tmp/$name.in"
	sess_in[$name]=$fd
	exec {fd}<"$tmp/$name.out"
	sess_out[$name]=$fd
}

session_close() {
	local name=$1 fd_in fd_out
	[[ -n ${sess_pid[$name]:-} ]] || return 0
	fd_in=${sess_in[$name]}
	fd_out=${sess_out[$name]}
	exec {fd_in}>&- {fd_out}<&-
	kill -TERM "${sess_pid[$name]}" 2>/dev/null || true
	wait "${sess_pid[$name]}" 2>/dev/null || true
	unset "sess_pid[$name]"
	rm -f "$tmp/$name.in" "$tmp/$name.out"
}

# Runs one statement in session $1; its rows land in sql_rows (tab-separated), an error in
# sql_error and its SQLSTATE in sql_state (and the status is 1).
sql_rows=()
sql_error=
sql_state=
session_sql() {
	local name=$1 sql=$2 marker=__bench_${RANDOM}${RANDOM}__ line off
	sql_rows=()
	sql_error=
	sql_state=
	off=$(stat -c %s "${sess_err[$name]}")
	alive "${sess_pid[$name]}" || fail "the psql session $name is gone: $(tail -n 5 "${sess_err[$name]}")"
	printf '%s;\n\\echo %s :ERROR\n' "$sql" "$marker" >&"${sess_in[$name]}"
	while :; do
		IFS= read -r -t 600 -u "${sess_out[$name]}" line ||
			fail "no answer from the psql session $name to: $sql"$'\n'"$(tail -c +$((off + 1)) "${sess_err[$name]}")"
		[[ $line == "$marker "* ]] && break
		sql_rows+=("$line")
	done
	if [[ $line == "$marker true" ]]; then
		sql_error=$(tail -c +$((off + 1)) "${sess_err[$name]}")
		sql_state=$(sed -n 's/^[^:]*ERROR:  \([0-9A-Z]\{5\}\): .*/\1/p' <<<"$sql_error" | head -n 1)
		return 1
	fi
}

# ---------------------------------------------------------------------------------------------
# The benchmarked daemon: the release build on its own port, with a catalog database of its
# own, driven through one psql session named "ferry".

ferry_pid=

# Starts the daemon with catalog database $1 (created afresh) on port $2.
start_ferry() {
	local catalog_db=$1 port=$2 i catalog_url key password
	port_open "$port" && die "port $port is taken by another process (see the port settings)"
	fresh_pg_database "$catalog_db"
	password=$(random_hex 16)
	key=$(random_hex 32)
	catalog_url="postgres://$pg_user:$(urlencode "$pg_password")@$pg_host:$pg_port/$catalog_db"
	printf '\n--- %s: scripts/bench %s starts ferry\n' "$(date -Is)" "$mode" >>"$ferry_log"
	NO_COLOR=1 FERRY_SECRET_KEY=$key FERRY_CATALOG_URL=$catalog_url FERRY_PASSWORD=$password \
		FERRY_LISTEN=127.0.0.1:$port FERRY_USER=ferry \
		"$ferry_bin" server </dev/null >>"$ferry_log" 2>&1 &
	ferry_pid=$!
	for ((i = 0; i < 300; i++)); do
		port_open "$port" && break
		alive "$ferry_pid" || fail "ferry exited during start"
		sleep 0.1
	done
	port_open "$port" || fail "ferry does not accept connections on port $port after 30 s"
	say "ferry is ready (pid $ferry_pid, port $port, log $ferry_log)"
	session_open ferry "$password" "$port" ferry ferry
	ferry_sql "SELECT 1" || fail "psql cannot talk to ferry: $sql_error"
}

stop_ferry() {
	local i
	session_close ferry
	[[ -n $ferry_pid ]] || return 0
	if alive "$ferry_pid"; then
		say "stopping ferry (pid $ferry_pid)"
		kill -TERM "$ferry_pid" 2>/dev/null || true
		for ((i = 0; i < 300; i++)); do
			alive "$ferry_pid" || break
			sleep 0.1
		done
		if alive "$ferry_pid"; then
			say "ferry ignored SIGTERM for 30 s; killing it"
			kill -KILL "$ferry_pid" 2>/dev/null || true
		fi
	fi
	wait "$ferry_pid" 2>/dev/null || true
	ferry_pid=
}

ferry_sql() { session_sql ferry "$1"; }

# Prints what went wrong and the end of the daemon's log, and stops.
fail() {
	say "error: $*"
	if [[ -n $ferry_pid && -s ${ferry_log:-} ]]; then
		say "last lines of $ferry_log:"
		tail -n 40 "$ferry_log" >&2
	fi
	exit 1
}

# CREATE PEER $1 for database $2 of the local cluster.
ferry_pg_peer() {
	ferry_sql "CREATE PEER $1 FROM POSTGRES WITH (host = $(sql_literal "$pg_host"), port = $pg_port,
		user = $(sql_literal "$pg_user"), password = $(sql_literal "$pg_password"), database = '$2')"
}

# CREATE PEER $1 for ClickHouse database $2.
ferry_ch_peer() {
	ferry_sql "CREATE PEER $1 FROM CLICKHOUSE WITH (host = '127.0.0.1', port = $ch_port,
		user = 'default', password = '', database = '$2', disable_tls = true)"
}

mirror_failed() {
	ferry_sql "SELECT coalesce(last_error, ''), coalesce(error_hint, '') FROM mirror_status WHERE mirror = '$1'" || true
	fail "mirror $1 failed: ${sql_rows[*]:-}"
}

# Mirror $1's state; stops when the mirror failed or the daemon died.
mirror_state() {
	ferry_sql "SELECT state FROM mirror_status WHERE mirror = '$1'" || fail "polling mirror_status: $sql_error"
	REPLY=${sql_rows[0]:-}
	[[ $REPLY != failed ]] || mirror_failed "$1"
	alive "$ferry_pid" || fail "ferry died (mirror $1: ${REPLY:-none})"
}

# Waits until mirror $1 is in state $2.
wait_state() {
	local deadline=$((EPOCHSECONDS + wait_timeout))
	while :; do
		mirror_state "$1"
		[[ $REPLY == "$2" ]] && return
		((EPOCHSECONDS < deadline)) || fail "mirror $1 is not $2 after $wait_timeout s (state: ${REPLY:-none})"
		sleep 0.1
	done
}

# ---------------------------------------------------------------------------------------------
# Process accounting, from /proc

vm_hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# Resets a process's peak RSS to its current RSS (Linux 4.0+), so a peak can be taken per step.
reset_hwm() { echo 5 2>/dev/null >"/proc/$1/clear_refs" || true; }

# CPU seconds (utime + stime, all threads) process $1 has used so far.
cpu_seconds() {
	local stat
	read -r stat 2>/dev/null <"/proc/$1/stat" || {
		echo 0
		return
	}
	stat=${stat##*) }
	awk -v s="$stat" -v hz="$(getconf CLK_TCK)" 'BEGIN { split(s, f, " "); printf "%.2f", (f[12] + f[13]) / hz }'
}

# How busy the CPUs are, in percent, over one second (from /proc/stat).
cpu_busy() {
	local a b
	a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
	sleep 1
	b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
	awk -v a="$a" -v b="$b" 'BEGIN {
		split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2]
		printf "%d", (busy + idle > 0 ? 100 * busy / (busy + idle) : 0) }'
}

loadavg() {
	local a b c _
	read -r a b c _ </proc/loadavg
	printf '%s %s %s' "$a" "$b" "$c"
}

# Other work on the machine skews every figure: the load before the run is part of the result.
note_machine_load() {
	load_start=$(loadavg)
	busy_start=$(cpu_busy)
	put loadavg_at_start "$load_start"
	put cpu_busy_percent_at_start "$busy_start"
	if ((busy_start > 20)); then
		say "warning: the CPUs are $busy_start % busy before the benchmark starts (load $load_start): the figures will be noisy"
	fi
}

# The lines every result file and table header carry about the machine and the load.
machine_caveat() {
	printf 'load average at start: %s; CPUs %s %% busy at start; %s CPUs' "$load_start" "$busy_start" "$(nproc)"
	if ((busy_start > 20)); then printf '  (busy machine: the figures are noisy)'; fi
	printf '\n'
}

# ---------------------------------------------------------------------------------------------
# Results: put key value; write_results saves them, sorted, with the run's context first.

declare -A r=()
put() { r[$1]=$2; }

write_results() {
	local k
	{
		echo "mode=$mode"
		echo "timestamp=$stamp"
		echo "commit=${commit:-unknown}"
		echo "host_cpus=$(nproc)"
		echo "postgres_version=$(pg_value postgres "SHOW server_version")"
		echo "clickhouse_version=$(ch "SELECT version()")"
		for k in $(printf '%s\n' "${!r[@]}" | sort); do
			echo "$k=${r[$k]}"
		done
	} >"$result_file"
}

# Prints the key=value lines after the table, and where they were saved.
print_results() {
	printf '\nkey=value (also in %s):\n' "$result_file"
	grep -v '^$' "$result_file"
}
