#!/usr/bin/env bash
# Benchmarks Ferry's streaming (CDC) on the local servers of scripts/services: throughput
# against PostgreSQL's own decoding ceiling, end-to-end lag under pgbench, and peak memory.
#
#   scripts/bench cdc [--seconds N] [--changes N]
#
# Everything is built afresh on each run: the source database ferry_bench_cdc, Ferry's catalog
# ferry_bench_cdc_catalog (both on the scripts/services cluster) and the ClickHouse database
# bench_cdc. The release daemon runs on its own port and is driven with psql.
#
# Part 1, throughput. Mirror bench_cdc streams public.bench_changes (200 000 rows loaded first).
# A workload of --changes row changes — 100 transactions, each 40 % INSERTs of new ids,
# 40 % UPDATEs and 20 % DELETEs of existing ones, set-based — runs three ways:
#
#   streaming   the mirror runs during the workload; Ferry's time from the workload's start
#               (and from its end) until it has caught up
#   cold        the mirror is paused during the workload; two more logical slots (pgoutput)
#               are created before it. pg_recvlogical decodes one of them up to the workload's
#               end LSN (proto_version 1, the mirror's publication, output to /dev/null) — the
#               decoding ceiling; then RESUME MIRROR lets Ferry catch up over the same WAL;
#               then, the mirror paused again, pg_recvlogical decodes the other slot.
#               ratio = Ferry's catch-up / the faster pg_recvlogical: all start standing, all
#               decode the same range with the same plugin, nothing else of ours runs
#   one big     a single transaction inserting --changes rows, while the mirror runs
#
# Then, with the mirror caught up and idle, its catalog transactions per second and Ferry's CPU
# (both should be about nothing; they depend on what else writes WAL on the cluster).
#
# "Caught up" means mirror_status.confirmed_lsn has reached the LSN taken after the workload's
# last commit and ClickHouse's table (FINAL, not deleted) has the source's number of rows.
#
# Part 2, lag. pgbench -i -s 10, then mirror bench_tpcb (sync_interval = 1) over the four
# pgbench tables (pgbench_history gets a bigserial key) and bench_marker. While
# pgbench -T --seconds -c 4 -j 2 runs, the marker row is set to now() every 0.5 s; ClickHouse is
# polled every ~50 ms, and a marker's lag is the time it was first seen there minus the time
# its commit returned. After pgbench, Ferry must bring pgbench_accounts' sum(abalance) and
# pgbench_history's count to the source's.
#
# Ferry's peak RSS (VmHWM) covers the whole run, including the single big transaction.
#
# Options and settings:
#   --seconds N                 pgbench duration                              default 60
#   --changes N                 row changes per workload (rounded to 100s)    default 1000000
#   FERRY_BENCH_CDC_PORT        the daemon's psql port (metrics: the next)    default 9920
#   FERRY_BENCH_TIMEOUT         seconds any one wait may take                 default 1800
#   FERRY_STATE_DIR and the port settings of scripts/services are honoured.
#
# Output: the summary on stdout (progress on stderr), the same figures as key=value lines in
# $FERRY_STATE_DIR/bench/cdc-<timestamp>.txt, and the daemon's log beside it.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
state=$(realpath -m "${FERRY_STATE_DIR:-$repo/.ferry}")
bench_dir=$state/bench

source_db=ferry_bench_cdc
catalog_db=ferry_bench_cdc_catalog
ch_db=bench_cdc
ceiling_slot=bench_ceiling
ferry_bin=$repo/target/release/ferry
ferry_port=${FERRY_BENCH_CDC_PORT:-9920}
wait_timeout=${FERRY_BENCH_TIMEOUT:-1800}
txns=100
pgbench_scale=10
marker_every_us=500000
poll_seconds=0.05

# Our psql calls name host, port, user and database themselves.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGOPTIONS \
	PGSSLMODE PGTZ PGCLIENTENCODING

