//! The mirrors' figures as Prometheus metrics, read from the catalog's views at each scrape,
//! so that the metrics and `mirror_status`/`mirror_tables` always agree. A figure that is
//! NULL in the view (unknown, or meaningless in the mirror's state) has no sample.

use std::fmt::Write as _;

use ferry_catalog::{Catalog, CatalogError};

/// One series: name, type, help, and the column of the query it comes from.
struct Series {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    column: usize,
}

const fn series(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    column: usize,
) -> Series {
    Series {
        name,
        kind,
        help,
        column,
    }
}

/// Columns 0 and 1 of the query are the mirror's name and state.
const MIRROR_SQL: &str = "SELECT mirror, state,
        rows_copied::float8, rows_estimated::float8, rows_per_second::float8,
        lag_seconds::float8, lag_bytes::float8, wal_held_bytes::float8, slot_lag_bytes::float8,
        slot_safe_wal_bytes::float8, slot_active::int::float8,
        CASE WHEN state IN ('setting_up', 'completed') THEN NULL
             WHEN source_error IS NULL AND source_checked_at > now() - interval '30 seconds' THEN 1
             ELSE 0 END::float8,
        extract(epoch FROM now() - sampled_at)::float8, streaming::int::float8,
        stream_rows_per_second::float8, warnings::float8, tables_failed::float8,
        (confirmed_lsn - '0/0')::float8, (applied_lsn - '0/0')::float8,
        extract(epoch FROM last_batch_at)::float8,
        rows_inserted::float8, rows_updated::float8, rows_deleted::float8
    FROM public.mirror_status ORDER BY mirror";

const MIRROR_SERIES: &[Series] = &[
    series("ferry_mirror_rows_copied", "gauge", "Rows copied by the initial load so far (live while it runs).", 2),
    series("ferry_mirror_rows_estimated", "gauge", "Rows the initial load expects (the planner's estimate, then the count).", 3),
    series("ferry_mirror_load_rows_per_second", "gauge", "Rows per second of the initial load since it started.", 4),
    series("ferry_mirror_lag_seconds", "gauge", "Now minus the source commit time of the oldest change not yet applied (0 when nothing is pending).", 5),
    series("ferry_mirror_lag_bytes", "gauge", "The source's WAL end minus the position applied to the destination.", 6),
    series("ferry_mirror_wal_held_bytes", "gauge", "WAL the slot makes the source keep: its WAL end minus the slot's restart_lsn.", 7),
    series("ferry_mirror_slot_lag_bytes", "gauge", "The source's WAL end minus the slot's confirmed_flush_lsn.", 8),
    series("ferry_mirror_slot_safe_wal_bytes", "gauge", "WAL that can still be written before the slot is at risk (pg_replication_slots.safe_wal_size; absent when unlimited).", 9),
    series("ferry_mirror_slot_active", "gauge", "1 while a connection reads the slot.", 10),
    series("ferry_mirror_source_up", "gauge", "1 when the monitor read the source in the last 30 seconds.", 11),
    series("ferry_mirror_figures_age_seconds", "gauge", "Seconds since the monitor last recorded the mirror's figures.", 12),
    series("ferry_mirror_streaming", "gauge", "1 while the mirror's stream reads the slot.", 13),
    series("ferry_mirror_stream_rows_per_second", "gauge", "Rows applied per second by streaming, over the last minute.", 14),
    series("ferry_mirror_warnings", "gauge", "Warnings open now (see mirror_warnings).", 15),
    series("ferry_mirror_tables_failed", "gauge", "Tables stopped by an error while the others go on.", 16),
    series("ferry_mirror_confirmed_lsn", "gauge", "The position recorded and confirmed to the source, as a byte position.", 17),
    series("ferry_mirror_applied_lsn", "gauge", "The position applied to the destination, as a byte position.", 18),
    series("ferry_mirror_last_batch_timestamp_seconds", "gauge", "When the last batch was written.", 19),
];

/// Columns 0, 1 and 2: mirror, table, state.
const TABLE_SQL: &str = "SELECT mirror, source_table, state,
        rows_copied::float8, rows_estimated::float8, rows_per_second::float8,
        extract(epoch FROM eta)::float8, stream_rows_per_second::float8, rows_streamed::float8,
        lag_seconds::float8
    FROM public.mirror_tables ORDER BY mirror, source_table";

const TABLE_SERIES: &[Series] = &[
    series(
        "ferry_table_rows_copied",
        "gauge",
        "Rows of the table copied by its load so far.",
        3,
    ),
    series(
        "ferry_table_rows_estimated",
        "gauge",
        "Rows the table's load expects.",
        4,
    ),
    series(
        "ferry_table_load_rows_per_second",
        "gauge",
        "Rows per second of the table's load since it started.",
        5,
    ),
    series(
        "ferry_table_load_eta_seconds",
        "gauge",
        "Time left to the end of the table's load, from its rate and estimate.",
        6,
    ),
    series(
        "ferry_table_stream_rows_per_second",
        "gauge",
        "Rows of the table applied per second by streaming, over the last minute.",
        7,
    ),
    series(
        "ferry_table_rows_streamed_total",
        "counter",
        "Rows of the table applied by streaming.",
        8,
    ),
    series(
        "ferry_table_lag_seconds",
        "gauge",
        "Now minus the source commit time of the table's oldest change not yet applied.",
        9,
    ),
];

