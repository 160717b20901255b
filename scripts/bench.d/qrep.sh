#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# scripts/bench qrep: a query mirror's first full run against Ferry's CDC initial load of the
# same table, in the same run; then an incremental run of 1 % new rows.
#
#   scripts/bench qrep [--runs N] [--rebuild]
#
# The source is pgbench_accounts of ferry_bench_qrep, a database of its own built as ferry_bench
# is (scripts/bench.d/source.sh: the incremental run adds rows to it for a while), loaded into
# ClickHouse by the release daemon on its own port and catalog:
#
#   cdc       CREATE MIRROR … WITH TABLE MAPPING (public.pgbench_accounts:…) WITH
#             (initial_copy_only = true, $WORKERS workers, 250 000 rows per partition)
#   query     CREATE MIRROR … FOR $$SELECT * FROM public.pgbench_accounts WHERE aid BETWEEN
#             {{.start}} AND {{.end}}$$ WITH (initial_copy_only = true, mode = 'append',
#             parallelism = $WORKERS, num_rows_per_partition = 250 000)
#
# Each is timed from CREATE MIRROR until count() of its destination table (polled every 50 ms)
# shows every source row, and checked (row count and fingerprint, fingerprint.sh) before its time
# counts; CPU-seconds are the daemon's utime + stime over the load (until the mirror also says
# `completed`), peak RSS its VmHWM. With --runs N the two run N times, interleaved, and medians
# are reported; the ratio is query / cdc (the goal: at most 1.2).
#
#   increment a query mirror with refresh_interval = 3600 (it runs when told), after its first
#             run: 1 % new rows are inserted (aid above the largest), then EXECUTE MIRROR, timed
#             until the destination shows them and the watermark is their largest aid; the run's
#             own duration (qrep_runs) beside it. The new rows are deleted again at the end.
#
# Options and settings:
#   --runs N            repeat the full loads N times and report medians   default 1
#   --rebuild           drop and rebuild the source database
#   SCALE               pgbench scale of the source                        default 50
#   WORKERS             workers of both loads                              default 4
#   FERRY_BENCH_PORT    the benchmarked daemon's psql port                 default 9910
#   FERRY_BENCH_TIMEOUT seconds one load may take before the run aborts    default 1800
#   FERRY_STATE_DIR and the port settings of scripts/services are honoured.
#
# Output: the table on stdout (progress on stderr), and the same figures as key=value lines in
# $FERRY_STATE_DIR/bench/qrep-<timestamp>.txt next to the daemon's log of that run.
set -euo pipefail
mode=qrep
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/source.sh"
source "$(dirname "${BASH_SOURCE[0]}")/fingerprint.sh"

catalog_db=ferry_bench_qrep_catalog
source_db=ferry_bench_qrep
table=pgbench_accounts
ferry_port=${FERRY_BENCH_PORT:-9910}
partition_rows=250000
poll_seconds=0.05

usage() { usage_from "${BASH_SOURCE[0]}"; }

runs=1
rebuild=0
while [[ $# -gt 0 ]]; do
	case $1 in
	--runs | --runs=*)
		option_arg "$@"
		shift "$optshift"
		positive_arg
		runs=$optarg
		;;
	--rebuild)
		rebuild=1
		shift
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
positive "$workers" || die "WORKERS must be a positive integer, not '$workers'"
is_uint "$ferry_port" || die "FERRY_BENCH_PORT must be a port number, not '$ferry_port'"
positive "$wait_timeout" || die "FERRY_BENCH_TIMEOUT must be a number of seconds, not '$wait_timeout'"

setup_services
need_pg_tools pgbench
build_ferry

declare -A secs=() cpu=() rss=() done_secs=()
record() { secs[$1]+="${secs[$1]:+ }$2"; }

# Waits until ClickHouse table $1 has $2 rows (visible) and mirror $3 is in state $4 (when $4
# is not empty); sets visible and completed to the times they were first seen.
wait_loaded() {
	local dest=$1 want=$2 m=$3 state=$4 n deadline next_state=0
	visible=
	completed=
	[[ -n $state ]] || completed=-
	deadline=$((EPOCHSECONDS + wait_timeout))
	while [[ -z $visible || -z $completed ]]; do
		if [[ -z $visible ]]; then
			n=$(ch_try "SELECT count() FROM $dest") || n=0
			((n < want)) || visible=$(now)
		fi
		if [[ -z $completed ]] && { [[ -n $visible ]] || (($(now_us) > next_state)); }; then
			mirror_state "$m"
			[[ $REPLY != "$state" ]] || completed=$(now)
			next_state=$(($(now_us) + 500000))
		fi
		((EPOCHSECONDS < deadline)) || fail "mirror $m: not done after $wait_timeout s (state ${REPLY:-?}, $n rows visible)"
		[[ -n $visible && -n $completed ]] || sleep "$poll_seconds"
	done
}

