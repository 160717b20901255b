#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# scripts/bench pg2pg: Ferry from PostgreSQL to PostgreSQL, against the ways PostgreSQL itself
# offers, in one run, on the same source and destination databases on the same server.
#
#   scripts/bench pg2pg [--runs N] [--rebuild] [--changes N] [--methods LIST]
#
# Initial load of pgbench_accounts (the source database ferry_bench of scripts/bench.d/source.sh,
# pgbench scale 50 by default) into a fresh destination database per method:
#
#   ferry  an initial-copy-only mirror to a POSTGRES peer (CREATE MIRROR … WITH TABLE MAPPING
#          (public.pgbench_accounts:public.pgbench_accounts) WITH (do_initial_copy = true,
#          initial_copy_only = true, $WORKERS workers)), timed from CREATE MIRROR until the mirror
#          says completed and the destination has every row; Ferry's CPU-seconds (/proc) and
#          peak RSS beside. A daemon without a PostgreSQL destination refuses the peer or the
#          mirror: then the line says "not available" and the other methods still run.
#   dump   pg_dump -Fc -t pgbench_accounts | pg_restore (table, data, then its primary key)
#   copy   COPY … TO STDOUT (FORMAT binary) | COPY … FROM STDIN (FORMAT binary) into the table
#          created without its key, then ALTER TABLE … ADD PRIMARY KEY, timed together
#   sub    native logical replication's initial sync: the table created with its key (as a
#          subscriber's tables must be), then pg_create_logical_replication_slot and CREATE
#          SUBSCRIPTION … WITH (create_slot = false, copy_data = true), timed until every
#          pg_subscription_rel row is in state 'r'. (A subscription to the same server cannot
#          create its slot itself: CREATE SUBSCRIPTION would wait for its own transaction.)
#
# Streaming: table bench_changes (workload.sh) is replicated by a subscription (copy_data) and by
# a Ferry mirror to two more databases. Each run, with both stopped (ALTER SUBSCRIPTION …
# DISABLE; PAUSE MIRROR), a workload of --changes row changes in 100 transactions is made; then
# the subscription is enabled and timed until the workload's last row is at the destination and
# the table's fingerprint equals the source's, and then the same for Ferry (RESUME MIRROR).
#
# Every destination is checked before its time counts: the row count and a fingerprint of every
# column (fingerprint.sh) equal the source's, and the primary key is there. With --runs N, the
# methods run N times, interleaved, and medians are reported; ratios are the other method's time
# over Ferry's (above 1: Ferry is faster).
#
# Options and settings:
#   --runs N               repeat the methods N times, report medians          default 1
#   --rebuild              drop and rebuild the source database
#   --changes N            row changes of the streaming workload               default 1000000
#   --methods LIST         a subset of ferry,dump,copy,sub,stream              default all
#   SCALE, WIDE_ROWS       the source's size (as for snapshot)                 default 50, 1000000
#   WORKERS                Ferry's snapshot_max_parallel_workers               default 4
#   FERRY_BENCH_PG2PG_PORT the daemon's psql port                              default 9930
#   FERRY_BENCH_TIMEOUT    seconds any one wait may take                       default 1800
#   FERRY_STATE_DIR and the port settings of scripts/services are honoured.
#
# Output: a table on stdout (progress on stderr), the same figures as key=value lines in
# $FERRY_STATE_DIR/bench/pg2pg-<timestamp>.txt, and the daemon's log beside it.
set -euo pipefail
mode=pg2pg
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/source.sh"
source "$(dirname "${BASH_SOURCE[0]}")/fingerprint.sh"
source "$(dirname "${BASH_SOURCE[0]}")/workload.sh"

catalog_db=ferry_bench_pg2pg_catalog
dst_prefix=ferry_bench_pg2pg
table=pgbench_accounts
publication=ferry_bench_pg2pg_pub
stream_publication=ferry_bench_pg2pg_stream_pub
ferry_port=${FERRY_BENCH_PG2PG_PORT:-9930}
partition_rows=250000
poll_seconds=0.05
all_methods=(ferry dump copy sub stream)

usage() { usage_from "${BASH_SOURCE[0]}"; }

