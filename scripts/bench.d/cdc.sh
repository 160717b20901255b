#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# scripts/bench cdc: Ferry's streaming into ClickHouse, against PostgreSQL's own decoding of the
# same WAL, in one run.
#
#   scripts/bench cdc [--runs N] [--changes N] [--seconds N]
#
# Everything is built afresh: the source database ferry_bench_cdc, Ferry's catalog
# ferry_bench_cdc_catalog and the ClickHouse database bench_cdc. The release daemon runs on its
# own port, driven with psql; its mirrors keep their default options throughout.
#
# (a) Throughput. Mirror bench_cdc streams bench_changes (workload.sh; 200 000 rows loaded
#     first). Each run: PAUSE MIRROR; pg_copy_logical_replication_slot of the mirror's slot; a
#     workload of --changes row changes in 100 transactions (inserts, updates, deletes) while the
#     mirror is paused. Then on that same WAL range:
#       decode (server)  pg_logical_slot_peek_binary_changes(copy, end, NULL, 'proto_version', …,
#                        'publication_names', the mirror's publication), timed inside the server
#                        (clock_timestamp in a function); once with the protocol options Ferry's
#                        walsender was started with (read from pg_stat_activity), once with
#                        'binary' 'true' added or left out (the other way)
#       pg_recvlogical   --endpos at the exact end LSN of the last commit (the decoding's last
#                        row), same options, to /dev/null, timed as a process
#       ferry            RESUME MIRROR → the last change visible in ClickHouse: the workload's last
#                        row (its highest id, the last change in the WAL) is polled every 50 ms,
#                        and then the table's fingerprint under FINAL must equal the source's
#     Each is checked: the decodings count exactly --changes row changes and agree on the end;
#     pg_recvlogical's slot ends confirmed at that end; ClickHouse matches the source.
#     Separately: how long after the data was visible mirror_status.confirmed_lsn reached the
#     end, and Ferry's CPU-seconds (utime + stime from /proc) from RESUME to visible.
# (b) One transaction inserting --changes rows, the mirror running: COMMIT returned → visible
#     (its last row, then the fingerprint); and PostgreSQL's own decoding of that transaction,
#     server side, on a copy of the mirror's slot made just before it.
# (c) Lag. pgbench -i -s 10, then mirror bench_tpcb over the four pgbench tables
#     (pgbench_history gets a bigserial key) and bench_marker, default options (no
#     sync_interval). While pgbench -T --seconds -c 4 -j 2 runs, the marker row is set to now()
#     every 0.5 s and ClickHouse is polled every 50 ms; a marker's lag is the time it was first
#     seen there minus the time its UPDATE returned. Every second, system.parts gives each
#     table's active parts and its highest block number: each INSERT into a MergeTree takes a
#     block number, so their growth counts the inserts (this ClickHouse keeps no query_log or
#     part_log). After pgbench, ClickHouse must match the source's sum(abalance) and history count.
# (d) Ferry's CPU-seconds and peak RSS (VmHWM) over the whole run.
# (a) and (b) run --runs times, interleaved, and medians are reported; (c) runs once.
#
# Options and settings:
#   --runs N                    repeat (a) and (b), report medians              default 1
#   --changes N                 row changes per workload (rounded to 100s)      default 1000000
#   --seconds N                 pgbench duration                                default 60
#   FERRY_BENCH_CDC_PORT        the daemon's psql port                          default 9920
#   FERRY_BENCH_TIMEOUT         seconds any one wait may take                   default 1800
#   FERRY_STATE_DIR and the port settings of scripts/services are honoured.
#
# Output: a table on stdout (progress on stderr), the same figures as key=value lines in
# $FERRY_STATE_DIR/bench/cdc-<timestamp>.txt, and the daemon's log beside it.
set -euo pipefail
mode=cdc
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/fingerprint.sh"
source "$(dirname "${BASH_SOURCE[0]}")/workload.sh"