# Loads pgbench_accounts once by method $1 (cdc or query) as mirror $2 into bench_qrep.$2.
load_once() {
	local method=$1 m=$2 t0 cpu0 cpu1 hwm got list
	ch_settle
	reset_hwm "$ferry_pid"
	cpu0=$(cpu_seconds "$ferry_pid")
	t0=$(now)
	case $method in
	cdc)
		ferry_sql "CREATE MIRROR $m FROM bench_src TO bench_ch
			WITH TABLE MAPPING (public.$table:$m)
			WITH (do_initial_copy = true, initial_copy_only = true,
			      snapshot_num_rows_per_partition = $partition_rows,
			      snapshot_max_parallel_workers = $workers)" || fail "CREATE MIRROR $m: $sql_error"
		;;
	query)
		ferry_sql "CREATE MIRROR $m FROM bench_src TO bench_ch FOR
			\$\$SELECT * FROM public.$table WHERE aid BETWEEN {{.start}} AND {{.end}}\$\$
			WITH (destination_table_name = '$m', watermark_column = 'aid',
			      watermark_table_name = 'public.$table', mode = 'append', initial_copy_only = true,
			      parallelism = $workers, num_rows_per_partition = $partition_rows)" ||
			fail "CREATE MIRROR $m: $sql_error"
		;;
	esac
	wait_loaded "bench_qrep.$m" "$rows" "$m" completed
	cpu1=$(cpu_seconds "$ferry_pid")
	hwm=$(vm_hwm_kb "$ferry_pid")
	# A query mirror's append table is a MergeTree, read without FINAL.
	if [[ $method == query ]]; then
		list=$(ch_fingerprint_list "$table" ferry)
		got=$(ch "SELECT arrayStringConcat([${list%, }], ' ') FROM bench_qrep.$m")
	else
		got=$(ch_fingerprint "bench_qrep.$m" "$table" ferry)
	fi
	[[ $got == "$print" ]] || fail "$method loaded $table wrongly: fingerprint $got, the source's $print"
	record "$method" "$(elapsed "$visible" "$t0")"
	done_secs[$method]+="${done_secs[$method]:+ }$(elapsed "$completed" "$t0")"
	cpu[$method]+="${cpu[$method]:+ }$(elapsed "$cpu1" "$cpu0")"
	rss[$method]=$(max_of "${rss[$method]:-0}" "$hwm")
	say "$method: $rows rows visible after $(elapsed "$visible" "$t0") s (checked; completed after" \
		"$(elapsed "$completed" "$t0") s; $(elapsed "$cpu1" "$cpu0") CPU-s; peak RSS $((hwm / 1024)) MB)"
	ferry_sql "DROP MIRROR $m" || fail "DROP MIRROR $m: $sql_error"
	ch "DROP TABLE bench_qrep.$m SYNC"
}

# The incremental run: a query mirror's first run (everything), then 1 % new rows, EXECUTE
# MIRROR, until they are visible and the watermark has moved.
increment() {
	local m=bench_inc t0 cpu0 cpu1 w deadline
	ferry_sql "CREATE MIRROR $m FROM bench_src TO bench_ch FOR
		\$\$SELECT * FROM public.$table WHERE aid BETWEEN {{.start}} AND {{.end}}\$\$
		WITH (destination_table_name = '$m', watermark_column = 'aid',
		      watermark_table_name = 'public.$table', mode = 'append', refresh_interval = 3600,
		      parallelism = $workers, num_rows_per_partition = $partition_rows)" ||
		fail "CREATE MIRROR $m: $sql_error"
	wait_loaded "bench_qrep.$m" "$rows" "$m" ""
	deadline=$((EPOCHSECONDS + wait_timeout))
	until ferry_sql "SELECT last_watermark FROM mirror_status WHERE mirror = '$m'" &&
		[[ ${sql_rows[0]:-} == "$max_aid" ]]; do
		((EPOCHSECONDS < deadline)) || fail "the first run of $m did not end"
		sleep 0.1
	done
	new_rows=$((rows / 100))
	at_exit "pg -d $source_db -c 'DELETE FROM public.$table WHERE aid > $max_aid' >/dev/null"
	pg -d "$source_db" -c "INSERT INTO public.$table (aid, bid, abalance, filler)
		SELECT g, 1 + (g - 1) / 100000, 0, repeat(' ', 84) FROM generate_series($((max_aid + 1)), $((max_aid + new_rows))) g"
	ch_settle
	cpu0=$(cpu_seconds "$ferry_pid")
	t0=$(now)
	ferry_sql "EXECUTE MIRROR $m" || fail "EXECUTE MIRROR $m: $sql_error"
	wait_loaded "bench_qrep.$m" $((rows + new_rows)) "$m" ""
	until ferry_sql "SELECT last_watermark FROM mirror_status WHERE mirror = '$m'" &&
		[[ ${sql_rows[0]:-} == "$((max_aid + new_rows))" ]]; do
		((EPOCHSECONDS < deadline)) || fail "the incremental run of $m did not end"
		sleep 0.05
	done
	w=$(now)
	cpu1=$(cpu_seconds "$ferry_pid")
	ferry_sql "SELECT duration_seconds, rows, partitions FROM qrep_runs WHERE mirror = '$m' ORDER BY run DESC LIMIT 1" ||
		fail "reading qrep_runs: $sql_error"
	IFS=$'\t' read -r run_secs run_rows run_parts <<<"${sql_rows[0]}"
	[[ $run_rows == "$new_rows" ]] || fail "the incremental run copied $run_rows rows, not $new_rows"
	inc_visible=$(elapsed "$visible" "$t0")
	inc_done=$(elapsed "$w" "$t0")
	inc_cpu=$(elapsed "$cpu1" "$cpu0")
	say "increment: $new_rows new rows visible after $inc_visible s, watermark moved after $inc_done s" \
		"(the run itself: $run_secs s, $run_parts partition(s); $inc_cpu CPU-s)"
	ferry_sql "DROP MIRROR $m" || fail "DROP MIRROR $m: $sql_error"
	pg -d "$source_db" -c "DELETE FROM public.$table WHERE aid > $max_aid"
	pg -d "$source_db" -c "VACUUM ANALYZE public.$table"
}