runs=1
rebuild=0
changes=1000000
methods=("${all_methods[@]}")
while [[ $# -gt 0 ]]; do
	case $1 in
	--runs | --changes | --runs=* | --changes=*)
		option_arg "$@"
		shift "$optshift"
		positive_arg
		if [[ $opt == --runs ]]; then runs=$optarg; else changes=$optarg; fi
		;;
	--rebuild)
		rebuild=1
		shift
		;;
	--methods | --methods=*)
		option_arg "$@"
		shift "$optshift"
		methods=()
		IFS=, read -r -a wanted <<<"$optarg"
		for m in "${wanted[@]}"; do
			[[ " ${all_methods[*]} " == *" $m "* ]] || {
				say "unknown method: $m"
				usage
			}
			[[ " ${methods[*]} " == *" $m "* ]] || methods+=("$m")
		done
		((${#methods[@]} > 0)) || usage
		;;
	-h | --help | help) usage ;;
	*)
		say "unknown argument: $1"
		usage
		;;
	esac
done
scale=${SCALE:-50}
wide_rows=${WIDE_ROWS:-1000000}
workers=${WORKERS:-4}
positive "$scale" || die "SCALE must be a positive integer, not '$scale'"
positive "$wide_rows" || die "WIDE_ROWS must be a positive integer, not '$wide_rows'"
positive "$workers" || die "WORKERS must be a positive integer, not '$workers'"
is_uint "$ferry_port" || die "FERRY_BENCH_PG2PG_PORT must be a port number, not '$ferry_port'"
positive "$wait_timeout" || die "FERRY_BENCH_TIMEOUT must be a number of seconds, not '$wait_timeout'"
((changes >= 1000)) || die "--changes must be at least 1000"
set_workload_size "$changes"
uses() { [[ " ${methods[*]} " == *" $1 "* ]]; }

setup_services
need_pg_tools pgbench pg_dump pg_restore
build_ferry

# PostgreSQL's programs as the local superuser, over TCP.
pg_tool() {
	local tool=$1
	shift
	PGPASSWORD=$pg_password PGSSLMODE=disable PGOPTIONS='-c client_min_messages=warning' \
		"$tool" -h "$pg_host" -p "$pg_port" -U "$pg_user" "$@"
}

# ---------------------------------------------------------------------------------------------
# Clean-up: subscriptions first (they hold walsenders), then slots, publications and databases.

# Drops subscription $2 in database $1 without touching its slot (dropped apart, below).
drop_subscription() {
	pg -d "$1" -c "ALTER SUBSCRIPTION $2 DISABLE" -c "ALTER SUBSCRIPTION $2 SET (slot_name = NONE)" \
		-c "DROP SUBSCRIPTION $2" >/dev/null 2>&1 || true
}

# Waits (up to 30 s) until no walsender uses slot $1, then drops it.
drop_slot() {
	local i
	for ((i = 0; i < 300; i++)); do
		[[ $(pg_value postgres "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$1' AND active") == 0 ]] && break
		sleep 0.1
	done
	pg_value postgres "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		WHERE slot_name = '$1' AND NOT active" >/dev/null
}

clean_up() {
	local db
	for db in $(pg_value postgres "SELECT datname FROM pg_database WHERE datname LIKE '${dst_prefix//_/\\_}\\_%'"); do
		[[ $db == "$catalog_db" ]] && continue
		for s in $(pg_value "$db" "SELECT subname FROM pg_subscription WHERE subname LIKE 'ferry\\_bench%'"); do
			drop_subscription "$db" "$s"
		done
		pg -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
	done
	stop_ferry
	for s in $(pg_value postgres "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'ferry\\_bench\\_pg2pg%'"); do
		drop_slot "$s"
	done
	pg -d "$source_db" -c "DROP PUBLICATION IF EXISTS $publication, $stream_publication" \
		-c "DROP TABLE IF EXISTS bench_changes" >/dev/null 2>&1 || true
}
at_exit clean_up

# ---------------------------------------------------------------------------------------------
# Checks and timing helpers

declare -A secs=() extra=()
record() { secs[$1]+="${secs[$1]:+ }$2"; }

# Dies unless database $2 (loaded by $1) has the source's rows, fingerprint and primary key of
# table $3 (pgbench_accounts by default).
check_loaded() {
	local method=$1 db=$2 t=${3:-$table} got want
	want=${source_print[$t]}
	got=$(pg_fingerprint "$db" "$t")
	[[ $got == "$want" ]] || fail "$method: $t in $db differs: fingerprint (count first) $got, the source's $want"
	has_primary_key "$db" "$t" || fail "$method: $t in $db has no primary key"
}

has_primary_key() {
	[[ $(pg_value "$1" "SELECT count(*) FROM pg_index WHERE indrelid = 'public.$2'::regclass AND indisprimary") == 1 ]]
}

# Waits until every table of the subscription in database $1 is ready ('r').
wait_subscription_ready() {
	local deadline=$((EPOCHSECONDS + wait_timeout)) st
	while :; do
		st=$(pg_value "$1" "SELECT count(*) FILTER (WHERE srsubstate <> 'r') || ' ' || count(*) FROM pg_subscription_rel")
		[[ $st == "0 "[1-9]* ]] && return
		((EPOCHSECONDS < deadline)) || fail "the subscription in $1 is not ready after $wait_timeout s (not ready, all: $st)"
		sleep "$poll_seconds"
	done
}

# The table's definition from the source into database $1: pre-data only (no key), or all.
copy_schema() {
	local sections=()
	[[ $2 == all ]] || sections=(--section=pre-data)
	pg_tool pg_dump --schema-only --no-owner "${sections[@]}" -t "public.$3" -d "$source_db" |
		pg -d "$1" >/dev/null || fail "copying the definition of $3 into $1 failed"
}

# ---------------------------------------------------------------------------------------------
# Initial load methods

run_dump() {
	local db=${dst_prefix}_dump t0 t1
	fresh_pg_database "$db"
	t0=$(now)
	pg_tool pg_dump -Fc -t "public.$table" -d "$source_db" | pg_tool pg_restore --no-owner -d "$db" ||
		fail "pg_dump | pg_restore failed"
	t1=$(now)
	check_loaded dump "$db"
	record dump "$(elapsed "$t1" "$t0")"
	say "dump  $(elapsed "$t1" "$t0") s (checked)"
}

run_copy() {
	local db=${dst_prefix}_copy t0 t1
	fresh_pg_database "$db"
	copy_schema "$db" pre "$table"
	t0=$(now)
	pg -d "$source_db" -c "COPY public.$table TO STDOUT (FORMAT binary)" |
		pg -d "$db" -c "COPY public.$table FROM STDIN (FORMAT binary)" || fail "the binary COPY pipe failed"
	pg -d "$db" -c "ALTER TABLE public.$table ADD PRIMARY KEY (aid)"
	t1=$(now)
	check_loaded copy "$db"
	record copy "$(elapsed "$t1" "$t0")"
	say "copy  $(elapsed "$t1" "$t0") s (checked)"
}

# Subscription $3 in database $1 to publication $2 through a slot of the same name, made first.
subscribe() {
	pg_value "$source_db" "SELECT pg_create_logical_replication_slot('$3', 'pgoutput')" >/dev/null
	pg -d "$1" -c "CREATE SUBSCRIPTION $3 CONNECTION $(sql_literal "$(pg_conninfo "$source_db")")
		PUBLICATION $2 WITH (create_slot = false, slot_name = '$3', copy_data = true)"
}

run_sub() {
	local db=${dst_prefix}_sub t0 t1 name=ferry_bench_pg2pg_sub
	fresh_pg_database "$db"
	copy_schema "$db" all "$table"
	t0=$(now)
	subscribe "$db" "$publication" "$name"
	wait_subscription_ready "$db"
	t1=$(now)
	check_loaded sub "$db"
	record sub "$(elapsed "$t1" "$t0")"
	say "sub   $(elapsed "$t1" "$t0") s (checked)"
	drop_subscription "$db" "$name"
	drop_slot "$name"
}

ferry_available=1
ferry_refusal=

# True when the last statement was refused because the daemon has no PostgreSQL destination
# (wrong kind of peer, or not supported); the reason lands in ferry_refusal.
refused_as_unsupported() {
	case $sql_state in
	42809 | 0A000)
		ferry_available=0
		ferry_refusal=$(sed -n 's/^[^:]*ERROR:  [0-9A-Z]\{5\}: //p' <<<"$sql_error" | head -n 1)
		say "ferry: not available: $ferry_refusal"
		return 0
		;;
	esac
	return 1
}

