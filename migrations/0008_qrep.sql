-- Query mirrors (CREATE MIRROR … FOR $$query$$): a query run again and again over the next
-- range of a watermark, its result landing in one destination table. The engine's algorithm is
-- in crates/ferry-flow/src/qrep/mod.rs; this is what it keeps.
--
-- A run reads the range (after, through] of the watermark, cut into partitions. Each partition
-- is marked done once the destination holds its rows durably; the watermark advances to the
-- run's `through` only when every partition is done, in the same transaction that ends the
-- run. A run interrupted by a crash is finished before the next starts: its partitions not
-- done are copied again.

ALTER TABLE ferry.mirrors ADD COLUMN kind text NOT NULL DEFAULT 'cdc'
    CHECK (kind IN ('cdc', 'query'));

-- Per query mirror: its watermark and schedule.
CREATE TABLE ferry.qrep_mirror (
    mirror_id      bigint PRIMARY KEY REFERENCES ferry.mirrors (id) ON DELETE CASCADE,
    -- the watermark's type (int2, int4, int8, date, timestamp, timestamptz, xid8); NULL for a
    -- query read whole, once
    watermark_kind text,
    -- everything up to here is copied: the type's integer (the value; days or microseconds
    -- since 2000-01-01; a full transaction id), and as PostgreSQL prints it
    watermark      bigint,
    watermark_text text,
    runs           bigint NOT NULL DEFAULT 0,
    last_run_at    timestamptz,
    last_run_rows  bigint,
    next_run_at    timestamptz
);

-- One row per run; the newest thousand of each mirror are kept.
CREATE TABLE ferry.qrep_run (
    -- also how the destination tells a run's rows apart: never reused
    id            bigserial PRIMARY KEY,
    mirror_id     bigint NOT NULL REFERENCES ferry.mirrors (id) ON DELETE CASCADE,
    run_no        bigint NOT NULL,
    state         text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'failed')),
    -- the range: after the first value (NULL: from the start), through the second
    after_value   bigint,
    after_text    text,
    through_value bigint,
    through_text  text,
    -- the exported snapshot the partitions were first read in
    snapshot      text,
    -- overwrite mode: the identity of the fresh table the run loads, swapped in at its end
    load_token    text,
    rows          bigint NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    error         text,
    UNIQUE (mirror_id, run_no)
);

CREATE TABLE ferry.qrep_partition (
    run_id       bigint NOT NULL REFERENCES ferry.qrep_run (id) ON DELETE CASCADE,
    partition_no integer NOT NULL,
    -- what the partition reads (watermark values, or CTID blocks for xmin), as the engine wrote it
    bounds       jsonb NOT NULL,
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    rows         bigint NOT NULL DEFAULT 0,
    -- attempts started (one interrupted by a crash counts too)
    attempts     integer NOT NULL DEFAULT 0,
    error        text,
    finished_at  timestamptz,
    PRIMARY KEY (run_id, partition_no)
);

CREATE VIEW public.qrep_runs AS
SELECT m.name AS mirror,
       r.run_no AS run,
       r.state,
       r.after_text AS watermark_after,
       r.through_text AS watermark_through,
       (SELECT count(*) FROM ferry.qrep_partition p WHERE p.run_id = r.id AND p.state = 'done') AS partitions_done,
       (SELECT count(*) FROM ferry.qrep_partition p WHERE p.run_id = r.id) AS partitions,
       r.rows,
       r.started_at,
       r.finished_at,
       round(extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at)::numeric, 3) AS duration_seconds,
       r.error
FROM ferry.qrep_run r JOIN ferry.mirrors m ON m.id = r.mirror_id;

-- The mirror's view gains the query mirrors' columns (at the end).
DROP VIEW public.mirror_status;
CREATE VIEW public.mirror_status AS
SELECT m.name AS mirror,
       s.name AS source,
       d.name AS destination,
       m.state,
       (SELECT count(*) FROM ferry.mirror_table t WHERE t.mirror_id = m.id AND t.state = 'done') AS tables_done,
       (SELECT count(*) FROM ferry.mirror_table t WHERE t.mirror_id = m.id) AS tables_total,
       -- tables stopped by an error while the others go on (see mirror_tables.error)
       (SELECT count(*) FROM ferry.mirror_table t WHERE t.mirror_id = m.id AND t.state = 'failed') AS tables_failed,
       -- tables being loaded again from a snapshot of their own while the others stream
       (SELECT count(*) FROM ferry.mirror_table t WHERE t.mirror_id = m.id AND t.state IN ('syncing', 'catchup')) AS tables_syncing,
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
       m.error_hint,
       -- 'cdc' (tables) or 'query'; then a query mirror's watermark and runs (NULL for others)
       m.kind,
       q.watermark_text AS last_watermark,
       q.last_run_at,
       q.last_run_rows AS rows_last_run,
       q.next_run_at
FROM ferry.mirrors m
JOIN ferry.peers s ON s.id = m.source_peer
JOIN ferry.peers d ON d.id = m.destination_peer
LEFT JOIN ferry.qrep_mirror q ON q.mirror_id = m.id
LEFT JOIN LATERAL (
    SELECT sum(t.rows_copied) AS rows_copied, sum(t.rows_estimated) AS rows_estimated
    FROM ferry.mirror_table t WHERE t.mirror_id = m.id
) agg ON true;
