# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with the mode scripts
# The source database of `snapshot` and `pg2pg`. Sourced after lib.sh.
#
# ferry_bench (built once; again with --rebuild):
#   pgbench_accounts   pgbench -i -s $scale (100 000 rows per unit of scale)
#   bench_wide         $wide_rows rows of 16 mixed columns (numbers, numerics, text, dates,
#                      uuid, jsonb, bytea, int4[]), about 10 % NULLs in the nullable ones
# The database's comment records how it was built, so a later run with other settings rebuilds
# it (or says to) instead of measuring the wrong thing.

source_db=ferry_bench

built_marker() { printf 'ferry bench: scale=%s wide_rows=%s' "$scale" "$wide_rows"; }

# Creates bench_wide in the database $1: $wide_rows rows of mixed columns, generated
# deterministically from the row number; nullable columns are NULL in about 10 % of the rows.
create_wide() {
	pg -d "$1" -v rows="$wide_rows" <<-'SQL'
		CREATE TABLE bench_wide (
		    id       bigint PRIMARY KEY,
		    qty      int4 NOT NULL,
		    big      int8,
		    score    float8,
		    amount   numeric(12,2) NOT NULL,
		    ratio    numeric,
		    name     text NOT NULL,
		    note     text,
		    code     varchar(32),
		    active   bool,
		    day      date NOT NULL,
		    seen     timestamp,
		    created  timestamptz NOT NULL,
		    ref      uuid,
		    doc      jsonb,
		    raw      bytea,
		    tags     int4[] NOT NULL
		);
		INSERT INTO bench_wide
		SELECT g,
		       (g * 7919) % 2000001 - 1000000,
		       CASE WHEN g % 10 = 1 THEN NULL ELSE g * 1000003 - 4000000000 END,
		       CASE WHEN g % 10 = 2 THEN NULL ELSE (g % 100000) / 7.0::float8 - 5000 END,
		       ((g * 104729) % 10000000000) / 100.0,
		       CASE WHEN g % 10 = 3 THEN NULL ELSE (g::numeric * 31337) / 97 END,
		       'customer ' || g,
		       CASE WHEN g % 10 = 4 THEN NULL ELSE repeat(md5(g::text), (g % 7)::int) END,
		       CASE WHEN g % 10 = 5 THEN NULL ELSE left(md5((g * 3)::text), (4 + g % 29)::int) END,
		       CASE WHEN g % 10 = 6 THEN NULL ELSE g % 3 = 0 END,
		       date '2000-01-01' + (g % 9000)::int,
		       CASE WHEN g % 10 = 7 THEN NULL
		            ELSE timestamp '2020-01-01' + (g * 1234567) * interval '1 microsecond' END,
		       timestamptz '2021-06-01 00:00:00+00' + (g * 7654321) * interval '1 microsecond',
		       CASE WHEN g % 10 = 8 THEN NULL ELSE md5('u' || g)::uuid END,
		       CASE WHEN g % 10 = 9 THEN NULL
		            ELSE jsonb_build_object('id', g, 'kind', 'k' || (g % 17), 'ok', g % 2 = 0,
		                                    'n', array[g % 5, g % 11]) END,
		       CASE WHEN g % 10 = 0 THEN NULL ELSE decode(md5(g::text) || md5((g + 1)::text), 'hex') END,
		       (array[(g % 10)::int, (g % 100)::int, (g % 1000)::int, (g % 10000)::int])[1:(g % 5)::int]
		FROM generate_series(1, :rows::bigint) AS g;
	SQL
}

build_source() {
	local tmp=${source_db}_build
	say "building $source_db: pgbench -i -s $scale, bench_wide with $wide_rows rows (this takes a while)"
	pg -d postgres -c "DROP DATABASE IF EXISTS $tmp WITH (FORCE)"
	pg -d postgres -c "CREATE DATABASE $tmp"
	PGPASSWORD=$pg_password PGSSLMODE=disable \
		pgbench -i -s "$scale" -q -h "$pg_host" -p "$pg_port" -U "$pg_user" "$tmp" >&2 ||
		die "pgbench -i failed"
	say "generating bench_wide"
	create_wide "$tmp" || die "creating bench_wide failed"
	say "VACUUM ANALYZE"
	pg -d "$tmp" -c "VACUUM ANALYZE pgbench_accounts"
	pg -d "$tmp" -c "VACUUM ANALYZE bench_wide"
	pg -d postgres -c "COMMENT ON DATABASE $tmp IS $(sql_literal "$(built_marker)")"
	# Built under another name and renamed last, so an interrupted build never passes for one.
	drop_leftover_slots
	pg -d postgres -c "DROP DATABASE IF EXISTS $source_db WITH (FORCE)"
	pg -d postgres -c "ALTER DATABASE $tmp RENAME TO $source_db"
}

# Replication slots and publications left in the source by an earlier, interrupted run: they
# would make CREATE MIRROR refuse, and a slot keeps the database from being dropped.
drop_leftover_slots() {
	pg -d postgres -A -t -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		WHERE database = '$source_db' AND NOT active AND slot_name LIKE 'ferry\_bench%'" >/dev/null
}
drop_leftover_publications() {
	local pubs
	pubs=$(pg_value "$source_db" "SELECT string_agg(quote_ident(pubname), ', ') FROM pg_publication
		WHERE pubname LIKE 'ferry\_bench%'")
	[[ -z $pubs ]] || pg -d "$source_db" -c "DROP PUBLICATION $pubs"
}

prepare_source() {
	local marker want
	marker=$(pg_value postgres "SELECT coalesce(shobj_description(oid, 'pg_database'), '')
		FROM pg_database WHERE datname = '$source_db'")
	if ((rebuild)); then
		build_source
	elif [[ -z $marker ]]; then
		say "$source_db does not exist yet"
		build_source
	elif [[ $marker != "$(built_marker)" ]]; then
		if [[ -n ${SCALE:-} || -n ${WIDE_ROWS:-} ]]; then
			want=$(built_marker)
			die "$source_db was built as '${marker#ferry bench: }', not as asked ('${want#ferry bench: }'); add --rebuild"
		fi
		say "using $source_db as built earlier (${marker#ferry bench: }); --rebuild builds it with the defaults"
		scale=$(sed -n 's/.*scale=\([0-9]*\).*/\1/p' <<<"$marker")
		wide_rows=$(sed -n 's/.*wide_rows=\([0-9]*\).*/\1/p' <<<"$marker")
	fi
	drop_leftover_slots
	drop_leftover_publications
}