source_db=ferry_bench_cdc
catalog_db=ferry_bench_cdc_catalog
ch_db=bench_cdc
ref_slot=ferry_bench_cdc_ref
ferry_port=${FERRY_BENCH_CDC_PORT:-9920}
pgbench_scale=10
marker_every_us=500000
poll_seconds=0.05
confirm_timeout=120

usage() { usage_from "${BASH_SOURCE[0]}"; }

runs=1
seconds=60
changes=1000000
while [[ $# -gt 0 ]]; do
	case $1 in
	--runs | --changes | --seconds | --runs=* | --changes=* | --seconds=*)
		option_arg "$@"
		shift "$optshift"
		positive_arg
		case $opt in
		--runs) runs=$optarg ;;
		--changes) changes=$optarg ;;
		--seconds) seconds=$optarg ;;
		esac
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
set_workload_size "$changes"

setup_services
need_pg_tools pgbench pg_recvlogical
build_ferry

# The mirrors' slots and the reference slot would make the shared cluster keep WAL for ever.
drop_source_slots() {
	pg -d postgres -A -t -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		WHERE NOT active AND database = '$source_db'" >/dev/null
}
at_exit drop_source_slots
at_exit "stop_job \${recvlogical_pid:-}; stop_job \${pgbench_pid:-}"

# ---------------------------------------------------------------------------------------------
# Helpers

declare -A runs_of=()
# Appends value $2 of run to the list $1 (medians are taken at the end).
add() { runs_of[$1]+="${runs_of[$1]:+ }$2"; }

ch_changes() { ch_fingerprint "$ch_db.bench_changes" bench_changes ferry; }

# Waits until ClickHouse's bench_changes shows the workload's last row (id $hi) and then its
# fingerprint equals the source's ($1); sets visible_at to the poll that saw it all. Also fails
# when the mirror fails.
visible_at=
wait_visible() {
	local want=$1 deadline=$((EPOCHSECONDS + wait_timeout)) next_state=0 warned=0 t
	while :; do
		t=$(now)
		if [[ $(ch "SELECT count() FROM $ch_db.bench_changes WHERE id = $hi") != 0 ]]; then
			if [[ $(ch_changes) == "$want" ]]; then
				visible_at=$t
				return
			fi
			((warned++)) || say "the last row is in ClickHouse before the rest of the workload: waiting for the fingerprint"
		fi
		if (($(now_us) > next_state)); then
			mirror_state bench_cdc
			next_state=$(($(now_us) + 500000))
		fi
		((EPOCHSECONDS < deadline)) || fail "bench_changes in ClickHouse: not equal to the source after $wait_timeout s"
		sleep "$poll_seconds"
	done
}

# Times the server-side decoding of slot $ref_slot up to LSN $1 with binary $2 (true/false):
# sets dec_seconds, dec_changes and dec_end (the end LSN of the last commit decoded).
decode_server_side() {
	local out
	out=$(pg_value "$source_db" "SELECT seconds, changes, last_lsn FROM bench_decode('$ref_slot', '$1',
		'$proto', $(sql_literal "$publication"), $2)") || fail "server-side decoding failed"
	IFS='|' read -r dec_seconds dec_changes dec_end <<<"$out"
	dec_seconds=$(awk -v s="$dec_seconds" 'BEGIN { printf "%.3f", s }')
	((dec_changes == changes)) || fail "the server-side decoding (binary $2) gave $dec_changes row changes, not $changes"
}

