# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with the mode scripts
# The change workload of `cdc` and `pg2pg`: table bench_changes (id bigint PRIMARY KEY, v int,
# note text) and transactions of set-based INSERTs, UPDATEs and DELETEs on it. Sourced after
# lib.sh; set_workload_size sets its size.
#
# The live ids are always lo..hi. Each transaction first UPDATEs the oldest ids but the ones it
# deletes, then DELETEs those, then INSERTs new ids above hi: so the last change in the WAL of a
# workload is the INSERT of its highest id, and that row's arrival in the destination is the
# marker that the whole workload may be there (which the fingerprint then checks).

txns=100
initial_rows=200000
lo=1
hi=$initial_rows

# $1 row changes in $txns transactions: 40 % inserts, 40 % updates, 20 % deletes each.
set_workload_size() {
	per_txn=$(($1 / txns))
	changes=$((per_txn * txns))
	txn_inserts=$((per_txn * 4 / 10))
	txn_updates=$((per_txn * 4 / 10))
	txn_deletes=$((per_txn - txn_inserts - txn_updates))
	((initial_rows >= txn_updates + txn_deletes)) || initial_rows=$((txn_updates + txn_deletes))
	hi=$initial_rows
}

# Creates bench_changes with $initial_rows rows in database $1.
create_changes_table() {
	pg -d "$1" -v rows="$initial_rows" <<-'SQL'
		CREATE TABLE bench_changes (id bigint PRIMARY KEY, v int, note text);
		INSERT INTO bench_changes SELECT g, (g % 1000)::int, md5(g::text) FROM generate_series(1, :rows) g;
		VACUUM ANALYZE bench_changes;
	SQL
}

# Writes the workload into file $1 and moves lo and hi on as it will.
write_workload() {
	local file=$1 i
	{
		for ((i = 1; i <= txns; i++)); do
			printf 'BEGIN;\n'
			printf "UPDATE bench_changes SET v = v + 1, note = 'u%d' WHERE id BETWEEN %d AND %d;\n" \
				"$i" $((lo + txn_deletes)) $((lo + txn_deletes + txn_updates - 1))
			printf 'DELETE FROM bench_changes WHERE id BETWEEN %d AND %d;\n' "$lo" $((lo + txn_deletes - 1))
			printf "INSERT INTO bench_changes SELECT g, (g %% 1000)::int, md5(g::text) FROM generate_series(%d, %d) g;\n" \
				$((hi + 1)) $((hi + txn_inserts))
			printf 'COMMIT;\n'
			lo=$((lo + txn_deletes))
			hi=$((hi + txn_inserts))
		done
		printf 'SELECT pg_current_wal_lsn();\n'
	} >"$file"
}

# Writes one transaction inserting $2 new rows into file $1, and moves hi on.
write_big_transaction() {
	printf 'BEGIN;\nINSERT INTO bench_changes SELECT g, (g %% 1000)::int, md5(g::text) FROM generate_series(%d, %d) g;\nCOMMIT;\nSELECT pg_current_wal_lsn();\n' \
		$((hi + 1)) $((hi + $2)) >"$1"
	hi=$((hi + $2))
}

# Runs workload file $1 in database $2; sets workload_start, workload_end (when the last COMMIT
# returned) and workload_lsn (the WAL position just after it).
workload_start=
workload_end=
workload_lsn=
run_workload() {
	workload_start=$(now)
	workload_lsn=$(pg -d "$2" -A -t -f "$1") || fail "the workload $1 failed"
	workload_end=$(now)
}
