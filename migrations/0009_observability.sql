-- Figures an operator can alert on, true in every state of a mirror.
--
-- A per-daemon monitor (crates/ferry-flow/src/monitor.rs) wakes every 5 seconds, whatever
-- state each mirror is in, and records here what it saw:
--
-- * from the source, over a connection of its own: pg_current_wal_lsn() and the mirror's
--   slot in pg_replication_slots (restart_lsn, confirmed_flush_lsn, wal_status,
--   safe_wal_size, active). When the source cannot be reached, source_error says why and
--   source_checked_at stops moving; the figures are the last ones read.
-- * from the mirror's stream in the daemon: the position applied (everything before it is in
--   the destination), the source commit time of the oldest change received and not yet
--   applied, the time up to which every change is applied, whether the stream is reading,
--   and per table the rows applied.
--
-- Warnings (the slot retaining more than max_slot_lag_bytes, the source unreachable, the slot
-- lost or at risk, the mirror retrying after an error) are rows with a start and an end, so
-- that one never hides another; mirror_status.last_error keeps only the mirror's own error.

CREATE TABLE ferry.mirror_monitor (
    mirror_id           bigint PRIMARY KEY REFERENCES ferry.mirrors (id) ON DELETE CASCADE,
    -- when the monitor last wrote this row
    sampled_at          timestamptz NOT NULL,
    -- when the source last answered, and why it did not since
    source_checked_at   timestamptz,
    source_error        text,
    -- the source's WAL end, and the slot as the source shows it (NULL: no such slot)
    source_lsn          pg_lsn,
    slot_restart_lsn    pg_lsn,
    slot_confirmed_lsn  pg_lsn,
    slot_wal_status     text,
    slot_safe_wal_bytes bigint,
    slot_active         boolean,
    -- from the stream (NULL when it has not run since the daemon started)
    applied_lsn         pg_lsn,
    pending_since       timestamptz,
    caught_up_at        timestamptz,
    streaming           boolean NOT NULL DEFAULT false,
    -- rows applied per second over the last minute (over the time since the daemon started,
    -- when that is shorter)
    stream_rows_per_second float8 NOT NULL DEFAULT 0
);

CREATE TABLE ferry.table_monitor (
    table_id         bigint PRIMARY KEY REFERENCES ferry.mirror_table (id) ON DELETE CASCADE,
    sampled_at       timestamptz NOT NULL,
    -- rows applied per second over the minute before sampled_at, and in all since the table
    -- was added
    rows_per_second  float8 NOT NULL DEFAULT 0,
    rows_streamed    bigint NOT NULL DEFAULT 0,
    pending_since    timestamptz
);

CREATE TABLE ferry.mirror_warning (
    id           bigserial PRIMARY KEY,
    mirror_id    bigint NOT NULL REFERENCES ferry.mirrors (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN
                     ('slot_lag', 'source_unreachable', 'slot_lost', 'slot_at_risk', 'retrying')),
    message      text NOT NULL,
    hint         text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz
);
-- At most one open warning of each kind per mirror.
CREATE UNIQUE INDEX mirror_warning_open ON ferry.mirror_warning (mirror_id, kind) WHERE ended_at IS NULL;

