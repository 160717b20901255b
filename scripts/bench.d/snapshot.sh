#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# scripts/bench snapshot: Ferry's initial load against the two other ways of loading PostgreSQL
# tables into ClickHouse that need no extra software, side by side in one run.
#
#   scripts/bench snapshot [--runs N] [--rebuild] [--methods ferry,pull,csv]
#
# The tables of the source database ferry_bench (scripts/bench.d/source.sh) are loaded into the
# same ClickHouse three ways, each into a database of its own created afresh:
#
#   ferry   the release daemon on its own port and catalog; one initial-copy-only mirror per
#           table. Its time is time to data visible: from CREATE MIRROR until count() of the
#           destination table (polled every 50 ms) shows every source row. Its CPU is the
#           daemon's utime + stime (/proc/PID/stat, all threads) over the load, as a difference,
#           until the rows are visible and the mirror also says `completed`; its peak RSS is
#           VmHWM, reset before each table.
#   pull    ClickHouse's own INSERT INTO … SELECT * FROM postgresql(…), timed until it returns
#   csv     psql \copy … TO STDOUT (FORMAT csv) piped into an HTTP INSERT … FORMAT CSV, timed
#           until the INSERT returns
#
# pull and csv load a MergeTree table ORDER BY the primary key with the column types Ferry gives
# its tables (derived from the source's catalog by the README's type mapping, and checked against
# Ferry's tables when both ran). Every load is checked before its time counts: the row count and
# a fingerprint of every column (source.sh) must equal the source's. With --runs N the methods
# run N times, interleaved (ferry, pull, csv, ferry, …), and medians are reported.
#
# Options and settings:
#   --runs N            repeat the methods N times and report medians     default 1
#   --rebuild           drop and rebuild the source database
#   --methods LIST      comma-separated subset of ferry,pull,csv           default all three
#   SCALE               pgbench scale of the source                        default 50
#   WIDE_ROWS           rows of bench_wide                                 default 1000000
#   WORKERS             Ferry's snapshot_max_parallel_workers              default 4
#   FERRY_BENCH_PORT    the benchmarked daemon's psql port                 default 9910
#   FERRY_BENCH_TIMEOUT seconds one load may take before the run aborts    default 1800
#   FERRY_STATE_DIR and the port settings of scripts/services are honoured.
#
# Output: the table on stdout (progress on stderr), and the same figures as key=value lines in
# $FERRY_STATE_DIR/bench/snapshot-<timestamp>.txt next to the daemon's log of that run.
set -euo pipefail
mode=snapshot
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/source.sh"
source "$(dirname "${BASH_SOURCE[0]}")/fingerprint.sh"

catalog_db=ferry_bench_catalog
tables=(pgbench_accounts bench_wide)
all_methods=(ferry pull csv)
ferry_port=${FERRY_BENCH_PORT:-9910}
partition_rows=250000
poll_seconds=0.05

usage() { usage_from "${BASH_SOURCE[0]}"; }

runs=1
rebuild=0
methods=("${all_methods[@]}")
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
	--methods | --methods=*)
		option_arg "$@"
		shift "$optshift"
		methods=()
		IFS=, read -r -a wanted <<<"$optarg"
		for m in "${wanted[@]}"; do
			case $m in
			ferry | pull | csv) [[ " ${methods[*]} " == *" $m "* ]] || methods+=("$m") ;;
			*)
				say "unknown method: $m"
				usage
				;;
			esac
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
is_uint "$ferry_port" || die "FERRY_BENCH_PORT must be a port number, not '$ferry_port'"
positive "$wait_timeout" || die "FERRY_BENCH_TIMEOUT must be a number of seconds, not '$wait_timeout'"

uses() { [[ " ${methods[*]} " == *" $1 "* ]]; }

setup_services
need_pg_tools pgbench
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if uses ferry; then build_ferry; fi

