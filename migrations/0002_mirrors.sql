-- Mirrors: their state, their tables and the CTID partitions of the initial load.

ALTER TABLE ferry.mirrors
    ADD COLUMN error               text,
    ADD COLUMN error_hint          text,
    -- the publication and slot the mirror reads, and whether Ferry created them (and so drops them)
    ADD COLUMN publication_name    text,
    ADD COLUMN created_publication boolean NOT NULL DEFAULT false,
    ADD COLUMN slot_name           text,
    -- the slot's consistent point: the snapshot's position, where streaming starts
    ADD COLUMN snapshot_lsn        pg_lsn,
    -- the LSN confirmed to the source: everything before it is in the destination
    ADD COLUMN confirmed_lsn       pg_lsn,
    ADD COLUMN started_at          timestamptz,
    ADD COLUMN snapshot_done_at    timestamptz,
    ADD COLUMN finished_at         timestamptz;

ALTER TABLE ferry.mirrors ADD CONSTRAINT mirrors_state_check CHECK (state IN
    ('setting_up', 'snapshot', 'running', 'paused', 'completed', 'failed'));

-- One row per replicated table.
CREATE TABLE ferry.mirror_table (
    id                   bigserial PRIMARY KEY,
    mirror_id            bigint NOT NULL REFERENCES ferry.mirrors (id) ON DELETE CASCADE,
    source_schema        text NOT NULL,
    source_table         text NOT NULL,
    source_oid           oid NOT NULL,
    destination_database text NOT NULL,
    destination_table    text NOT NULL,
    -- the columns copied, with their types and kinds, as planned
    columns              jsonb NOT NULL,
    state                text NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'copying', 'done', 'failed')),
    rows_estimated       bigint NOT NULL DEFAULT 0,
    rows_copied          bigint NOT NULL DEFAULT 0,
    error                text,
    started_at           timestamptz,
    finished_at          timestamptz,
    UNIQUE (mirror_id, source_schema, source_table)
);

-- The CTID block ranges a table's initial load is cut into; end_block NULL is open-ended.
CREATE TABLE ferry.mirror_partition (
    table_id     bigint NOT NULL REFERENCES ferry.mirror_table (id) ON DELETE CASCADE,
    partition_no integer NOT NULL,
    -- the relation read: the table itself, or one leaf of a partitioned table
    relation     text NOT NULL,
    start_block  bigint NOT NULL,
    end_block    bigint,
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    rows_copied  bigint NOT NULL DEFAULT 0,
    attempts     integer NOT NULL DEFAULT 0,
    -- the snapshot the rows were read in; NULL when a fresh one was taken after a restart
    snapshot     text,
    error        text,
    finished_at  timestamptz,
    PRIMARY KEY (table_id, partition_no)
);

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
       t.finished_at
FROM ferry.mirror_table t JOIN ferry.mirrors m ON m.id = t.mirror_id;

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
