-- Lag as "now minus the source commit time of the newest change applied" while the mirror is
-- behind, 0 while it is caught up. position_at says when the confirmed and source positions
-- were last recorded (every batch, and at least every 10 s while the mirror streams), so a
-- mirror that has stopped making progress shows its lag growing.

ALTER TABLE ferry.mirrors ADD COLUMN position_at timestamptz;

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
       CASE WHEN m.state <> 'running' OR m.position_at IS NULL THEN NULL
            -- Caught up with what the source last reported: no lag, unless that report is old.
            WHEN m.confirmed_lsn >= m.source_lsn THEN
                 CASE WHEN now() - m.position_at <= interval '30 seconds' THEN 0
                      ELSE round(extract(epoch FROM now() - m.position_at)::numeric, 3) END
            -- Behind: how old the newest change in the destination is.
            ELSE round(extract(epoch FROM now() - coalesce(m.last_commit_at, m.position_at))::numeric, 3)
       END AS lag_seconds,
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