# CREATE PEER $1 for destination database $2; false when Ferry refuses a POSTGRES destination.
ferry_dst_peer() {
	ferry_sql "DROP PEER IF EXISTS $1" || fail "DROP PEER $1: $sql_error"
	ferry_pg_peer "$1" "$2" && return 0
	refused_as_unsupported && return 1
	fail "CREATE PEER $1: $sql_error"
}

run_ferry() {
	local db=${dst_prefix}_ferry m=bench_pg2pg_load_$run t0 t deadline n visible='' completed='' cpu0 cpu1 hwm
	((ferry_available)) || return 0
	fresh_pg_database "$db"
	ferry_dst_peer bench_dst "$db" || return 0
	reset_hwm "$ferry_pid"
	cpu0=$(cpu_seconds "$ferry_pid")
	t0=$(now)
	if ! ferry_sql "CREATE MIRROR $m FROM bench_src TO bench_dst
		WITH TABLE MAPPING (public.$table:public.$table)
		WITH (do_initial_copy = true, initial_copy_only = true,
		      snapshot_num_rows_per_partition = $partition_rows,
		      snapshot_max_parallel_workers = $workers, snapshot_num_tables_in_parallel = 1)"; then
		refused_as_unsupported && return 0
		fail "CREATE MIRROR $m: $sql_error"
	fi
	# Done: the mirror says completed (after the key is built) and the rows are there.
	deadline=$((EPOCHSECONDS + wait_timeout))
	while [[ -z $visible ]]; do
		if [[ -z $completed ]]; then
			mirror_state "$m"
			[[ $REPLY != completed ]] || completed=$(now)
		fi
		if [[ -n $completed ]]; then
			t=$(now)
			n=$(pg_value "$db" "SELECT count(*) FROM public.$table")
			((n < source_rows)) || visible=$t
		fi
		((EPOCHSECONDS < deadline)) || fail "mirror $m: not done after $wait_timeout s (state ${REPLY:-?})"
		[[ -n $visible ]] || sleep "$poll_seconds"
	done
	cpu1=$(cpu_seconds "$ferry_pid")
	hwm=$(vm_hwm_kb "$ferry_pid")
	if has_primary_key "$db" "$table"; then
		extra[ferry.primary_key]=yes
	else
		extra[ferry.primary_key]=no
		say "warning: Ferry's $table has no primary key: its time is not comparable with the others'"
		pg -d "$db" -c "ALTER TABLE public.$table ADD PRIMARY KEY (aid)" # only for the check below
	fi
	check_loaded ferry "$db"
	record ferry "$(elapsed "$visible" "$t0")"
	extra[ferry.cpu]+="${extra[ferry.cpu]:+ }$(elapsed "$cpu1" "$cpu0")"
	extra[ferry.rss]=$(max_of "${extra[ferry.rss]:-0}" "$hwm")
	say "ferry $(elapsed "$visible" "$t0") s (checked; $(elapsed "$cpu1" "$cpu0") CPU-s, peak RSS $((hwm / 1024)) MB)"
	ferry_sql "DROP MIRROR $m" || fail "DROP MIRROR $m: $sql_error"
}