# Times pg_recvlogical on slot $ref_slot up to LSN $1: sets recv_seconds.
recvlogical() {
	local endpos=$1 t0 t1 rc=0 confirmed opts=(-o "proto_version=$proto" -o "publication_names=$publication")
	[[ $ferry_binary != true ]] || opts+=(-o binary=true)
	t0=$(now)
	PGPASSWORD=$pg_password PGSSLMODE=disable timeout "$wait_timeout" \
		pg_recvlogical -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$source_db" --slot "$ref_slot" \
		--start --endpos "$endpos" "${opts[@]}" --no-loop -f /dev/null 2>"$tmp/recvlogical.err" &
	recvlogical_pid=$!
	wait "$recvlogical_pid" || rc=$?
	t1=$(now)
	recvlogical_pid=
	((rc == 0)) || fail "pg_recvlogical failed ($rc): $(cat "$tmp/recvlogical.err")"
	confirmed=$(pg_value "$source_db" "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$ref_slot'")
	(($(lsn_num "$confirmed") >= $(lsn_num "$endpos"))) || fail "pg_recvlogical stopped at $confirmed, before $endpos"
	recv_seconds=$(elapsed "$t1" "$t0")
}

# Waits until mirror_status.confirmed_lsn of mirror $1 reaches LSN $2; prints the seconds from
# $3 until then, or "not within N s".
confirmed_after() {
	local want t ddl=$((EPOCHSECONDS + confirm_timeout))
	want=$(lsn_num "$2")
	while :; do
		ferry_sql "SELECT coalesce(confirmed_lsn::text, '0/0') FROM mirror_status WHERE mirror = '$1'" ||
			fail "polling mirror_status: $sql_error"
		t=$(now)
		if (($(lsn_num "${sql_rows[0]:-0/0}") >= want)); then
			elapsed "$t" "$3"
			return
		fi
		((EPOCHSECONDS < ddl)) || {
			printf 'not within %s s' "$confirm_timeout"
			return
		}
		sleep "$poll_seconds"
	done
}

# ---------------------------------------------------------------------------------------------
# (a) and (b)

setup_changes() {
	say "bench_changes with $initial_rows rows; mirror bench_cdc"
	create_changes_table "$source_db"
	# Server-side decoding, timed inside the server; row changes are the I, U and D messages.
	pg -d "$source_db" <<-'SQL'
		CREATE FUNCTION bench_decode(slot name, upto pg_lsn, proto text, pub text, bin bool,
		                             OUT seconds float8, OUT changes bigint, OUT last_lsn pg_lsn)
		LANGUAGE plpgsql AS $$
		DECLARE t0 timestamptz := clock_timestamp();
		BEGIN
		    SELECT count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68)), max(lsn)
		      INTO changes, last_lsn
		      FROM pg_logical_slot_peek_binary_changes(slot, upto, NULL, VARIADIC
		           ARRAY['proto_version', proto, 'publication_names', pub]
		           || CASE WHEN bin THEN ARRAY['binary', 'true'] ELSE ARRAY[]::text[] END);
		    seconds := extract(epoch FROM clock_timestamp() - t0);
		END $$;
	SQL
	ferry_sql "CREATE MIRROR bench_cdc FROM bench_src TO bench_ch
		WITH TABLE MAPPING (public.bench_changes:bench_changes) WITH (do_initial_copy = true)" ||
		fail "CREATE MIRROR bench_cdc: $sql_error"
	wait_state bench_cdc running
	ferry_sql "SELECT slot_name, publication_name FROM mirror_status WHERE mirror = 'bench_cdc'" ||
		fail "reading mirror_status: $sql_error"
	IFS=$'\t' read -r mirror_slot publication <<<"${sql_rows[0]:-}"
	[[ -n $mirror_slot && -n $publication ]] || fail "mirror bench_cdc has no slot or publication"
	hi=$initial_rows
	wait_visible "$(pg_fingerprint "$source_db" bench_changes)"
	# The pgoutput options Ferry streams with: its walsender's START_REPLICATION command.
	local q deadline=$((EPOCHSECONDS + 60))
	while :; do
		q=$(pg_value postgres "SELECT query FROM pg_stat_activity WHERE backend_type = 'walsender'
			AND query LIKE 'START_REPLICATION%' AND position($(sql_literal "\"$mirror_slot\"") IN query) > 0 LIMIT 1")
		[[ -z $q ]] || break
		((EPOCHSECONDS < deadline)) || fail "no walsender of slot $mirror_slot after 60 s"
		sleep 0.2
	done
	proto=$(sed -n "s/.*proto_version '\{0,1\}\([0-9]*\).*/\1/p" <<<"$q")
	[[ -n $proto ]] || proto=1
	ferry_binary=false
	if grep -Eqi "binary '?(true|on|1)" <<<"$q"; then ferry_binary=true; fi
	put ferry.start_replication "$q"
	say "ferry streams with proto_version $proto, binary $ferry_binary"
}