# ---------------------------------------------------------------------------------------------
# ClickHouse tables for pull and csv: the columns Ferry creates for the source table (README,
# "Type mapping"), without Ferry's own _ferry_* columns, in a MergeTree ordered by the key.

ch_column_type() {
	local typname=$1 typmod=$2 elem=$3 t
	if [[ -n $elem ]]; then
		ch_column_type "$elem" "$typmod" ''
		printf -v t 'Array(Nullable(%s))' "$REPLY"
		REPLY=$t
		return
	fi
	case $typname in
	bool) REPLY=Bool ;;
	int2) REPLY=Int16 ;;
	int4) REPLY=Int32 ;;
	int8) REPLY=Int64 ;;
	oid | xid | cid) REPLY=UInt32 ;;
	float4) REPLY=Float32 ;;
	float8) REPLY=Float64 ;;
	numeric)
		local precision=$(((typmod - 4) >> 16 & 65535)) scale=$(((typmod - 4) & 65535))
		if ((typmod < 4 || precision > 76)); then
			REPLY=String
		else
			REPLY="Decimal($precision, $scale)"
		fi
		;;
	uuid) REPLY=UUID ;;
	date) REPLY=Date32 ;;
	timestamp) REPLY='DateTime64(6)' ;;
	timestamptz) REPLY="DateTime64(6, 'UTC')" ;;
	*) REPLY=String ;;
	esac
}