# ---------------------------------------------------------------------------------------------
# Streaming: the same workload applied by a subscription and by a Ferry mirror

stream_ferry=0

setup_stream() {
	local sub_db=${dst_prefix}_stream_sub ferry_db=${dst_prefix}_stream_ferry
	say "streaming: bench_changes with $initial_rows rows; a subscription and a Ferry mirror"
	pg -d "$source_db" -c "DROP TABLE IF EXISTS bench_changes"
	create_changes_table "$source_db"
	hi=$initial_rows
	source_print[bench_changes]=$(pg_fingerprint "$source_db" bench_changes)
	pg -d "$source_db" -c "CREATE PUBLICATION $stream_publication FOR TABLE bench_changes"
	fresh_pg_database "$sub_db"
	copy_schema "$sub_db" all bench_changes
	subscribe "$sub_db" "$stream_publication" ferry_bench_pg2pg_stream
	wait_subscription_ready "$sub_db"
	check_loaded sub "$sub_db" bench_changes
	session_open stream_sub "$pg_password" "$pg_port" "$pg_user" "$sub_db"
	((ferry_available)) || return 0
	fresh_pg_database "$ferry_db"
	ferry_dst_peer bench_dst_stream "$ferry_db" || return 0
	if ! ferry_sql "CREATE MIRROR bench_pg2pg_stream FROM bench_src TO bench_dst_stream
		WITH TABLE MAPPING (public.bench_changes:public.bench_changes) WITH (do_initial_copy = true)"; then
		refused_as_unsupported && return 0
		fail "CREATE MIRROR bench_pg2pg_stream: $sql_error"
	fi
	wait_state bench_pg2pg_stream running
	session_open stream_ferry "$pg_password" "$pg_port" "$pg_user" "$ferry_db"
	wait_rows stream_ferry bench_pg2pg_stream
	check_loaded ferry "$ferry_db" bench_changes
	stream_ferry=1
}