say() { printf 'bench cdc: %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

usage() {
	cat >&2 <<-EOF
		usage: scripts/bench cdc [--seconds N] [--changes N]

		  Streams --changes row changes through a Ferry mirror (while it runs, and cold after a
		  pause) and compares the cold catch-up with pg_recvlogical on the same WAL; then
		  measures end-to-end lag while pgbench runs for --seconds.

		  --seconds N   pgbench duration in seconds (default 60)
		  --changes N   row changes per workload, at least 1000 (default 1000000)

		  environment: FERRY_BENCH_CDC_PORT (default 9920; metrics on the next port),
		  FERRY_BENCH_TIMEOUT (seconds any one wait may take, default 1800)
	EOF
	exit 2
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
positive() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

alive() {
	local stat
	read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Seconds since the epoch, microseconds included; and the same as integer microseconds.
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
now_us() { printf '%s' "${EPOCHREALTIME/[.,]/}"; }

# a - b, in seconds with three decimals; a / b with two.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
ratio_of() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

random_hex() { od -An -v -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# An LSN (X/Y) as a number, for comparisons.
lsn_num() {
	local h=${1%/*} l=${1#*/}
	printf '%d' $(((16#$h << 32) | 16#$l))
}

vm_hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# CPU seconds (user + system) a process has used so far.
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

# ---------------------------------------------------------------------------------------------
# Arguments

seconds=60
changes=1000000

option_value() {
	# $1 the option, $2 the value (or empty when missing)
	positive "${2:-}" || {
		say "$1 needs a positive number"
		usage
	}
}

while [[ $# -gt 0 ]]; do
	case $1 in
	--seconds | --changes)
		option_value "$1" "${2:-}"
		if [[ $1 == --seconds ]]; then seconds=$2; else changes=$2; fi
		shift 2
		;;
	--seconds=*)
		option_value --seconds "${1#*=}"
		seconds=${1#*=}
		shift
		;;
	--changes=*)
		option_value --changes "${1#*=}"
		changes=${1#*=}
		shift
		;;
	-h | --help | help) usage ;;
	*)
		say "unknown argument: $1"
		usage
		;;
	esac
done
((changes >= 1000)) || die "--changes must be at least 1000"
is_uint "$ferry_port" || die "FERRY_BENCH_CDC_PORT must be a port number, not '$ferry_port'"
positive "$wait_timeout" || die "FERRY_BENCH_TIMEOUT must be a number of seconds, not '$wait_timeout'"
metrics_port=$((ferry_port + 1))

# Each workload: $txns transactions of $per_txn rows: 40 % inserts, 40 % updates, 20 % deletes.
per_txn=$((changes / txns))
changes=$((per_txn * txns))
txn_inserts=$((per_txn * 4 / 10))
txn_updates=$((per_txn * 4 / 10))
txn_deletes=$((per_txn - txn_inserts - txn_updates))
initial_rows=200000
((initial_rows >= txn_updates + txn_deletes)) || initial_rows=$((txn_updates + txn_deletes))

# ---------------------------------------------------------------------------------------------
# Clean-up: whatever this script started is stopped when it exits, however it exits.

tmp=$(mktemp -d)
ferry_pid=
pgbench_pid=
recvlogical_pid=
declare -A sess_in=() sess_out=() sess_pid=() sess_err=()

session_close() {
	local name=$1
	local fd_in=${sess_in[$name]:-} fd_out=${sess_out[$name]:-}
	[[ -n ${sess_pid[$name]:-} ]] || return 0
	exec {fd_in}>&- {fd_out}<&-
	kill -TERM "${sess_pid[$name]}" 2>/dev/null || true
	wait "${sess_pid[$name]}" 2>/dev/null || true
	unset "sess_pid[$name]"
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

on_exit() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "$pgbench_pid" "$recvlogical_pid"; do
		if [[ -n $pid ]] && alive "$pid"; then
			kill -TERM "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
	session_close source
	stop_ferry
	# Slots left behind would make the shared cluster keep WAL for ever.
	if [[ -n ${pg_port:-} ]]; then
		pg -d postgres -A -t -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
			WHERE NOT active AND (database = '$source_db' OR slot_name LIKE '${ceiling_slot}%')" >/dev/null 2>&1 ||
			say "warning: could not drop the replication slots of $source_db"
	fi
	rm -rf "$tmp"
	if [[ -n ${stamp:-} ]]; then
		find "$bench_dir" -maxdepth 1 -name "cdc-$stamp-*-psql.err" -empty -delete 2>/dev/null || true
	fi
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Talking to the servers

# psql as the superuser of the local cluster, over TCP; extra arguments follow.
pg() {
	PGPASSWORD=$pg_password PGSSLMODE=disable PGTZ=UTC PGOPTIONS='-c client_min_messages=warning' \
		psql -X -q -v ON_ERROR_STOP=1 -h "$pg_host" -p "$pg_port" -U "$pg_user" "$@"
}

pg_value() {
	local db=$1
	shift
	pg -d "$db" -A -t -c "$@"
}

# Runs SQL on ClickHouse over HTTP and prints the result; dies with ClickHouse's message.
ch() {
	local out
	if ! out=$(curl -sS --fail-with-body --data-binary "$1" "$ch_url" 2>&1); then
		fail "ClickHouse refused: $1"$'\n'"$out"
	fi
	[[ -z $out ]] || printf '%s\n' "$out"
}

# Waits until ClickHouse runs no merges, so that earlier work does not slow the next step.
ch_settle() {
	local i n
	for ((i = 0; i < 1200; i++)); do
		n=$(ch "SELECT count() FROM system.merges")
		[[ $n == 0 ]] && return
		sleep 0.1
	done
	say "warning: ClickHouse still merges after 120 s; going on"
}

# Long-lived psql sessions (to ferry, to the source), so that polling costs a query, not a
# process and a login. A session reads statements from a FIFO and answers into another.
session_open() {
	local name=$1 password=$2 port=$3 user=$4 db=$5 fd
	mkfifo "$tmp/$name.in" "$tmp/$name.out"
	sess_err[$name]=$bench_dir/cdc-$stamp-$name-psql.err
	: >"${sess_err[$name]}"
	PGPASSWORD=$password PGSSLMODE=disable PGCONNECT_TIMEOUT=10 PGTZ=UTC \
		psql -X -q -A -t -F $'\t' -h 127.0.0.1 -p "$port" -U "$user" -d "$db" \
		<"$tmp/$name.in" >"$tmp/$name.out" 2>>"${sess_err[$name]}" &
	sess_pid[$name]=$!
	exec {fd}>"$tmp/$name.in"
	sess_in[$name]=$fd
	exec {fd}<"$tmp/$name.out"
	sess_out[$name]=$fd
}

# Runs one statement in session $1; its rows land in sql_rows (tab-separated), an error in
# sql_error (and the status is 1).
sql_rows=()
sql_error=
session_sql() {
	local name=$1 sql=$2 marker=__bench_cdc_${RANDOM}${RANDOM}__ line off
	sql_rows=()
	sql_error=
	off=$(stat -c %s "${sess_err[$name]}")
	alive "${sess_pid[$name]}" || fail "the psql session to $name is gone: $(tail -n 5 "${sess_err[$name]}")"
	printf '%s;\n\\echo %s :ERROR\n' "$sql" "$marker" >&"${sess_in[$name]}"
	while :; do
		IFS= read -r -t 600 -u "${sess_out[$name]}" line ||
			fail "no answer from the psql session to $name for: $sql"$'\n'"$(tail -c +$((off + 1)) "${sess_err[$name]}")"
		[[ $line == "$marker "* ]] && break
		sql_rows+=("$line")
	done
	if [[ $line == "$marker true" ]]; then
		sql_error=$(tail -c +$((off + 1)) "${sess_err[$name]}")
		return 1
	fi
}

ferry_sql() { session_sql ferry "$1"; }

# Prints what went wrong and the end of the daemon's log, and stops.
fail() {
	say "error: $*"
	if [[ -s ${ferry_log:-} ]]; then
		say "last lines of $ferry_log:"
		tail -n 40 "$ferry_log" >&2
	fi
	exit 1
}

mirror_failed() {
	ferry_sql "SELECT coalesce(last_error, ''), coalesce(error_hint, '') FROM mirror_status WHERE mirror = '$1'" || true
	fail "mirror $1 failed: ${sql_rows[*]:-}"
}

# ---------------------------------------------------------------------------------------------
# Set-up: tools, services, the build

if ! command -v cargo >/dev/null && [[ -x ${HOME:-}/.cargo/bin/cargo ]]; then
	PATH=$HOME/.cargo/bin:$PATH
fi
command -v curl >/dev/null || die "curl is missing: please install it"
command -v cargo >/dev/null || die "cargo not found; install Rust (https://rustup.rs)"

say "scripts/services start"
scripts/services start
eval "$(scripts/services env)"
for tool in psql pgbench pg_recvlogical; do
	command -v "$tool" >/dev/null || die "$tool not found (expected in PostgreSQL's bin dir)"
done
pg_host=$FERRY_TEST_PG_HOST
pg_port=$FERRY_TEST_PG_PORT
pg_user=$FERRY_TEST_PG_USER
pg_password=$FERRY_TEST_PG_PASSWORD
ch_port=$FERRY_TEST_CH_HTTP_PORT
ch_url=http://127.0.0.1:$ch_port/

say "cargo build --release -p ferry-server"
cargo build --release -p ferry-server || die "the release build failed (see above)"
[[ -x $ferry_bin ]] || die "the build did not produce $ferry_bin"
# The commit the binary was built from (others may commit while the benchmark runs).
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- 2>/dev/null || commit+="+dirty"

mkdir -p "$bench_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
result_file=$bench_dir/cdc-$stamp.txt
ferry_log=$bench_dir/cdc-$stamp-ferry.log

# ---------------------------------------------------------------------------------------------
# The daemon and the mirrors

start_ferry() {
	local i catalog_url key password
	port_open "$ferry_port" && die "port $ferry_port is taken by another process (set FERRY_BENCH_CDC_PORT)"
	port_open "$metrics_port" && die "port $metrics_port is taken by another process (set FERRY_BENCH_CDC_PORT)"
	password=$(random_hex 16)
	key=$(random_hex 32)
	catalog_url="postgres://$pg_user:$(printf '%s' "$pg_password" | od -An -v -tx1 | tr -d ' \n' | sed 's/../%&/g')@$pg_host:$pg_port/$catalog_db"
	printf '\n--- %s: scripts/bench cdc starts ferry\n' "$(date -Is)" >>"$ferry_log"
	NO_COLOR=1 FERRY_SECRET_KEY=$key \
		"$ferry_bin" server --listen "127.0.0.1:$ferry_port" --catalog-url "$catalog_url" \
		--user ferry --password "$password" --metrics-listen "127.0.0.1:$metrics_port" \
		</dev/null >>"$ferry_log" 2>&1 &
	ferry_pid=$!
	for ((i = 0; i < 300; i++)); do
		port_open "$ferry_port" && break
		alive "$ferry_pid" || fail "ferry exited during start"
		sleep 0.1
	done
	port_open "$ferry_port" || fail "ferry does not accept connections on port $ferry_port after 30 s"
	say "ferry is ready (pid $ferry_pid, port $ferry_port, log $ferry_log)"
	session_open ferry "$password" "$ferry_port" ferry ferry
	ferry_sql "SELECT 1" || fail "psql cannot talk to ferry: $sql_error"
}

# Waits until mirror $1 is in state $2.
wait_state() {
	local mirror=$1 want=$2 deadline=$((EPOCHSECONDS + wait_timeout)) st
	while :; do
		ferry_sql "SELECT state FROM mirror_status WHERE mirror = '$mirror'" ||
			fail "polling mirror_status: $sql_error"
		st=${sql_rows[0]:-}
		[[ $st == "$want" ]] && return
		[[ $st == failed ]] && mirror_failed "$mirror"
		alive "$ferry_pid" || fail "ferry died (mirror $mirror: ${st:-none})"
		((EPOCHSECONDS < deadline)) || fail "mirror $mirror is not $want after $wait_timeout s (state: ${st:-none})"
		sleep 0.1
	done
}

# The source's WAL position now.
wal_lsn() { pg_value "$source_db" "SELECT pg_current_wal_lsn()"; }

# Waits until mirror $1 has confirmed LSN $2 and ClickHouse's table $3 holds $4 live rows;
# sets caught_at to the time of the poll that saw the LSN confirmed with the rows there.
caught_at=
wait_caught_up() {
	local mirror=$1 target=$2 table=$3 want=$4 deadline=$((EPOCHSECONDS + wait_timeout))
	local want_lsn st lsn t n mismatch=0
	want_lsn=$(lsn_num "$target")
	while :; do
		ferry_sql "SELECT state, coalesce(confirmed_lsn::text, '') FROM mirror_status WHERE mirror = '$mirror'" ||
			fail "polling mirror_status: $sql_error"
		t=$(now)
		IFS=$'\t' read -r st lsn <<<"${sql_rows[0]:-}"
		[[ $st == failed ]] && mirror_failed "$mirror"
		if [[ -n $lsn ]] && (($(lsn_num "$lsn") >= want_lsn)); then
			n=$(ch "SELECT count() FROM $ch_db.$table FINAL WHERE _ferry_is_deleted = 0")
			if [[ $n == "$want" ]]; then
				caught_at=$t
				((mismatch == 0)) ||
					say "warning: $mirror confirmed $target before ClickHouse had all rows of $table"
				return
			fi
			((mismatch++ < 200)) ||
				fail "$mirror confirmed $lsn ≥ $target, but ClickHouse has $n rows of $table, the source $want"
		fi
		alive "$ferry_pid" || fail "ferry died while $mirror caught up"
		((EPOCHSECONDS < deadline)) || fail "$mirror has not caught up with $target after $wait_timeout s (confirmed: ${lsn:-none})"
		sleep "$poll_seconds"
	done
}

# Compares count, sum(v) and the notes' total length of bench_changes at both ends.
check_changes_table() {
	local src dst
	src=$(pg_value "$source_db" "SELECT count(*) || ' ' || coalesce(sum(v), 0) || ' ' || coalesce(sum(length(note)), 0) FROM bench_changes")
	dst=$(ch "SELECT concat(toString(count()), ' ', toString(sum(v)), ' ', toString(sum(length(note))))
		FROM $ch_db.bench_changes FINAL WHERE _ferry_is_deleted = 0")
	[[ $src == "$dst" ]] || fail "bench_changes differs after $1: source (count sum(v) sum(len(note))) $src, ClickHouse $dst"
}

# ---------------------------------------------------------------------------------------------
# Part 1: the workloads

# The live ids of bench_changes are always lo..hi.
lo=1
hi=$initial_rows

# Writes a workload of $txns transactions into file $1 (ending with the WAL position after the
# last commit), and moves lo and hi on as it will.
write_workload() {
	local file=$1 i
	{
		for ((i = 1; i <= txns; i++)); do
			printf 'BEGIN;\n'
			printf "INSERT INTO bench_changes SELECT g, (g %% 1000)::int, md5(g::text) FROM generate_series(%d, %d) g;\n" \
				$((hi + 1)) $((hi + txn_inserts))
			printf "UPDATE bench_changes SET v = v + 1, note = 'u%d' WHERE id BETWEEN %d AND %d;\n" \
				"$i" $((lo + txn_deletes)) $((lo + txn_deletes + txn_updates - 1))
			printf 'DELETE FROM bench_changes WHERE id BETWEEN %d AND %d;\n' "$lo" $((lo + txn_deletes - 1))
			printf 'COMMIT;\n'
			lo=$((lo + txn_deletes))
			hi=$((hi + txn_inserts))
		done
		printf 'SELECT pg_current_wal_lsn();\n'
	} >"$file"
}

# Runs workload file $1; sets workload_start, workload_end and workload_lsn.
workload_start=
workload_end=
workload_lsn=
run_workload() {
	workload_start=$(now)
	workload_lsn=$(pg -d "$source_db" -A -t -f "$1") || fail "the workload $1 failed"
	workload_end=$(now)
}

declare -A r=()

drop_ceiling_slots() {
	pg_value "$source_db" "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		WHERE slot_name LIKE '${ceiling_slot}%' AND NOT active" >/dev/null
}

# Times pg_recvlogical decoding slot ${ceiling_slot}_$1 up to LSN $2 (the slot is dropped after):
# sets r[recvlogical.$1.seconds].
run_ceiling() {
	local which=$1 endpos=$2 slot=${ceiling_slot}_$1 t0 t1 rc=0 confirmed
	say "pg_recvlogical ($which ferry): decoding $slot up to $endpos"
	t0=$(now)
	PGPASSWORD=$pg_password PGSSLMODE=disable timeout "$wait_timeout" \
		pg_recvlogical -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$source_db" --slot "$slot" \
		--start --endpos "$endpos" -o proto_version=1 -o "publication_names=$publication" \
		--no-loop -f /dev/null 2>"$tmp/recvlogical.err" &
	recvlogical_pid=$!
	wait "$recvlogical_pid" || rc=$?
	t1=$(now)
	recvlogical_pid=
	((rc == 0)) || fail "pg_recvlogical failed ($rc): $(cat "$tmp/recvlogical.err")"
	confirmed=$(pg_value "$source_db" "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$slot'")
	(($(lsn_num "$confirmed") >= $(lsn_num "$endpos"))) ||
		fail "pg_recvlogical stopped at $confirmed, before $endpos"
	pg_value "$source_db" "SELECT pg_drop_replication_slot('$slot')" >/dev/null
	r[recvlogical.$which.seconds]=$(elapsed "$t1" "$t0")
	say "pg_recvlogical ($which ferry): ${r[recvlogical.$which.seconds]} s"
}

part1() {
	local l0 t_resume t0 t1 ferry_cpu0 hwm commits0 commits1 batches batch_rows max_batch_rows last_batch
	say "part 1: bench_changes with $initial_rows rows; mirror bench_cdc"
	pg -d "$source_db" -v rows="$initial_rows" <<-'SQL'
		CREATE TABLE bench_changes (id bigint PRIMARY KEY, v int, note text);
		INSERT INTO bench_changes SELECT g, (g % 1000)::int, md5(g::text) FROM generate_series(1, :rows) g;
		VACUUM ANALYZE bench_changes;
	SQL
	ferry_sql "CREATE MIRROR bench_cdc FROM bench_src TO bench_ch
		WITH TABLE MAPPING (public.bench_changes:bench_changes) WITH (do_initial_copy = true)" ||
		fail "CREATE MIRROR bench_cdc: $sql_error"
	wait_state bench_cdc running
	ferry_sql "SELECT publication_name FROM mirror_status WHERE mirror = 'bench_cdc'" ||
		fail "reading mirror_status: $sql_error"
	publication=${sql_rows[0]:-}
	[[ -n $publication ]] || fail "mirror bench_cdc has no publication"
	check_changes_table "the initial load"
	r[ferry.rss_after_load_mb]=$(($(vm_hwm_kb "$ferry_pid") / 1024))

	# Streaming: the mirror runs during the workload.
	write_workload "$tmp/streaming.sql"
	ch_settle
	say "streaming workload: $changes row changes in $txns transactions"
	run_workload "$tmp/streaming.sql"
	r[streaming.workload_seconds]=$(elapsed "$workload_end" "$workload_start")
	wait_caught_up bench_cdc "$workload_lsn" bench_changes $((hi - lo + 1))
	r[streaming.end_to_end_seconds]=$(elapsed "$caught_at" "$workload_start")
	r[streaming.after_workload_seconds]=$(elapsed "$caught_at" "$workload_end")
	check_changes_table "the streaming workload"
	r[ferry.rss_after_streaming_mb]=$(($(vm_hwm_kb "$ferry_pid") / 1024))
	say "streaming: workload ${r[streaming.workload_seconds]} s; ferry caught up ${r[streaming.end_to_end_seconds]} s after it began"

	# Cold: the mirror paused; two ceiling slots from before the workload, decoded one before
	# and one after Ferry's catch-up (with the mirror paused again), so that neither order nor
	# a passing disturbance favours one side. The faster of the two is the ceiling.
	write_workload "$tmp/cold.sql"
	ch_settle
	ferry_sql "PAUSE MIRROR bench_cdc" || fail "PAUSE MIRROR bench_cdc: $sql_error"
	wait_state bench_cdc paused
	drop_ceiling_slots
	l0=$(pg_value "$source_db" "SELECT lsn FROM pg_create_logical_replication_slot('${ceiling_slot}_before', 'pgoutput')")
	pg_value "$source_db" "SELECT pg_create_logical_replication_slot('${ceiling_slot}_after', 'pgoutput')" >/dev/null
	say "cold workload (mirror paused): $changes row changes in $txns transactions"
	run_workload "$tmp/cold.sql"
	r[cold.workload_seconds]=$(elapsed "$workload_end" "$workload_start")
	r[cold.wal_bytes]=$(pg_value "$source_db" "SELECT pg_wal_lsn_diff('$workload_lsn', '$l0')::bigint")
	r[cold.start_lsn]=$l0
	r[cold.end_lsn]=$workload_lsn

	run_ceiling before "$workload_lsn"

	ch_settle
	ferry_cpu0=$(cpu_seconds "$ferry_pid")
	t_resume=$(now)
	ferry_sql "RESUME MIRROR bench_cdc" || fail "RESUME MIRROR bench_cdc: $sql_error"
	wait_caught_up bench_cdc "$workload_lsn" bench_changes $((hi - lo + 1))
	r[cold.ferry_seconds]=$(elapsed "$caught_at" "$t_resume")
	r[cold.ferry_cpu_seconds]=$(awk -v a="$(cpu_seconds "$ferry_pid")" -v b="$ferry_cpu0" 'BEGIN { printf "%.2f", a - b }')
	check_changes_table "the cold catch-up"
	# The batches of the catch-up, and when the last one was written.
	ferry_sql "SELECT count(*), coalesce(sum(rows), 0), coalesce(max(rows), 0),
		       round((extract(epoch FROM max(finished_at)) - $t_resume)::numeric, 3)
		FROM cdc_batches WHERE mirror = 'bench_cdc' AND started_at >= to_timestamp($t_resume)" ||
		fail "reading cdc_batches: $sql_error"
	IFS=$'\t' read -r batches batch_rows max_batch_rows last_batch <<<"${sql_rows[0]:-}"
	r[cold.batches]=$batches
	r[cold.batch_rows]=$batch_rows
	r[cold.max_batch_rows]=$max_batch_rows
	r[cold.last_batch_finished_seconds]=$last_batch
	r[ferry.rss_after_cold_mb]=$(($(vm_hwm_kb "$ferry_pid") / 1024))
	say "cold catch-up: ferry ${r[cold.ferry_seconds]} s (${r[cold.ferry_cpu_seconds]} CPU s, ${r[cold.batches]} batches)"

	ferry_sql "PAUSE MIRROR bench_cdc" || fail "PAUSE MIRROR bench_cdc: $sql_error"
	wait_state bench_cdc paused
	run_ceiling after "$workload_lsn"
	ferry_sql "RESUME MIRROR bench_cdc" || fail "RESUME MIRROR bench_cdc: $sql_error"
	wait_state bench_cdc running

	r[recvlogical.seconds]=$(awk -v a="${r[recvlogical.before.seconds]}" -v b="${r[recvlogical.after.seconds]}" \
		'BEGIN { printf "%.3f", (a < b ? a : b) }')
	r[ratio]=$(ratio_of "${r[cold.ferry_seconds]}" "${r[recvlogical.seconds]}")

	# One transaction of $changes inserted rows, while the mirror runs.
	ch_settle
	printf 'BEGIN;\nINSERT INTO bench_changes SELECT g, (g %% 1000)::int, md5(g::text) FROM generate_series(%d, %d) g;\nCOMMIT;\nSELECT pg_current_wal_lsn();\n' \
		$((hi + 1)) $((hi + changes)) >"$tmp/big.sql"
	hi=$((hi + changes))
	say "one transaction inserting $changes rows"
	run_workload "$tmp/big.sql"
	r[big.workload_seconds]=$(elapsed "$workload_end" "$workload_start")
	wait_caught_up bench_cdc "$workload_lsn" bench_changes $((hi - lo + 1))
	r[big.after_commit_seconds]=$(elapsed "$caught_at" "$workload_end")
	check_changes_table "the big transaction"
	hwm=$(vm_hwm_kb "$ferry_pid")
	r[ferry.rss_after_big_mb]=$((hwm / 1024))
	say "big transaction: committed in ${r[big.workload_seconds]} s; ferry caught up ${r[big.after_commit_seconds]} s later (peak RSS so far $((hwm / 1024)) MB)"

	# What an idle, caught-up mirror costs the catalog: transactions per second.
	sleep 2
	commits0=$(pg_value postgres "SELECT xact_commit FROM pg_stat_database WHERE datname = '$catalog_db'")
	t0=$(now)
	sleep 5
	commits1=$(pg_value postgres "SELECT xact_commit FROM pg_stat_database WHERE datname = '$catalog_db'")
	t1=$(now)
	r[idle.catalog_commits_per_second]=$(awk -v a="$commits1" -v b="$commits0" -v s="$(elapsed "$t1" "$t0")" \
		'BEGIN { printf "%.0f", (a - b) / s }')
	r[idle.ferry_cpu_percent]=$(
		c0=$(cpu_seconds "$ferry_pid")
		sleep 3
		c1=$(cpu_seconds "$ferry_pid")
		awk -v a="$c1" -v b="$c0" 'BEGIN { printf "%.0f", 100 * (a - b) / 3 }'
	)
	say "idle mirror: ${r[idle.catalog_commits_per_second]} catalog commits/s, ferry ${r[idle.ferry_cpu_percent]} % CPU"

	# Part 2 measures its own mirror alone.
	ferry_sql "DROP MIRROR bench_cdc" || fail "DROP MIRROR bench_cdc: $sql_error"
}

# ---------------------------------------------------------------------------------------------
# Part 2: lag under pgbench

# Nearest-rank percentile $1 of the numbers on stdin.
percentile() { sort -g | awk -v p="$1" '{ v[NR] = $1 } END { i = int(p * NR + 0.999999); if (i < 1) i = 1; printf "%.3f", v[i] }'; }

part2() {
	local marker_sql ch_marker pgb_out next now_t v a b obs t_end deadline want got i
	local -a pend_val=() pend_t=() lags=()
	say "part 2: pgbench -i -s $pgbench_scale; mirror bench_tpcb"
	PGPASSWORD=$pg_password PGSSLMODE=disable PGOPTIONS='-c client_min_messages=warning' \
		pgbench -i -s "$pgbench_scale" -q -h "$pg_host" -p "$pg_port" -U "$pg_user" "$source_db" >&2 ||
		fail "pgbench -i failed"
	pg -d "$source_db" <<-'SQL'
		ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY;
		CREATE TABLE bench_marker (id int PRIMARY KEY, t timestamptz);
		INSERT INTO bench_marker VALUES (1, now());
	SQL
	ferry_sql "CREATE MIRROR bench_tpcb FROM bench_src TO bench_ch
		WITH TABLE MAPPING (public.pgbench_accounts:pgbench_accounts, public.pgbench_branches:pgbench_branches,
		                    public.pgbench_tellers:pgbench_tellers, public.pgbench_history:pgbench_history,
		                    public.bench_marker:bench_marker)
		WITH (do_initial_copy = true, sync_interval = 1)" ||
		fail "CREATE MIRROR bench_tpcb: $sql_error"
	wait_state bench_tpcb running
	r[ferry.rss_after_tpcb_load_mb]=$(($(vm_hwm_kb "$ferry_pid") / 1024))
	ch_settle

	session_open source "$pg_password" "$pg_port" "$pg_user" "$source_db"
	marker_sql="UPDATE bench_marker SET t = now() WHERE id = 1 RETURNING (extract(epoch FROM t) * 1000000)::bigint"
	ch_marker="SELECT toUnixTimestamp64Micro(t) FROM $ch_db.bench_marker FINAL WHERE id = 1 AND _ferry_is_deleted = 0"
	pgb_out=$bench_dir/cdc-$stamp-pgbench.log
	say "pgbench -T $seconds -c 4 -j 2, sampling lag every $((marker_every_us / 1000)) ms"
	PGPASSWORD=$pg_password PGSSLMODE=disable \
		pgbench -T "$seconds" -c 4 -j 2 -h "$pg_host" -p "$pg_port" -U "$pg_user" "$source_db" \
		>"$pgb_out" 2>&1 &
	pgbench_pid=$!
	next=$(now_us)
	deadline=$((EPOCHSECONDS + seconds + wait_timeout))
	# Markers go in while pgbench runs; polling goes on until every marker is seen.
	while alive "$pgbench_pid" || ((${#pend_val[@]} > 0)); do
		now_t=$(now_us)
		if alive "$pgbench_pid" && ((now_t >= next)); then
			session_sql source "$marker_sql" || fail "updating bench_marker: $sql_error"
			pend_t+=("$(now_us)")
			pend_val+=("${sql_rows[0]}")
			next=$((next + marker_every_us))
			((next > now_t)) || next=$((now_t + marker_every_us))
		fi
		if ((${#pend_val[@]} > 0)); then
			a=$(now_us)
			v=$(ch "$ch_marker")
			b=$(now_us)
			obs=$(((a + b) / 2))
			while ((${#pend_val[@]} > 0)) && [[ -n $v ]] && ((pend_val[0] <= v)); do
				lags+=($((obs - pend_t[0])))
				pend_val=("${pend_val[@]:1}")
				pend_t=("${pend_t[@]:1}")
			done
		fi
		((EPOCHSECONDS < deadline)) || fail "a marker was not seen in ClickHouse $wait_timeout s after pgbench"
		sleep "$poll_seconds"
	done
	wait "$pgbench_pid" || fail "pgbench failed: $(tail -n 20 "$pgb_out")"
	pgbench_pid=
	t_end=$(now)
	session_close source
	((${#lags[@]} > 0)) || fail "no lag samples"
	r[tps]=$(awk '/^tps = / { printf "%.0f", $3; exit }' "$pgb_out")
	r[pgbench.transactions]=$(awk -F': ' '/^number of transactions actually processed/ { print $2; exit }' "$pgb_out")
	r[lag.samples]=${#lags[@]}
	for i in p50:0.50 p99:0.99 max:1; do
		r[lag.${i%%:*}_seconds]=$(printf '%s\n' "${lags[@]}" | awk '{ printf "%.6f\n", $1 / 1e6 }' | percentile "${i#*:}")
	done
	say "lag p50 ${r[lag.p50_seconds]} s, p99 ${r[lag.p99_seconds]} s, max ${r[lag.max_seconds]} s over ${#lags[@]} samples; tps ${r[tps]}"

	# Ferry must end where the source is.
	want=$(pg_value "$source_db" "SELECT sum(abalance) || ' ' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts")
	deadline=$((EPOCHSECONDS + wait_timeout))
	while :; do
		got=$(ch "SELECT concat(toString((SELECT sum(abalance) FROM $ch_db.pgbench_accounts FINAL WHERE _ferry_is_deleted = 0)),
			' ', toString((SELECT count() FROM $ch_db.pgbench_history FINAL WHERE _ferry_is_deleted = 0)))")
		[[ $got == "$want" ]] && break
		ferry_sql "SELECT state FROM mirror_status WHERE mirror = 'bench_tpcb'" || fail "polling mirror_status: $sql_error"
		[[ ${sql_rows[0]:-} != failed ]] || mirror_failed bench_tpcb
		((EPOCHSECONDS < deadline)) ||
			fail "ClickHouse's pgbench tables (sum(abalance) count(history)) are $got after $wait_timeout s, the source's $want"
		sleep "$poll_seconds"
	done
	r[pgbench.caught_up_after_seconds]=$(elapsed "$(now)" "$t_end")
	say "ferry matched pgbench_accounts' sum(abalance) and pgbench_history's count ${r[pgbench.caught_up_after_seconds]} s after pgbench ended"
}

# ---------------------------------------------------------------------------------------------
# Main

load_before=$(loadavg)
busy_start=$(cpu_busy)
if ((busy_start > 20)); then
	say "warning: the CPUs are ${busy_start} % busy before the benchmark starts: the figures will be noisy"
fi

say "fresh databases: $source_db, $catalog_db (PostgreSQL), $ch_db (ClickHouse)"
port_open "$ferry_port" && die "port $ferry_port is taken by another process (set FERRY_BENCH_CDC_PORT)"
# A leftover slot in the source keeps it from being dropped.
pg -d postgres -A -t -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
	WHERE NOT active AND (database = '$source_db' OR slot_name LIKE '${ceiling_slot}%')" >/dev/null
for db in "$source_db" "$catalog_db"; do
	pg -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
	pg -d postgres -c "CREATE DATABASE $db"
done
ch "DROP DATABASE IF EXISTS $ch_db SYNC"
ch "CREATE DATABASE $ch_db"

start_ferry
ferry_sql "CREATE PEER bench_src FROM POSTGRES WITH (host = '$pg_host', port = $pg_port,
	user = '$pg_user', password = '${pg_password//\'/\'\'}', database = '$source_db')" ||
	fail "CREATE PEER bench_src: $sql_error"
ferry_sql "CREATE PEER bench_ch FROM CLICKHOUSE WITH (host = '127.0.0.1', port = $ch_port,
	user = 'default', password = '', database = '$ch_db', disable_tls = true)" ||
	fail "CREATE PEER bench_ch: $sql_error"

part1
part2

peak_kb=$(vm_hwm_kb "$ferry_pid")
r[ferry.peak_rss_mb]=$((peak_kb / 1024))
r[ferry.cpu_seconds_total]=$(cpu_seconds "$ferry_pid")
stop_ferry
load_after=$(loadavg)

ch_version=$(ch "SELECT version()")
pg_version=$(pg_value postgres "SHOW server_version")
rows_per_s() { awk -v n="$changes" -v s="$1" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }'; }

{
	echo "timestamp=$stamp"
	echo "commit=$commit"
	echo "host_cpus=$(nproc)"
	echo "cpu_busy_percent_at_start=$busy_start"
	echo "loadavg_before=$load_before"
	echo "loadavg_after=$load_after"
	echo "postgres_version=$pg_version"
	echo "clickhouse_version=$ch_version"
	echo "changes=$changes"
	echo "transactions=$txns"
	echo "rows_per_transaction=$per_txn"
	echo "initial_rows=$initial_rows"
	echo "pgbench_scale=$pgbench_scale"
	echo "pgbench_seconds=$seconds"
	for k in $(printf '%s\n' "${!r[@]}" | sort); do
		echo "$k=${r[$k]}"
	done
} >"$result_file"

printf '\nscripts/bench cdc  %s  changes=%s seconds=%s  (%s CPUs, PostgreSQL %s, ClickHouse %s)\n' \
	"$commit" "$changes" "$seconds" "$(nproc)" "${pg_version%% *}" "$ch_version"
printf 'load average before: %s, after: %s; CPUs %s %% busy at the start\n\n' "$load_before" "$load_after" "$busy_start"
printf 'part 1: bench_changes (%s rows at first); a workload = %s row changes in %s transactions\n' \
	"$initial_rows" "$changes" "$txns"
printf '        (each %s INSERTs of new ids, %s UPDATEs, %s DELETEs, set-based)\n' \
	"$txn_inserts" "$txn_updates" "$txn_deletes"
printf '  %-34s workload %7s s; ferry caught up %s s after it began, %s s after it ended\n' \
	'streaming (mirror running):' "${r[streaming.workload_seconds]}" "${r[streaming.end_to_end_seconds]}" \
	"${r[streaming.after_workload_seconds]}"
printf '  %-34s workload %7s s; %s MB of WAL\n' 'cold (mirror paused):' "${r[cold.workload_seconds]}" \
	"$((${r[cold.wal_bytes]} / 1048576))"
printf '  %-34s %7s s  %8s rows/s  (pgoutput v1, same WAL range and publication;\n' \
	'  pg_recvlogical --endpos:' "${r[recvlogical.seconds]}" "$(rows_per_s "${r[recvlogical.seconds]}")"
printf '  %-34s %26s the faster of %s s before and %s s after ferry)\n' '' '' \
	"${r[recvlogical.before.seconds]}" "${r[recvlogical.after.seconds]}"
printf '  %-34s %7s s  %8s rows/s  (RESUME → caught up; %s CPU s; %s batches, the last done after %s s)\n' \
	'  ferry:' "${r[cold.ferry_seconds]}" "$(rows_per_s "${r[cold.ferry_seconds]}")" \
	"${r[cold.ferry_cpu_seconds]}" "${r[cold.batches]}" "${r[cold.last_batch_finished_seconds]}"
printf '  %-34s committed in %s s; ferry caught up %s s after the commit\n' \
	"one transaction of $changes INSERTs:" "${r[big.workload_seconds]}" "${r[big.after_commit_seconds]}"
printf '  %-34s %s catalog commits/s, ferry %s %% CPU\n' 'idle mirror afterwards:' \
	"${r[idle.catalog_commits_per_second]}" "${r[idle.ferry_cpu_percent]}"
printf 'ratio (ferry vs pg_recvlogical): %s\n\n' "${r[ratio]}"
printf 'part 2: pgbench -s %s -T %s -c 4 -j 2; mirror bench_tpcb (sync_interval = 1); a marker every %s ms\n' \
	"$pgbench_scale" "$seconds" "$((marker_every_us / 1000))"
printf 'lag p50/p99: %s / %s s  (max %s s, %s samples, commit returned → seen in ClickHouse)\n' \
	"${r[lag.p50_seconds]}" "${r[lag.p99_seconds]}" "${r[lag.max_seconds]}" "${r[lag.samples]}"
printf 'tps: %s\n' "${r[tps]}"
printf 'ferry matched the source %s s after pgbench ended\n' "${r[pgbench.caught_up_after_seconds]}"
printf 'ferry peak RSS: %s MB  (after the first load %s MB, after part 1 %s MB)\n' "${r[ferry.peak_rss_mb]}" \
	"${r[ferry.rss_after_load_mb]}" "${r[ferry.rss_after_big_mb]}"
if ((busy_start > 20)); then
	printf '\nnote: the CPUs were %s %% busy before the benchmark began (other work): the figures are noisy\n' "$busy_start"
fi
printf '\nresults: %s\n' "$result_file"