throughput_run() {
	local other=true t_resume cpu0 wal want confirmed
	[[ $ferry_binary != true ]] || other=false
	ch_settle
	ferry_sql "PAUSE MIRROR bench_cdc" || fail "PAUSE MIRROR bench_cdc: $sql_error"
	wait_state bench_cdc paused
	wait_slot_inactive "$mirror_slot"
	drop_slots_like "${ref_slot//_/\\_}"
	pg_value "$source_db" "SELECT pg_copy_logical_replication_slot('$mirror_slot', '$ref_slot')" >/dev/null
	write_workload "$tmp/workload.sql"
	say "workload (mirror paused): $changes row changes in $txns transactions"
	local start_lsn
	start_lsn=$(pg_value "$source_db" "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$ref_slot'")
	run_workload "$tmp/workload.sql" "$source_db"
	want=$(pg_fingerprint "$source_db" bench_changes)
	wal=$(pg_value "$source_db" "SELECT pg_wal_lsn_diff('$workload_lsn', '$start_lsn')::bigint")
	add wal_bytes "$wal"

	# A first, untimed decoding finds the end LSN of the last commit (and reads the WAL into the
	# page cache for every reader after it, Ferry included); the timed ones stop there.
	decode_server_side "$workload_lsn" "$ferry_binary"
	local end=$dec_end
	decode_server_side "$end" "$ferry_binary"
	add decode.seconds "$dec_seconds"
	decode_server_side "$end" "$other"
	add decode_other.seconds "$dec_seconds"
	[[ $dec_end == "$end" ]] || fail "the decodings end at $end and $dec_end"
	recvlogical "$end"
	add recvlogical.seconds "$recv_seconds"
	pg_value "$source_db" "SELECT pg_drop_replication_slot('$ref_slot')" >/dev/null
	say "server-side decoding ${runs_of[decode.seconds]##* } s (binary $ferry_binary)," \
		"${runs_of[decode_other.seconds]##* } s (binary $other); pg_recvlogical $recv_seconds s; end $end"

	ch_settle
	cpu0=$(cpu_seconds "$ferry_pid")
	t_resume=$(now)
	ferry_sql "RESUME MIRROR bench_cdc" || fail "RESUME MIRROR bench_cdc: $sql_error"
	wait_visible "$want"
	add ferry.seconds "$(elapsed "$visible_at" "$t_resume")"
	add ferry.cpu_seconds "$(elapsed "$(cpu_seconds "$ferry_pid")" "$cpu0")"
	confirmed=$(confirmed_after bench_cdc "$end" "$visible_at")
	add confirmed_after_visible_seconds "${confirmed// /_}"
	say "ferry: visible $(elapsed "$visible_at" "$t_resume") s after RESUME; confirmed_lsn caught up $confirmed s after that"
}

# Waits until slot $1 has no walsender.
wait_slot_inactive() {
	local i
	for ((i = 0; i < 600; i++)); do
		[[ $(pg_value postgres "SELECT active FROM pg_replication_slots WHERE slot_name = '$1'") == t ]] || return 0
		sleep 0.1
	done
	fail "slot $1 is still in use 60 s after PAUSE"
}