/// Query mirrors' runs; column 0 is the mirror.
const QUERY_SQL: &str = "SELECT m.name, q.runs::float8, coalesce(q.last_run_rows, 0)::float8,
        coalesce((SELECT extract(epoch FROM r.finished_at - r.started_at)
                  FROM ferry.qrep_run r WHERE r.mirror_id = m.id AND r.state = 'done'
                  ORDER BY r.run_no DESC LIMIT 1), 0)::float8,
        coalesce(extract(epoch FROM q.last_run_at), 0)::float8,
        coalesce(extract(epoch FROM q.next_run_at), 0)::float8
    FROM ferry.mirrors m JOIN ferry.qrep_mirror q ON q.mirror_id = m.id
    ORDER BY m.name";

const QUERY_SERIES: &[Series] = &[
    series(
        "ferry_mirror_query_runs_total",
        "counter",
        "Runs a query mirror started.",
        1,
    ),
    series(
        "ferry_mirror_query_last_run_rows",
        "gauge",
        "Rows the last finished run copied.",
        2,
    ),
    series(
        "ferry_mirror_query_last_run_duration_seconds",
        "gauge",
        "How long the last finished run took.",
        3,
    ),
    series(
        "ferry_mirror_query_last_run_timestamp_seconds",
        "gauge",
        "When the last run finished.",
        4,
    ),
    series(
        "ferry_mirror_query_next_run_timestamp_seconds",
        "gauge",
        "When the next run is due (0: now).",
        5,
    ),
];

/// Values a destination could not hold, replaced by their stand-ins: mirror, table, column,
/// count.
const SUBSTITUTION_SQL: &str = "SELECT mirror, source_table, column_name, values_replaced::float8
    FROM public.substitutions ORDER BY 1, 2, 3";

/// A label value in Prometheus' text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The mirrors' and tables' figures in Prometheus' text format.
pub async fn render(catalog: &Catalog) -> Result<String, CatalogError> {
    let client = catalog.client().await?;
    let mirrors = client.query(MIRROR_SQL, &[]).await?;
    let tables = client.query(TABLE_SQL, &[]).await?;
    let queries = client.query(QUERY_SQL, &[]).await?;
    let substituted = client.query(SUBSTITUTION_SQL, &[]).await?;
    drop(client);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP ferry_mirror_up 1 for each mirror, labelled with its state.\n# TYPE ferry_mirror_up gauge"
    );
    for r in &mirrors {
        let (mirror, state): (String, String) = (r.get(0), r.get(1));
        let _ = writeln!(
            out,
            "ferry_mirror_up{{mirror=\"{}\",state=\"{}\"}} 1",
            label(&mirror),
            label(&state)
        );
    }
    for s in MIRROR_SERIES {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}",
            s.name, s.help, s.name, s.kind
        );
        for r in &mirrors {
            if let Some(v) = r.get::<_, Option<f64>>(s.column) {
                let mirror: String = r.get(0);
                let _ = writeln!(out, "{}{{mirror=\"{}\"}} {v}", s.name, label(&mirror));
            }
        }
    }
    let name = "ferry_mirror_rows_applied_total";
    let _ = writeln!(
        out,
        "# HELP {name} Changes applied by streaming, by kind.\n# TYPE {name} counter"
    );
    for r in &mirrors {
        let mirror: String = r.get(0);
        for (kind, c) in [("insert", 20), ("update", 21), ("delete", 22)] {
            let v: f64 = r.get(c);
            let _ = writeln!(
                out,
                "{name}{{mirror=\"{}\",kind=\"{kind}\"}} {v}",
                label(&mirror)
            );
        }
    }
    for s in TABLE_SERIES {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}",
            s.name, s.help, s.name, s.kind
        );
        for r in &tables {
            if let Some(v) = r.get::<_, Option<f64>>(s.column) {
                let (mirror, table): (String, String) = (r.get(0), r.get(1));
                let _ = writeln!(
                    out,
                    "{}{{mirror=\"{}\",table=\"{}\"}} {v}",
                    s.name,
                    label(&mirror),
                    label(&table)
                );
            }
        }
    }
    for s in QUERY_SERIES {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}",
            s.name, s.help, s.name, s.kind
        );
        for r in &queries {
            let (mirror, v): (String, f64) = (r.get(0), r.get(s.column));
            let _ = writeln!(out, "{}{{mirror=\"{}\"}} {v}", s.name, label(&mirror));
        }
    }
    let name = "ferry_table_values_substituted_total";
    let _ = writeln!(
        out,
        "# HELP {name} Values the destination could not hold, replaced by their stand-ins (see the substitutions view).\n# TYPE {name} counter"
    );
    for r in &substituted {
        let (mirror, table, column, v): (String, String, String, f64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let _ = writeln!(
            out,
            "{name}{{mirror=\"{}\",table=\"{}\",column=\"{}\"}} {v}",
            label(&mirror),
            label(&table),
            label(&column)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_series_has_its_own_column() {
        let mut columns: Vec<usize> = MIRROR_SERIES.iter().map(|s| s.column).collect();
        columns.sort_unstable();
        columns.dedup();
        assert_eq!(columns.len(), MIRROR_SERIES.len());
        assert!(columns.iter().all(|&c| (2..20).contains(&c)));
    }
}