-- The figures of each mirror, computed once for the views below. Times are measured up to
-- the monitor's last sample (as_of) while it keeps sampling, so that a figure does not grow
-- between samples by the time since the last one; once samples stop coming (the daemon is
-- gone), up to now.
CREATE VIEW ferry.mirror_figures AS
SELECT m.id AS mirror_id,
       r.as_of,
       mon.sampled_at,
       mon.source_checked_at,
       mon.source_error,
       mon.source_lsn,
       greatest(mon.applied_lsn, m.confirmed_lsn, m.snapshot_lsn) AS applied_lsn,
       mon.slot_restart_lsn,
       mon.slot_confirmed_lsn,
       mon.slot_wal_status,
       mon.slot_safe_wal_bytes,
       mon.slot_active,
       mon.streaming,
       mon.stream_rows_per_second,
       -- (greatest() skips NULLs: an unknown position must not read as 0 bytes)
       CASE WHEN m.state = 'completed' OR mon.source_lsn IS NULL OR mon.slot_restart_lsn IS NULL THEN NULL
            ELSE greatest(mon.source_lsn - mon.slot_restart_lsn, 0)::int8 END AS wal_held_bytes,
       CASE WHEN m.state = 'completed' OR mon.source_lsn IS NULL OR mon.slot_confirmed_lsn IS NULL THEN NULL
            ELSE greatest(mon.source_lsn - mon.slot_confirmed_lsn, 0)::int8 END AS slot_lag_bytes,
       CASE WHEN m.state IN ('setting_up', 'completed') OR m.kind = 'query' OR mon.source_lsn IS NULL THEN NULL
            ELSE greatest(mon.source_lsn - greatest(mon.applied_lsn, m.confirmed_lsn, m.snapshot_lsn), 0)::int8
       END AS lag_bytes,
       CASE WHEN m.state IN ('setting_up', 'completed') OR m.kind = 'query' OR mon.mirror_id IS NULL THEN NULL
            -- A change received and not yet applied: how long ago it committed.
            WHEN mon.pending_since IS NOT NULL THEN
                 round(greatest(extract(epoch FROM r.as_of - mon.pending_since), 0)::numeric, 3)
            -- Nothing at the source past what is applied.
            WHEN mon.source_lsn <= greatest(mon.applied_lsn, m.confirmed_lsn, m.snapshot_lsn) THEN 0
            -- Reading, with nothing pending.
            WHEN mon.streaming AND mon.sampled_at > now() - interval '15 seconds' THEN 0
            -- Not reading (loading, paused, failed, retrying, source or daemon down): every
            -- change not applied committed after caught_up_at, so this is the most it can be.
            ELSE round(greatest(extract(epoch FROM r.as_of - coalesce(mon.caught_up_at, m.started_at, m.created_at)), 0)::numeric, 3)
       END AS lag_seconds,
       (SELECT count(*) FROM ferry.mirror_warning w WHERE w.mirror_id = m.id AND w.ended_at IS NULL) AS warnings
FROM ferry.mirrors m
LEFT JOIN ferry.mirror_monitor mon ON mon.mirror_id = m.id
CROSS JOIN LATERAL (
    SELECT CASE WHEN mon.sampled_at > now() - interval '15 seconds' THEN mon.sampled_at ELSE now() END AS as_of
) r;

