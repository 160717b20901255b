-- Streaming changes: what each batch did, and the mirror's lag.

ALTER TABLE ferry.mirrors
    ADD COLUMN source_lsn       pg_lsn,       -- the source's WAL end, as last reported to Ferry
    ADD COLUMN last_commit_at   timestamptz,  -- source commit time of the last change applied
    ADD COLUMN last_batch_at    timestamptz,
    ADD COLUMN rows_inserted    bigint NOT NULL DEFAULT 0,
    ADD COLUMN rows_updated     bigint NOT NULL DEFAULT 0,
    ADD COLUMN rows_deleted     bigint NOT NULL DEFAULT 0;

-- One row per batch written to the destination; the newest few hundred are kept.
CREATE TABLE ferry.cdc_batch (
    mirror_id   bigint NOT NULL REFERENCES ferry.mirrors (id) ON DELETE CASCADE,
    batch_id    bigint NOT NULL,
    rows        bigint NOT NULL,
    first_lsn   pg_lsn NOT NULL,
    last_lsn    pg_lsn NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    PRIMARY KEY (mirror_id, batch_id)
);

CREATE VIEW public.cdc_batches AS
SELECT m.name AS mirror, b.batch_id, b.rows, b.first_lsn, b.last_lsn, b.started_at, b.finished_at,
       b.finished_at - b.started_at AS duration
FROM ferry.cdc_batch b JOIN ferry.mirrors m ON m.id = b.mirror_id;

DROP VIEW public.mirror_status;
CREATE VIEW public.mirror_status AS
SELECT m.name AS mirror,
       s.name AS source,
       d.name AS destination,
       m.state,
       (SELECT count(*) FROM ferry.mirror_table t WHERE t.mirror_id = m.id AND t.state = 'done') AS tables_done,
       (SELECT count(*) FROM ferry.mirror_table t WHERE t.mirror_id = m.id) AS tables_total,
       coalesce(agg.rows_copied, 0) AS rows_copied,
       coalesce(agg.rows_estimated, 0) AS rows_estimated,
       CASE WHEN coalesce(agg.rows_estimated, 0) = 0 THEN NULL
            ELSE round(least(100.0, 100.0 * agg.rows_copied / agg.rows_estimated), 1) END AS percent,
       CASE WHEN m.started_at IS NULL THEN NULL
            ELSE round(coalesce(agg.rows_copied, 0) / greatest(extract(epoch FROM
                 coalesce(m.snapshot_done_at, now()) - m.started_at), 0.001)) END AS rows_per_second,
       m.slot_name,
       m.publication_name,
       m.snapshot_lsn,
       m.confirmed_lsn,
       m.source_lsn,
       CASE WHEN m.source_lsn IS NULL OR m.confirmed_lsn IS NULL THEN NULL
            ELSE greatest(m.source_lsn - m.confirmed_lsn, 0)::int8 END AS slot_lag_bytes,
       CASE WHEN m.state <> 'running' OR m.last_commit_at IS NULL THEN NULL
            ELSE round(extract(epoch FROM m.last_batch_at - m.last_commit_at)::numeric, 3) END AS lag_seconds,
       m.rows_inserted,
       m.rows_updated,
       m.rows_deleted,
       m.last_batch_at,
       m.started_at,
       m.snapshot_done_at,
       m.finished_at,
       m.error AS last_error,
       m.error_hint
FROM ferry.mirrors m
JOIN ferry.peers s ON s.id = m.source_peer
JOIN ferry.peers d ON d.id = m.destination_peer
LEFT JOIN LATERAL (
    SELECT sum(t.rows_copied) AS rows_copied, sum(t.rows_estimated) AS rows_estimated
    FROM ferry.mirror_table t WHERE t.mirror_id = m.id
) agg ON true;