# ---------------------------------------------------------------------------------------------
# Main

note_machine_load
prepare_source
rows=$(pg_value "$source_db" "SELECT count(*) FROM public.$table")
max_aid=$(pg_value "$source_db" "SELECT max(aid) FROM public.$table")
say "fingerprint of $table ($rows rows)"
print=$(pg_fingerprint "$source_db" "$table")

fresh_ch_database bench_qrep
start_ferry "$catalog_db" "$ferry_port"
ferry_pg_peer bench_src "$source_db" || fail "CREATE PEER bench_src: $sql_error"
ferry_ch_peer bench_ch bench_qrep || fail "CREATE PEER bench_ch: $sql_error"
at_exit "drop_slots_like 'ferry\\_bench\\_cdc%'"
for ((run = 1; run <= runs; run++)); do
	say "run $run/$runs: cdc"
	load_once cdc bench_cdc
	say "run $run/$runs: query"
	load_once query bench_query
done
say "incremental run"
increment
stop_ferry

# ---------------------------------------------------------------------------------------------
# Figures

put scale "$scale"
put workers "$workers"
put rows_per_partition "$partition_rows"
put runs "$runs"
put rows "$rows"
for method in cdc query; do
	s=$(median "${secs[$method]}")
	put "$method.seconds" "$s"
	put "$method.seconds_each_run" "${secs[$method]// /,}"
	put "$method.rows_per_second" "$(awk -v r="$rows" -v s="$s" 'BEGIN { printf "%.0f", (s > 0 ? r / s : 0) }')"
	put "$method.completed_seconds" "$(median "${done_secs[$method]}")"
	put "$method.cpu_seconds" "$(median "${cpu[$method]}")"
	put "$method.peak_rss_mb" "$((rss[$method] / 1024))"
done
put ratio.query_over_cdc "$(ratio_of "${r[query.seconds]}" "${r[cdc.seconds]}")"
put increment.rows "$new_rows"
put increment.visible_seconds "$inc_visible"
put increment.watermark_seconds "$inc_done"
put increment.run_seconds "$run_secs"
put increment.partitions "$run_parts"
put increment.cpu_seconds "$inc_cpu"
write_results

printf '\nscripts/bench qrep  %s  scale=%s workers=%s runs=%s  (PostgreSQL %s, ClickHouse %s)\n' \
	"$commit" "$scale" "$workers" "$runs" "$(pg_value postgres "SHOW server_version" | cut -d' ' -f1)" \
	"$(ch "SELECT version()")"
machine_caveat
printf '\n%-34s %9s %9s %10s %7s %7s\n' load rows seconds rows/s CPU-s RSS-MB
printf '%-34s %9s %9s %10s %7s %7s\n' "CDC initial load ($table)" "$rows" "${r[cdc.seconds]}" \
	"${r[cdc.rows_per_second]}" "${r[cdc.cpu_seconds]}" "${r[cdc.peak_rss_mb]}"
printf '%-34s %9s %9s %10s %7s %7s\n' "query mirror, first full run" "$rows" "${r[query.seconds]}" \
	"${r[query.rows_per_second]}" "${r[query.cpu_seconds]}" "${r[query.peak_rss_mb]}"
printf '%-34s %9s %9s %10s %7s %7s\n' "query mirror, incremental run (1 %)" "$new_rows" "$inc_visible" \
	"$(awk -v r="$new_rows" -v s="$inc_visible" 'BEGIN { printf "%.0f", (s > 0 ? r / s : 0) }')" "$inc_cpu" -
cat <<-EOF

	query / cdc: ${r[ratio.query_over_cdc]}× the time of the CDC initial load (the goal: at most 1.2).
	Full loads: CREATE MIRROR → every row visible (count(), polled every ${poll_seconds} s), checked by
	fingerprint first; medians of $runs run(s). Incremental: EXECUTE MIRROR → the new rows visible
	(the watermark moved after $inc_done s; the run itself took $run_secs s in $run_parts partition(s)).
EOF
print_results