# Waits until session $1's database has the workload's last row (id $hi) and bench_changes'
# fingerprint equals the source's; sets visible_at. $2 is the Ferry mirror to watch, if any.
wait_rows() {
	local deadline=$((EPOCHSECONDS + wait_timeout)) t
	while :; do
		t=$(now)
		session_sql "$1" "SELECT count(*) FROM bench_changes WHERE id = $hi" || fail "polling $1: $sql_error"
		if [[ ${sql_rows[0]} == 1 ]]; then
			session_sql "$1" "SELECT concat_ws(' ', $(pg_fingerprint_list bench_changes | sed 's/, $//')) FROM bench_changes" ||
				fail "fingerprint in $1: $sql_error"
			if [[ ${sql_rows[0]} == "${source_print[bench_changes]}" ]]; then
				visible_at=$t
				return
			fi
		fi
		[[ -z ${2:-} ]] || mirror_state "$2"
		((EPOCHSECONDS < deadline)) || fail "$1: the workload is not there after $wait_timeout s"
		sleep "$poll_seconds"
	done
}

stream_run() {
	local t0
	pg -d "${dst_prefix}_stream_sub" -c "ALTER SUBSCRIPTION ferry_bench_pg2pg_stream DISABLE"
	if ((stream_ferry)); then
		ferry_sql "PAUSE MIRROR bench_pg2pg_stream" || fail "PAUSE MIRROR: $sql_error"
		wait_state bench_pg2pg_stream paused
	fi
	write_workload "$tmp/workload.sql"
	say "streaming workload (both stopped): $changes row changes in $txns transactions"
	run_workload "$tmp/workload.sql" "$source_db"
	source_print[bench_changes]=$(pg_fingerprint "$source_db" bench_changes)

	t0=$(now)
	pg -d "${dst_prefix}_stream_sub" -c "ALTER SUBSCRIPTION ferry_bench_pg2pg_stream ENABLE"
	# The launcher starts the apply worker when it next looks (wal_retrieve_retry_interval):
	# that wait is part of the time, and also reported on its own.
	while :; do
		session_sql stream_sub "SELECT count(*) FROM pg_stat_subscription WHERE subname = 'ferry_bench_pg2pg_stream'
			AND pid IS NOT NULL AND relid IS NULL" || fail "polling pg_stat_subscription: $sql_error"
		[[ ${sql_rows[0]} == 0 ]] || break
		(($(now_us) < ${t0/./} + wait_timeout * 1000000)) || fail "no apply worker $wait_timeout s after ENABLE"
		sleep "$poll_seconds"
	done
	record stream.sub_worker_start "$(elapsed "$(now)" "$t0")"
	wait_rows stream_sub
	record stream.sub "$(elapsed "$visible_at" "$t0")"
	say "stream sub   $(elapsed "$visible_at" "$t0") s (checked; its apply worker started after ${secs[stream.sub_worker_start]##* } s)"
	((stream_ferry)) || return 0
	t0=$(now)
	ferry_sql "RESUME MIRROR bench_pg2pg_stream" || fail "RESUME MIRROR: $sql_error"
	wait_rows stream_ferry bench_pg2pg_stream
	record stream.ferry "$(elapsed "$visible_at" "$t0")"
	say "stream ferry $(elapsed "$visible_at" "$t0") s (checked)"
}

# ---------------------------------------------------------------------------------------------
# Main

note_machine_load
prepare_source
clean_up
declare -A source_print=()
source_rows=$(pg_value "$source_db" "SELECT count(*) FROM public.$table")
say "fingerprint of $table ($source_rows rows; also warms the cache)"
source_print[$table]=$(pg_fingerprint "$source_db" "$table")
pg -d "$source_db" -c "CREATE PUBLICATION $publication FOR TABLE public.$table"

start_ferry "$catalog_db" "$ferry_port"
ferry_pg_peer bench_src "$source_db" || fail "CREATE PEER bench_src: $sql_error"
if uses stream; then setup_stream; fi