-- mirror_status as in 0008; source_lsn, slot_lag_bytes and lag_seconds now come from the
-- monitor, slot and publication are NULL once dropped, and the new figures follow at the end
-- (after the query mirrors' columns). A query mirror has no slot: its figures are NULL.
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
       CASE WHEN m.started_at IS NULL OR m.kind = 'query' OR NOT (m.spec -> 'options' ->> 'do_initial_copy')::boolean THEN NULL
            ELSE round(coalesce(agg.rows_copied, 0) / greatest(extract(epoch FROM
                 coalesce(m.snapshot_done_at, now()) - m.started_at), 0.001)) END AS rows_per_second,
       CASE WHEN m.state = 'completed' THEN NULL ELSE m.slot_name END AS slot_name,
       CASE WHEN m.state = 'completed' AND m.created_publication THEN NULL ELSE m.publication_name END AS publication_name,
       m.snapshot_lsn,
       m.confirmed_lsn,
       f.source_lsn,
       f.slot_lag_bytes,
       f.lag_seconds,
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
       q.next_run_at,
       -- figures of the monitor (see the README's "Monitoring")
       f.applied_lsn,
       f.lag_bytes,
       f.wal_held_bytes,
       f.slot_restart_lsn,
       f.slot_confirmed_lsn,
       f.slot_wal_status,
       f.slot_safe_wal_bytes,
       f.slot_active,
       f.streaming,
       round(f.stream_rows_per_second::numeric, 1) AS stream_rows_per_second,
       CASE WHEN m.state <> 'snapshot' OR agg.rows_copied IS NULL OR agg.rows_copied = 0 THEN NULL
            ELSE make_interval(secs => round(greatest(agg.rows_estimated - agg.rows_copied, 0)
                 * extract(epoch FROM now() - m.started_at) / agg.rows_copied)) END AS load_eta,
       f.warnings,
       f.sampled_at,
       f.source_checked_at,
       f.source_error,
       m.hold_lsn
FROM ferry.mirrors m
JOIN ferry.peers s ON s.id = m.source_peer
JOIN ferry.peers d ON d.id = m.destination_peer
JOIN ferry.mirror_figures f ON f.mirror_id = m.id
LEFT JOIN ferry.qrep_mirror q ON q.mirror_id = m.id
LEFT JOIN LATERAL (
    SELECT sum(t.rows_copied) AS rows_copied, sum(t.rows_estimated) AS rows_estimated
    FROM ferry.mirror_table t WHERE t.mirror_id = m.id
) agg ON true;

-- mirror_tables as in 0001, with the load's rate and ETA, and the streaming figures.
DROP VIEW public.mirror_tables;
CREATE VIEW public.mirror_tables AS
SELECT m.name AS mirror,
       t.source_schema || '.' || t.source_table AS source_table,
       t.destination_database || '.' || t.destination_table AS destination_table,
       t.state,
       (SELECT count(*) FROM ferry.mirror_partition p WHERE p.table_id = t.id AND p.state = 'done') AS partitions_done,
       (SELECT count(*) FROM ferry.mirror_partition p WHERE p.table_id = t.id) AS partitions_total,
       t.rows_copied,
       t.rows_estimated,
       t.error,
       t.started_at,
       t.finished_at,
       -- the load: share of the estimate copied, rows per second since it started, time left
       CASE WHEN t.started_at IS NULL OR t.rows_estimated = 0 THEN NULL
            ELSE round(least(100.0, 100.0 * t.rows_copied / t.rows_estimated), 1) END AS percent,
       CASE WHEN t.started_at IS NULL OR NOT (t.state IN ('copying', 'syncing')
                 OR (t.state = 'done' AND t.finished_at IS NOT NULL)) THEN NULL
            ELSE round(t.rows_copied / greatest(extract(epoch FROM
                 coalesce(t.finished_at, now()) - t.started_at), 0.001)) END AS rows_per_second,
       CASE WHEN t.state NOT IN ('copying', 'syncing') OR t.started_at IS NULL OR t.rows_copied = 0 THEN NULL
            ELSE make_interval(secs => round(greatest(t.rows_estimated - t.rows_copied, 0)
                 * extract(epoch FROM now() - t.started_at) / t.rows_copied)) END AS eta,
       -- streaming: rows applied per second over the last minute, and in all
       CASE WHEN t.state IN ('done', 'catchup') THEN round(coalesce(tm.rows_per_second, 0)::numeric, 1) END
           AS stream_rows_per_second,
       coalesce(tm.rows_streamed, 0) AS rows_streamed,
       CASE WHEN t.state NOT IN ('done', 'catchup') THEN NULL
            WHEN tm.pending_since IS NOT NULL THEN
                 round(greatest(extract(epoch FROM f.as_of - tm.pending_since), 0)::numeric, 3)
            WHEN f.lag_seconds IS NULL THEN NULL
            -- Nothing of this table pending: behind only when the mirror is not reading.
            WHEN f.streaming AND f.sampled_at > now() - interval '15 seconds' THEN 0
            ELSE f.lag_seconds END AS lag_seconds,
       tm.sampled_at
FROM ferry.mirror_table t
JOIN ferry.mirrors m ON m.id = t.mirror_id
JOIN ferry.mirror_figures f ON f.mirror_id = m.id
LEFT JOIN ferry.table_monitor tm ON tm.table_id = t.id;

CREATE VIEW public.mirror_warnings AS
SELECT m.name AS mirror,
       w.kind,
       w.message,
       w.hint,
       w.started_at,
       w.last_seen_at,
       w.ended_at,
       w.ended_at IS NULL AS active
FROM ferry.mirror_warning w JOIN ferry.mirrors m ON m.id = w.mirror_id;

-- The peers view shows each option under the name CREATE PEER takes.
DROP VIEW public.peers;
CREATE VIEW public.peers AS
SELECT p.name,
       p.type,
       (p.options - 'ssl_mode' - 'ssl_root_cert' - 'compression')
         || CASE WHEN p.options ? 'ssl_mode' THEN jsonb_build_object('sslmode', p.options -> 'ssl_mode') ELSE '{}' END
         || CASE WHEN p.options ? 'ssl_root_cert' THEN jsonb_build_object('sslrootcert', p.options -> 'ssl_root_cert') ELSE '{}' END
         || CASE p.options ->> 'compression' WHEN 'true' THEN '{"compression": "lz4"}'::jsonb
                                             WHEN 'false' THEN '{"compression": "none"}'::jsonb
                                             ELSE '{}' END
         || CASE WHEN p.secret IS NULL THEN '{}' ELSE '{"password": "********"}'::jsonb END AS options,
       p.created_at
FROM ferry.peers p;
