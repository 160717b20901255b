-- One table's trouble stops only that table: tables load again on their own while the others
-- stream, and a table gone from the source is marked as such.
--
-- A table being loaded again (RESYNC MIRROR … TABLE, RESUME of a failed table, a table that
-- enters a mapping's scope) goes `syncing` → `catchup` → `done`: it is copied from a snapshot
-- of its own, whose position is sync_lsn, and joins the stream with the transactions that
-- commit from there on. While any table does, the slot is held at hold_lsn (the stream keeps
-- the WAL from there to go back to), and confirmed_lsn stays what it was: everything before it
-- is in the destination for every table that streams.

ALTER TABLE ferry.mirror_table DROP CONSTRAINT mirror_table_state_check;
ALTER TABLE ferry.mirror_table ADD CONSTRAINT mirror_table_state_check CHECK (state IN
    ('pending', 'copying', 'done', 'failed', 'syncing', 'catchup', 'dropped'));
ALTER TABLE ferry.mirror_table ADD COLUMN sync_lsn pg_lsn;
ALTER TABLE ferry.mirrors ADD COLUMN hold_lsn pg_lsn;

-- The mirror's view gains the count of failed tables and of tables loading on their own.
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
       m.error_hint
FROM ferry.mirrors m
JOIN ferry.peers s ON s.id = m.source_peer
JOIN ferry.peers d ON d.id = m.destination_peer
LEFT JOIN LATERAL (
    SELECT sum(t.rows_copied) AS rows_copied, sum(t.rows_estimated) AS rows_estimated
    FROM ferry.mirror_table t WHERE t.mirror_id = m.id
) agg ON true;

-- Values a destination column cannot hold, replaced by their documented stand-ins (or failing
-- their table, as the mirror's unrepresentable_values says): counted per table and column,
-- with the key of the first row concerned as an example.
CREATE TABLE ferry.substitution (
    table_id    bigint NOT NULL REFERENCES ferry.mirror_table (id) ON DELETE CASCADE,
    column_name text NOT NULL,
    count       bigint NOT NULL,
    example_key text,
    first_at    timestamptz NOT NULL DEFAULT now(),
    last_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_id, column_name)
);

CREATE VIEW public.substitutions AS
SELECT m.name AS mirror,
       t.source_schema || '.' || t.source_table AS source_table,
       s.column_name,
       s.count AS values_replaced,
       s.example_key,
       s.first_at,
       s.last_at
FROM ferry.substitution s
JOIN ferry.mirror_table t ON t.id = s.table_id
JOIN ferry.mirrors m ON m.id = t.mirror_id;

-- ALTER MIRROR: every change to a mirror is recorded, and each mirror's current mapping and
-- options are shown.
CREATE TABLE ferry.mirror_change (
    mirror_id  bigint NOT NULL REFERENCES ferry.mirrors (id) ON DELETE CASCADE,
    changed_at timestamptz NOT NULL DEFAULT now(),
    change     text NOT NULL
);

CREATE VIEW public.mirror_changes AS
SELECT m.name AS mirror, c.changed_at, c.change
FROM ferry.mirror_change c JOIN ferry.mirrors m ON m.id = c.mirror_id;

CREATE VIEW public.mirrors AS
SELECT m.name AS mirror,
       s.name AS source,
       d.name AS destination,
       m.state,
       m.spec -> 'mapping' AS mapping,
       m.spec -> 'options' AS options,
       m.created_at,
       m.updated_at
FROM ferry.mirrors m
JOIN ferry.peers s ON s.id = m.source_peer
JOIN ferry.peers d ON d.id = m.destination_peer;

-- The leaves of a partitioned table as last loaded: a partition attached or detached since
-- makes the table load again.
ALTER TABLE ferry.mirror_table ADD COLUMN leaves text[];