big_run() {
	local want
	ch_settle
	write_big_transaction "$tmp/big.sql" "$changes"
	# A copy of the running mirror's slot, for PostgreSQL's own decoding of the transaction
	# afterwards (the part of the latency no client can avoid).
	drop_slots_like "${ref_slot//_/\\_}"
	pg_value "$source_db" "SELECT pg_copy_logical_replication_slot('$mirror_slot', '$ref_slot')" >/dev/null
	say "one transaction inserting $changes rows"
	run_workload "$tmp/big.sql" "$source_db"
	want=$(pg_fingerprint "$source_db" bench_changes)
	wait_visible "$want"
	add big.seconds "$(elapsed "$visible_at" "$workload_end")"
	add big.commit_seconds "$(elapsed "$workload_end" "$workload_start")"
	decode_server_side "$workload_lsn" "$ferry_binary"
	pg_value "$source_db" "SELECT pg_drop_replication_slot('$ref_slot')" >/dev/null
	add big.decode_seconds "$dec_seconds"
	say "big transaction: visible $(elapsed "$visible_at" "$workload_end") s after its COMMIT returned;" \
		"PostgreSQL decodes it in $dec_seconds s"
}

# ---------------------------------------------------------------------------------------------
# (c) Lag under pgbench

lag_tables=(pgbench_accounts pgbench_branches pgbench_tellers pgbench_history bench_marker)

# One system.parts sample: "table active_parts highest_block" lines of the lag tables.
parts_sample() {
	local list
	list=$(printf "'%s'," "${lag_tables[@]}")
	ch "SELECT table, count(), max(max_block_number) FROM system.parts
		WHERE database = '$ch_db' AND active AND table IN (${list%,}) GROUP BY table ORDER BY table FORMAT TSV"
}