for ((run = 1; run <= runs; run++)); do
	for method in "${methods[@]}"; do
		say "run $run/$runs: $method"
		case $method in
		stream) stream_run ;;
		*) "run_$method" ;;
		esac
	done
done
stop_ferry

# ---------------------------------------------------------------------------------------------
# Figures

put scale "$scale"
put rows "$source_rows"
put runs "$runs"
put workers "$workers"
put changes "$changes"
put ferry.available "$( ((ferry_available)) && echo yes || echo no)"
[[ -z $ferry_refusal ]] || put ferry.refused "$ferry_refusal"
for k in "${!secs[@]}"; do
	put "$k.seconds" "$(median "${secs[$k]}")"
	put "$k.seconds_each_run" "${secs[$k]// /,}"
done
if [[ -n ${secs[ferry]:-} ]]; then
	put ferry.cpu_seconds "$(median "${extra[ferry.cpu]}")"
	put ferry.cpu_ns_per_row "$(awk -v c="${r[ferry.cpu_seconds]}" -v n="$source_rows" 'BEGIN { printf "%.0f", c * 1e9 / n }')"
	put ferry.peak_rss_mb $((${extra[ferry.rss]} / 1024))
	put ferry.primary_key "${extra[ferry.primary_key]}"
	for m in dump copy sub; do
		[[ -z ${r[$m.seconds]:-} ]] || put "ratio.$m" "$(ratio_of "${r[$m.seconds]}" "${r[ferry.seconds]}")"
	done
fi
[[ -z ${r[stream.ferry.seconds]:-} ]] || put ratio.stream.sub "$(ratio_of "${r[stream.sub.seconds]}" "${r[stream.ferry.seconds]}")"
write_results

rowline() { printf '  %-58s %9s %11s  %s\n' "$@"; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else printf "-" }'; }
na="not available${ferry_refusal:+ ($ferry_refusal)}"

printf '\nscripts/bench pg2pg  %s  scale=%s runs=%s changes=%s  (PostgreSQL %s)\n' "$commit" "$scale" "$runs" \
	"$changes" "$(pg_value postgres "SHOW server_version" | cut -d' ' -f1)"
machine_caveat
printf '\ninitial load of pgbench_accounts (%s rows), each destination checked (count, fingerprint, key):\n' "$source_rows"
rowline '' seconds rows/s 'this ÷ ferry'
for m in ferry dump copy sub; do
	uses "$m" || continue
	case $m in
	ferry) label="ferry (initial_copy_only mirror, $workers workers)" ;;
	dump) label='pg_dump -Fc | pg_restore' ;;
	copy) label='binary COPY pipe, then ADD PRIMARY KEY' ;;
	sub) label='logical replication initial sync (until state r)' ;;
	esac
	if [[ -n ${r[$m.seconds]:-} ]]; then
		rowline "$label" "${r[$m.seconds]}" "$(rate "$source_rows" "${r[$m.seconds]}")" "${r[ratio.$m]:-}"
	else
		rowline "$label" - - "$na"
	fi
done
if [[ -n ${r[ferry.cpu_seconds]:-} ]]; then
	printf '  ferry: %s CPU-s (%s ns a row), peak RSS %s MB, primary key built: %s\n' "${r[ferry.cpu_seconds]}" \
		"${r[ferry.cpu_ns_per_row]}" "${r[ferry.peak_rss_mb]}" "${r[ferry.primary_key]}"
fi
if uses stream; then
	printf '\nstreaming: %s row changes in %s transactions made while both were stopped; start → the last\n' "$changes" "$txns"
	printf 'change at the destination and the fingerprint equal to the source'"'"'s:\n'
	rowline '' seconds changes/s 'this ÷ ferry'
	rowline 'logical replication (ALTER SUBSCRIPTION … ENABLE)' "${r[stream.sub.seconds]}" \
		"$(rate "$changes" "${r[stream.sub.seconds]}")" "${r[ratio.stream.sub]:-}"
	printf '  %-58s %9s\n' '  of which until its apply worker started' "${r[stream.sub_worker_start.seconds]}"
	if [[ -n ${r[stream.ferry.seconds]:-} ]]; then
		rowline 'ferry (RESUME MIRROR)' "${r[stream.ferry.seconds]}" "$(rate "$changes" "${r[stream.ferry.seconds]}")" ''
	else
		rowline 'ferry (RESUME MIRROR)' - - "$na"
	fi
fi
print_results