# Prints the CREATE TABLE for source table $1 as ClickHouse table $2.
ch_table_ddl() {
	local src=$1 dest=$2 cols=() name typname typmod notnull elem ndims key
	# Fields split on a unit separator: tabs would merge around the empty ones.
	while IFS=$'\x1f' read -r name typname typmod notnull elem ndims; do
		[[ $ndims -le 1 ]] || die "$src.$name: multi-dimensional arrays are not handled here"
		ch_column_type "$typname" "$typmod" "$elem"
		if [[ $notnull != t && -n $elem ]]; then
			die "$src.$name: a nullable array column (a Variant in Ferry) is not handled here"
		fi
		[[ $notnull == t || -n $elem ]] || REPLY="Nullable($REPLY)"
		cols+=("\`$name\` $REPLY")
	done < <(pg -d "$source_db" -A -t -F $'\x1f' -c "
		SELECT a.attname, t.typname, a.atttypmod, a.attnotnull,
		       CASE WHEN t.typcategory = 'A' THEN e.typname ELSE '' END, a.attndims
		FROM pg_attribute a
		JOIN pg_type t ON t.oid = a.atttypid
		LEFT JOIN pg_type e ON e.oid = t.typelem
		WHERE a.attrelid = 'public.$src'::regclass AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum")
	((${#cols[@]} > 0)) || die "no columns found for public.$src in $source_db"
	key=$(pg_value "$source_db" "
		SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY array_position(i.indkey, a.attnum))
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE i.indrelid = 'public.$src'::regclass AND i.indisprimary")
	[[ -n $key ]] || die "public.$src has no primary key"
	local IFS=,
	printf 'CREATE TABLE %s (%s) ENGINE = MergeTree ORDER BY (%s)' "$dest" "${cols[*]}" "${key//\"/\`}"
}

# The select list for the csv method: arrays as JSON ([1,2,NULL] reads as a ClickHouse array),
# everything else in PostgreSQL's text form.
csv_select_list() {
	pg_value "$source_db" "
		SELECT string_agg(CASE WHEN t.typcategory = 'A' THEN format('array_to_json(%I)', a.attname)
		                       ELSE quote_ident(a.attname) END, ', ' ORDER BY a.attnum)
		FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = 'public.$1'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
}

# ---------------------------------------------------------------------------------------------
# The methods. Each appends its time for a table to secs[method.table] (a space-separated list,
# one entry per run), after checking what it loaded.

declare -A source_rows=() source_print=() secs=() cpu=() rss=() done_secs=()

record() { secs[$1.$2]+="${secs[$1.$2]:+ }$3"; }

# Dies unless ClickHouse table $2 (loaded by method $1, as source table $3) has the source's
# rows and fingerprint.
check_loaded() {
	local method=$1 dest=$2 table=$3 kind=plain got
	[[ $method != ferry ]] || kind=ferry
	got=$(ch_fingerprint "$dest" "$table" "$kind")
	[[ $got == "${source_print[$table]}" ]] ||
		fail "$method loaded $table wrongly: fingerprint (count first) $got, the source's ${source_print[$table]}"
}

run_pull() {
	local table t0 t1 src from
	fresh_ch_database bench_pull
	src="postgresql($(sql_literal "$pg_host:$pg_port"), $(sql_literal "$source_db"), %s, $(sql_literal "$pg_user"), $(sql_literal "$pg_password"))"
	for table in "${tables[@]}"; do
		ch "$(ch_table_ddl "$table" "bench_pull.$table")"
		ch_settle
		# shellcheck disable=SC2059 # src is the format
		printf -v from "$src" "$(sql_literal "$table")"
		t0=$(now)
		ch "INSERT INTO bench_pull.$table SELECT * FROM $from"
		t1=$(now)
		check_loaded pull "bench_pull.$table" "$table"
		record pull "$table" "$(elapsed "$t1" "$t0")"
		say "pull  $table: ${source_rows[$table]} rows in $(elapsed "$t1" "$t0") s (checked)"
	done
}

run_csv() {
	local table t0 t1 cols query
	# PostgreSQL writes timestamptz with its offset; '' must stay '' in a Nullable(String), and
	# char(n)'s padding must stay.
	local csv_settings='&date_time_input_format=best_effort&input_format_csv_empty_as_default=0'
	csv_settings+='&input_format_csv_trim_whitespaces=0'
	fresh_ch_database bench_csv
	for table in "${tables[@]}"; do
		ch "$(ch_table_ddl "$table" "bench_csv.$table")"
		cols=$(csv_select_list "$table")
		query="INSERT INTO bench_csv.$table FORMAT CSV"
		ch_settle
		t0=$(now)
		# -T - streams stdin as it comes (--data-binary @- would read it all first).
		pg -d "$source_db" -c "\\copy (SELECT $cols FROM public.$table) TO STDOUT (FORMAT csv, NULL '\\N')" |
			curl -sS --fail-with-body -T - -X POST "$ch_url?query=$(urlencode "$query")$csv_settings" >&2 ||
			fail "the csv load of $table failed"
		t1=$(now)
		check_loaded csv "bench_csv.$table" "$table"
		record csv "$table" "$(elapsed "$t1" "$t0")"
		say "csv   $table: ${source_rows[$table]} rows in $(elapsed "$t1" "$t0") s (checked)"
	done
}

# The mirror's name for a source table: bench_accounts, bench_wide.
mirror_name() {
	local t=${1#pgbench_}
	printf 'bench_%s' "${t#bench_}"
}

run_ferry() {
	local table m t0 t visible completed n deadline next_state cpu0 cpu1 hwm
	fresh_ch_database bench_ferry
	start_ferry "$catalog_db" "$ferry_port"
	ferry_pg_peer bench_src "$source_db" || fail "CREATE PEER bench_src: $sql_error"
	ferry_ch_peer bench_ch bench_ferry || fail "CREATE PEER bench_ch: $sql_error"
	for table in "${tables[@]}"; do
		m=$(mirror_name "$table")
		ch_settle
		reset_hwm "$ferry_pid"
		cpu0=$(cpu_seconds "$ferry_pid")
		t0=$(now)
		ferry_sql "CREATE MIRROR $m FROM bench_src TO bench_ch
			WITH TABLE MAPPING (public.$table:$table)
			WITH (do_initial_copy = true, initial_copy_only = true,
			      snapshot_num_rows_per_partition = $partition_rows,
			      snapshot_max_parallel_workers = $workers, snapshot_num_tables_in_parallel = 1)" ||
			fail "CREATE MIRROR $m: $sql_error"
		# Data visible: count() of the destination table reaches the source's rows (before the
		# table exists, the query fails and counts as 0). The mirror's state is read every 0.5 s
		# meanwhile (a failure stops the run), and after that until it says completed.
		visible=
		completed=
		next_state=0
		deadline=$((EPOCHSECONDS + wait_timeout))
		while [[ -z $visible || -z $completed ]]; do
			if [[ -z $visible ]]; then
				n=$(ch_try "SELECT count() FROM bench_ferry.$table") || n=0
				t=$(now)
				((n < source_rows[$table])) || visible=$t
			fi
			if [[ -z $completed ]] && { [[ -n $visible ]] || (($(now_us) > next_state)); }; then
				mirror_state "$m"
				[[ $REPLY != completed ]] || completed=$(now)
				next_state=$(($(now_us) + 500000))
			fi
			((EPOCHSECONDS < deadline)) || fail "mirror $m: not done after $wait_timeout s (state ${REPLY:-?}, $n rows visible)"
			[[ -n $visible && -n $completed ]] || sleep "$poll_seconds"
		done
		cpu1=$(cpu_seconds "$ferry_pid")
		hwm=$(vm_hwm_kb "$ferry_pid")
		check_loaded ferry "bench_ferry.$table" "$table"
		record ferry "$table" "$(elapsed "$visible" "$t0")"
		done_secs[$table]+="${done_secs[$table]:+ }$(elapsed "$completed" "$t0")"
		cpu[$table]+="${cpu[$table]:+ }$(elapsed "$cpu1" "$cpu0")"
		rss[$table]=$(max_of "${rss[$table]:-0}" "$hwm")
		say "ferry $table: ${source_rows[$table]} rows visible after $(elapsed "$visible" "$t0") s (checked;" \
			"completed after $(elapsed "$completed" "$t0") s; $(elapsed "$cpu1" "$cpu0") CPU-s; peak RSS $((hwm / 1024)) MB)"
	done
	stop_ferry
	check_same_columns
}

# Warns when the tables of pull/csv do not have the columns and types of Ferry's tables.
check_same_columns() {
	local table ours theirs
	for table in "${tables[@]}"; do
		ours=$(ch_table_ddl "$table" x | sed 's/^CREATE TABLE x (//; s/) ENGINE.*//')
		theirs=$(ch "SELECT arrayStringConcat(groupArray(concat('\`', name, '\` ', type)), ',')
			FROM (SELECT name, type FROM system.columns WHERE database = 'bench_ferry' AND table = '$table'
			      AND NOT startsWith(name, '_ferry_') ORDER BY position) FORMAT TSVRaw")
		if [[ $ours != "$theirs" ]]; then
			say "warning: pull and csv load $table with other column types than Ferry's:"
			say "  Ferry:      $theirs"
			say "  pull, csv:  $ours"
		fi
	done
}

# ---------------------------------------------------------------------------------------------
# Main

note_machine_load
prepare_source
for table in "${tables[@]}"; do
	source_rows[$table]=$(pg_value "$source_db" "SELECT count(*) FROM public.$table")
	say "fingerprint of $table (${source_rows[$table]} rows)"
	# Also one full read of each table, so that no method pays for a cold cache.
	source_print[$table]=$(pg_fingerprint "$source_db" "$table")
done

for ((run = 1; run <= runs; run++)); do
	for method in "${methods[@]}"; do
		say "run $run/$runs: $method"
		"run_$method"
	done
done

# ---------------------------------------------------------------------------------------------
# Figures

declare -A rate=()
put scale "$scale"
put wide_rows "$wide_rows"
put workers "$workers"
put rows_per_partition "$partition_rows"
put runs "$runs"
put methods "$(
	IFS=,
	echo "${methods[*]}"
)"
for method in "${methods[@]}"; do
	for table in "${tables[@]}"; do
		s=$(median "${secs[$method.$table]}")
		rate[$method.$table]=$(awk -v r="${source_rows[$table]}" -v s="$s" 'BEGIN { printf "%.0f", (s > 0 ? r / s : 0) }')
		put "$method.$table.rows" "${source_rows[$table]}"
		put "$method.$table.seconds" "$s"
		put "$method.$table.rows_per_second" "${rate[$method.$table]}"
		put "$method.$table.seconds_each_run" "${secs[$method.$table]// /,}"
	done
done
if uses ferry; then
	peak=0
	for table in "${tables[@]}"; do
		c=$(median "${cpu[$table]}")
		put "ferry.$table.cpu_seconds" "$c"
		put "ferry.$table.cpu_seconds_each_run" "${cpu[$table]// /,}"
		put "ferry.$table.cpu_ns_per_row" "$(awk -v c="$c" -v n="${source_rows[$table]}" 'BEGIN { printf "%.0f", c * 1e9 / n }')"
		put "ferry.$table.completed_seconds" "$(median "${done_secs[$table]}")"
		put "ferry.$table.peak_rss_mb" "$((rss[$table] / 1024))"
		peak=$(max_of "$peak" "${rss[$table]}")
		best=0
		best_method=
		for method in "${methods[@]}"; do
			[[ $method != ferry ]] || continue
			if ((rate[$method.$table] > best)); then
				best=${rate[$method.$table]}
				best_method=$method
			fi
		done
		if [[ -n $best_method ]]; then
			put "ratio.$table" "$(ratio_of "${rate[ferry.$table]}" "$best")"
			put "ratio.$table.best_other" "$best_method"
		fi
	done
	put ferry.peak_rss_mb "$((peak / 1024))"
fi
write_results

printf '\nscripts/bench snapshot  %s  scale=%s wide_rows=%s workers=%s runs=%s  (PostgreSQL %s, ClickHouse %s)\n' \
	"$commit" "$scale" "$wide_rows" "$workers" "$runs" "$(pg_value postgres "SHOW server_version" | cut -d' ' -f1)" \
	"$(ch "SELECT version()")"
machine_caveat
printf '\n%-6s %-17s %9s %8s %10s %8s %7s %7s  %s\n' method table rows seconds rows/s CPU-s ns/row RSS-MB 'vs best other'
for method in "${methods[@]}"; do
	for table in "${tables[@]}"; do
		c=- n=- m=- v=-
		if [[ $method == ferry ]]; then
			c=${r[ferry.$table.cpu_seconds]}
			n=${r[ferry.$table.cpu_ns_per_row]}
			m=${r[ferry.$table.peak_rss_mb]}
			[[ -z ${r[ratio.$table]:-} ]] || v="${r[ratio.$table]}× (${r[ratio.$table.best_other]})"
		fi
		printf '%-6s %-17s %9s %8s %10s %8s %7s %7s  %s\n' "$method" "$table" "${source_rows[$table]}" \
			"${r[$method.$table.seconds]}" "${rate[$method.$table]}" "$c" "$n" "$m" "$v"
	done
done
cat <<-EOF

	Every load above was checked (row count and a fingerprint of every column equal to the source's)
	before its time was taken; times are medians of $runs run(s).
	ferry:  CREATE MIRROR → every row visible in ClickHouse (count() of the destination table, polled
	        every ${poll_seconds} s); CPU-s = the daemon's utime+stime (/proc) over the load, until the rows
	        are visible and the mirror says completed; ns/row = CPU-s / rows; RSS = peak (VmHWM) per table.
	pull:   INSERT INTO … SELECT * FROM postgresql(…) until it returns.
	csv:    psql \\copy … (FORMAT csv) | curl INSERT … FORMAT CSV until the INSERT returns.
EOF
print_results
