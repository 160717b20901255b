# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with the mode scripts
# Fingerprints: one line of aggregates per table, computed alike by PostgreSQL and ClickHouse, so
# that a load is checked against its source before its time is reported. Counts, exact sums of
# the numbers, dates and times, and for text and bytes the sum of the first 64 bits of each
# value's MD5 (in pgbench_accounts, of the whole row's text), so a changed, lost or misplaced
# value changes the line. NULLs count through count(column).

# The PostgreSQL and ClickHouse forms of "the first 64 bits of MD5(x) as a signed integer".
pg_h() { printf "('x' || left(md5(%s), 16))::bit(64)::bigint" "$1"; }
ch_h() { printf 'toInt128(reinterpretAsInt64(reverse(substring(MD5(%s), 1, 8))))' "$1"; }
# Sum of the hashes of a text column, NULLs left out (ClickHouse evaluates both branches of an
# if(), hence assumeNotNull under sumIf).
pg_hsum() { printf 'coalesce(sum(%s), 0)' "$(pg_h "$1")"; }
ch_hsum() { printf 'sumIf(%s, isNotNull(%s))' "$(ch_h "assumeNotNull($1)")" "$1"; }

# The aggregates of table $1 as a PostgreSQL select list.
pg_fingerprint_list() {
	case $1 in
	pgbench_accounts)
		printf '%s, ' 'count(*)' 'sum(aid)' 'sum(bid)' 'sum(abalance)' \
			"$(pg_hsum "concat_ws('|', aid, bid, abalance, filler)")"
		;;
	bench_wide)
		printf '%s, ' 'count(*)' 'sum(id)' 'sum(qty)' 'sum(big)' 'count(big)' \
			'sum(floor(score * 1000)::bigint)' 'count(score)' '(sum(amount) * 100)::bigint' \
			'sum(trunc(ratio))' 'count(ratio)' "$(pg_hsum name)" "$(pg_hsum note)" "$(pg_hsum code)" \
			'sum(active::int)' 'count(active)' "sum(day - date '2000-01-01')" \
			'sum((extract(epoch FROM seen) * 1000000)::bigint)' \
			'sum((extract(epoch FROM created) * 1000000)::bigint)' \
			"$(pg_hsum 'ref::text')" "$(pg_hsum 'doc::text')" "$(pg_hsum raw)" \
			'sum((SELECT coalesce(sum(x), 0) FROM unnest(tags) x))' 'sum(cardinality(tags))'
		;;
	bench_changes)
		printf '%s, ' 'count(*)' 'sum(id)' 'sum(v)' "$(pg_hsum note)"
		;;
	*) die "no fingerprint for table $1" ;;
	esac
}

# The same for ClickHouse; $2 is ferry (a table Ferry loaded: bytea as raw bytes) or plain (the
# pull's and the CSV pipe's: bytea as PostgreSQL's \x… hex text).
ch_fingerprint_list() {
	local raw='raw'
	[[ $2 == ferry ]] || raw="unhex(substring(raw, 3))"
	case $1 in
	pgbench_accounts)
		printf '%s, ' 'toString(count())' 'toString(sum(aid))' 'toString(sum(bid))' 'toString(sum(abalance))' \
			"toString($(ch_hsum "concat(toString(aid), '|', toString(bid), '|', toString(abalance), '|', ifNull(filler, ''))"))"
		;;
	bench_wide)
		printf 'toString(%s), ' 'count()' 'sum(id)' 'sum(qty)' 'sum(toInt128(big))' 'count(big)' \
			'sum(toInt64(floor(score * 1000)))' 'count(score)' 'toInt64(sum(amount) * 100)' \
			"sum(toInt64OrZero(splitByChar('.', ifNull(ratio, ''))[1]))" 'count(ratio)' \
			"$(ch_hsum name)" "$(ch_hsum note)" "$(ch_hsum code)" \
			'sum(toUInt8(active))' 'count(active)' "sum(dateDiff('day', toDate32('2000-01-01'), day))" \
			'sumIf(toInt128(toUnixTimestamp64Micro(assumeNotNull(seen))), isNotNull(seen))' \
			'sum(toInt128(toUnixTimestamp64Micro(created)))' \
			"$(ch_hsum 'toString(ref)')" "$(ch_hsum doc)" "$(ch_hsum "$raw")" \
			'sum(arraySum(arrayMap(x -> toInt64(ifNull(x, 0)), tags)))' 'sum(length(tags))'
		;;
	bench_changes)
		printf 'toString(%s), ' 'count()' 'sum(id)' 'sum(v)' "$(ch_hsum note)"
		;;
	*) die "no fingerprint for table $1" ;;
	esac
}

# Table $2's fingerprint in PostgreSQL database $1.
pg_fingerprint() {
	local list
	list=$(pg_fingerprint_list "$2")
	pg_value "$1" "SELECT concat_ws(' ', ${list%, }) FROM public.$2"
}

# ClickHouse table $1's fingerprint, as source table $2, loaded by $3: ferry or plain (see
# ch_fingerprint_list). Ferry's tables are read FINAL and without deleted rows.
ch_fingerprint() {
	local list from=$1
	list=$(ch_fingerprint_list "$2" "$3")
	if [[ $3 == ferry ]]; then from+=" FINAL WHERE _ferry_is_deleted = 0"; fi
	ch "SELECT arrayStringConcat([${list%, }], ' ') FROM $from"
}