lag_run() {
	local marker_sql ch_marker pgb_out next now_t v a b obs t_end deadline want got i mapping='' t
	local -a pend_val=() pend_t=() lags=() per_second=()
	local -A parts_max=() block0=() block_prev=()
	local inserts_max=0 sample_prev_t cpu0 tbl n blk sum t_pgbench
	say "pgbench -i -s $pgbench_scale; mirror bench_tpcb (default options)"
	PGPASSWORD=$pg_password PGSSLMODE=disable PGOPTIONS='-c client_min_messages=warning' \
		pgbench -i -s "$pgbench_scale" -q -h "$pg_host" -p "$pg_port" -U "$pg_user" "$source_db" >&2 ||
		fail "pgbench -i failed"
	pg -d "$source_db" <<-'SQL'
		ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY;
		CREATE TABLE bench_marker (id int PRIMARY KEY, t timestamptz);
		INSERT INTO bench_marker VALUES (1, now());
	SQL
	for t in "${lag_tables[@]}"; do mapping+="${mapping:+, }public.$t:$t"; done
	ferry_sql "CREATE MIRROR bench_tpcb FROM bench_src TO bench_ch WITH TABLE MAPPING ($mapping)
		WITH (do_initial_copy = true)" || fail "CREATE MIRROR bench_tpcb: $sql_error"
	wait_state bench_tpcb running
	ch_settle

	session_open source "$pg_password" "$pg_port" "$pg_user" "$source_db"
	marker_sql="UPDATE bench_marker SET t = now() WHERE id = 1 RETURNING (extract(epoch FROM t) * 1000000)::bigint"
	ch_marker="SELECT toUnixTimestamp64Micro(t) FROM $ch_db.bench_marker FINAL WHERE id = 1 AND _ferry_is_deleted = 0"
	pgb_out=$bench_dir/cdc-$stamp-pgbench.log
	while read -r tbl n blk; do block0[$tbl]=$blk block_prev[$tbl]=$blk; done < <(parts_sample)
	cpu0=$(cpu_seconds "$ferry_pid")
	t_pgbench=$(now)
	say "pgbench -T $seconds -c 4 -j 2, a marker every $((marker_every_us / 1000)) ms"
	PGPASSWORD=$pg_password PGSSLMODE=disable \
		pgbench -T "$seconds" -c 4 -j 2 -h "$pg_host" -p "$pg_port" -U "$pg_user" "$source_db" \
		>"$pgb_out" 2>&1 &
	pgbench_pid=$!
	next=$(now_us)
	sample_prev_t=$next
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
		# Once a second while pgbench runs: active parts and inserts (block numbers taken).
		if alive "$pgbench_pid" && ((now_t - sample_prev_t >= 1000000)); then
			sum=0
			while read -r tbl n blk; do
				parts_max[$tbl]=$(max_of "${parts_max[$tbl]:-0}" "$n")
				sum=$((sum + blk - ${block_prev[$tbl]:-0}))
				block_prev[$tbl]=$blk
			done < <(parts_sample)
			per_second+=("$(awk -v n="$sum" -v us="$((now_t - sample_prev_t))" 'BEGIN { printf "%.1f", n * 1e6 / us }')")
			inserts_max=$(awk -v m="$inserts_max" -v r="${per_second[-1]}" 'BEGIN { printf "%.1f", (r > m ? r : m) }')
			sample_prev_t=$now_t
		fi
		((EPOCHSECONDS < deadline)) || fail "a marker was not seen in ClickHouse $wait_timeout s after pgbench"
		sleep "$poll_seconds"
	done
	wait "$pgbench_pid" || fail "pgbench failed: $(tail -n 20 "$pgb_out")"
	pgbench_pid=
	t_end=$(now)
	put lag.ferry_cpu_seconds "$(elapsed "$(cpu_seconds "$ferry_pid")" "$cpu0")"
	session_close source
	((${#lags[@]} > 0)) || fail "no lag samples"
	put lag.tps "$(awk '/^tps = / { printf "%.0f", $3; exit }' "$pgb_out")"
	put lag.samples "${#lags[@]}"
	for i in p50:0.50 p99:0.99 max:1; do
		put "lag.${i%%:*}_seconds" "$(printf '%s\n' "${lags[@]}" | awk '{ printf "%.6f\n", $1 / 1e6 }' | percentile "${i#*:}")"
	done

	# Ferry must end where the source is.
	want=$(pg_value "$source_db" "SELECT sum(abalance) || ' ' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts")
	deadline=$((EPOCHSECONDS + wait_timeout))
	while :; do
		got=$(ch "SELECT concat(toString((SELECT sum(abalance) FROM $ch_db.pgbench_accounts FINAL WHERE _ferry_is_deleted = 0)),
			' ', toString((SELECT count() FROM $ch_db.pgbench_history FINAL WHERE _ferry_is_deleted = 0)))")
		[[ $got == "$want" ]] && break
		mirror_state bench_tpcb
		((EPOCHSECONDS < deadline)) ||
			fail "ClickHouse's pgbench tables (sum(abalance) count(history)) are $got after $wait_timeout s, the source's $want"
		sleep "$poll_seconds"
	done
	put lag.caught_up_after_pgbench_seconds "$(elapsed "$(now)" "$t_end")"

	# Inserts: block numbers taken per table, from pgbench's start until ClickHouse matched.
	sum=0
	while read -r tbl n blk; do
		sum=$((sum + blk - ${block0[$tbl]:-0}))
		put "lag.inserts.$tbl" $((blk - ${block0[$tbl]:-0}))
		put "lag.max_active_parts.$tbl" "${parts_max[$tbl]:-0}"
	done < <(parts_sample)
	put lag.inserts_total "$sum"
	put lag.inserts_per_second "$(awk -v n="$sum" -v s="$(elapsed "$(now)" "$t_pgbench")" 'BEGIN { printf "%.1f", n / s }')"
	put lag.inserts_per_second_max_1s "$inserts_max"
	put lag.inserts_per_second_each_second "$(
		IFS=,
		echo "${per_second[*]}"
	)"
	local pm=0
	for tbl in "${!parts_max[@]}"; do pm=$(max_of "$pm" "${parts_max[$tbl]}"); done
	put lag.max_active_parts "$pm"
	say "lag p50 ${r[lag.p50_seconds]} s, p99 ${r[lag.p99_seconds]} s, max ${r[lag.max_seconds]} s over ${#lags[@]} samples;" \
		"tps ${r[lag.tps]}; ${r[lag.inserts_per_second]} ClickHouse inserts/s; at most $pm active parts in a table"
}

# An idle, caught-up mirror: its catalog writes per second and Ferry's CPU.
idle_run() {
	local c0 c1 t0 t1 cpu0
	sleep 2
	c0=$(pg_value postgres "SELECT xact_commit FROM pg_stat_database WHERE datname = '$catalog_db'")
	cpu0=$(cpu_seconds "$ferry_pid")
	t0=$(now)
	sleep 5
	c1=$(pg_value postgres "SELECT xact_commit FROM pg_stat_database WHERE datname = '$catalog_db'")
	t1=$(now)
	put idle.catalog_commits_per_second "$(awk -v a="$c1" -v b="$c0" -v s="$(elapsed "$t1" "$t0")" 'BEGIN { printf "%.1f", (a - b) / s }')"
	put idle.ferry_cpu_percent "$(awk -v a="$(cpu_seconds "$ferry_pid")" -v b="$cpu0" -v s="$(elapsed "$t1" "$t0")" \
		'BEGIN { printf "%.1f", 100 * (a - b) / s }')"
}

# ---------------------------------------------------------------------------------------------
# Main

note_machine_load
say "fresh databases: $source_db, $catalog_db (PostgreSQL), $ch_db (ClickHouse)"
port_open "$ferry_port" && die "port $ferry_port is taken by another process (set FERRY_BENCH_CDC_PORT)"
drop_source_slots
fresh_pg_database "$source_db"
fresh_ch_database "$ch_db"
start_ferry "$catalog_db" "$ferry_port"
ferry_pg_peer bench_src "$source_db" || fail "CREATE PEER bench_src: $sql_error"
ferry_ch_peer bench_ch "$ch_db" || fail "CREATE PEER bench_ch: $sql_error"

setup_changes
for ((run = 1; run <= runs; run++)); do
	say "run $run/$runs: throughput"
	throughput_run
	say "run $run/$runs: one big transaction"
	big_run
done
ferry_sql "DROP MIRROR bench_cdc" || fail "DROP MIRROR bench_cdc: $sql_error"
lag_run
idle_run
put ferry.cpu_seconds_whole_run "$(cpu_seconds "$ferry_pid")"
put ferry.peak_rss_mb $(($(vm_hwm_kb "$ferry_pid") / 1024))
stop_ferry

# ---------------------------------------------------------------------------------------------
# Figures

for k in "${!runs_of[@]}"; do
	if [[ ${runs_of[$k]} == *not_within* ]]; then
		put "$k" "not within $confirm_timeout s in $(grep -o not_within <<<"${runs_of[$k]}" | wc -l) of $runs run(s)"
	else
		put "$k" "$(median "${runs_of[$k]}")"
	fi
	put "$k.each_run" "${runs_of[$k]// /,}"
done
other_binary=true
[[ $ferry_binary != true ]] || other_binary=false
put changes "$changes"
put transactions "$txns"
put initial_rows "$initial_rows"
put runs "$runs"
put ferry.proto_version "$proto"
put ferry.binary "$ferry_binary"
put wal_bytes "${r[wal_bytes]%.*}"
put wal_mb $((r[wal_bytes] / 1048576))
put ratio.ferry_vs_decode "$(ratio_of "${r[ferry.seconds]}" "${r[decode.seconds]}")"
put ratio.ferry_vs_recvlogical "$(ratio_of "${r[ferry.seconds]}" "${r[recvlogical.seconds]}")"
put ferry.cpu_ns_per_change "$(awk -v c="${r[ferry.cpu_seconds]}" -v n="$changes" 'BEGIN { printf "%.0f", c * 1e9 / n }')"
put pgbench.scale "$pgbench_scale"
put pgbench.seconds "$seconds"
write_results

rps() { awk -v n="$changes" -v s="$1" 'BEGIN { if (s > 0) printf "%.0f", n / s; else printf "-" }'; }
row() { printf '  %-62s %8s %10s  %s\n' "$@"; }

printf '\nscripts/bench cdc  %s  changes=%s runs=%s seconds=%s  (PostgreSQL %s, ClickHouse %s)\n' \
	"$commit" "$changes" "$runs" "$seconds" "$(pg_value postgres "SHOW server_version" | cut -d' ' -f1)" \
	"$(ch "SELECT version()")"
machine_caveat
printf '\n(a) %s row changes in %s transactions (each %s UPDATEs, %s DELETEs, %s INSERTs), %s MB of WAL,\n' \
	"$changes" "$txns" "$txn_updates" "$txn_deletes" "$txn_inserts" "${r[wal_mb]}"
printf '    made while the mirror was paused; the same WAL range for every line; medians of %s run(s)\n' "$runs"
row '' seconds 'changes/s' 'ferry ÷ this'
row "PostgreSQL decoding, server side (binary $ferry_binary, as Ferry)" "${r[decode.seconds]}" \
	"$(rps "${r[decode.seconds]}")" "${r[ratio.ferry_vs_decode]}"
row "PostgreSQL decoding, server side (binary $other_binary)" "${r[decode_other.seconds]}" \
	"$(rps "${r[decode_other.seconds]}")" "$(ratio_of "${r[ferry.seconds]}" "${r[decode_other.seconds]}")"
row 'pg_recvlogical --endpos (same options) > /dev/null' "${r[recvlogical.seconds]}" \
	"$(rps "${r[recvlogical.seconds]}")" "${r[ratio.ferry_vs_recvlogical]}"
row 'ferry: RESUME → last change visible in ClickHouse' "${r[ferry.seconds]}" "$(rps "${r[ferry.seconds]}")" ''
printf '  ferry CPU %s s (%s ns a change); confirmed_lsn showed caught up %s s after the data was visible\n' \
	"${r[ferry.cpu_seconds]}" "${r[ferry.cpu_ns_per_change]}" "${r[confirmed_after_visible_seconds]}"
printf '\n(b) one transaction of %s INSERTs: COMMIT returned → visible in ClickHouse %s s  (commit took %s s;\n' \
	"$changes" "${r[big.seconds]}" "${r[big.commit_seconds]}"
printf '    PostgreSQL decodes it, server side, in %s s)\n' "${r[big.decode_seconds]}"
printf '\n(c) pgbench -s %s -T %s -c 4 -j 2 (%s tps), mirror with default options, a marker every %s ms:\n' \
	"$pgbench_scale" "$seconds" "${r[lag.tps]}" "$((marker_every_us / 1000))"
printf '    lag p50 %s s, p99 %s s, max %s s  (%s samples: UPDATE returned → seen in ClickHouse)\n' \
	"${r[lag.p50_seconds]}" "${r[lag.p99_seconds]}" "${r[lag.max_seconds]}" "${r[lag.samples]}"
printf '    ClickHouse inserts: %s/s on average, at most %s/s over a second; active parts per table at most %s\n' \
	"${r[lag.inserts_per_second]}" "${r[lag.inserts_per_second_max_1s]}" "${r[lag.max_active_parts]}"
printf '    ferry CPU during pgbench %s s; ClickHouse matched the source %s s after pgbench ended\n' \
	"${r[lag.ferry_cpu_seconds]}" "${r[lag.caught_up_after_pgbench_seconds]}"
printf '    idle afterwards: %s catalog commits/s, ferry %s %% CPU\n' \
	"${r[idle.catalog_commits_per_second]}" "${r[idle.ferry_cpu_percent]}"
printf '\n(d) ferry over the whole run: %s CPU-s, peak RSS %s MB\n' "${r[ferry.cpu_seconds_whole_run]}" "${r[ferry.peak_rss_mb]}"
print_results
