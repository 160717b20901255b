-- Ferry's catalog: peers and mirrors.
--
-- Ferry's own tables live in the schema `ferry`; what users read from psql are the views in
-- `public` (run in a read-only transaction), which never show a secret.

CREATE SCHEMA IF NOT EXISTS ferry;

CREATE TABLE ferry.settings (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE ferry.peers (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    type       text NOT NULL CHECK (type IN ('postgres', 'clickhouse')),
    -- every setting but the password
    options    jsonb NOT NULL,
    -- the password, sealed with the daemon's secret key (AES-256-GCM); NULL when empty
    secret     bytea,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ferry.mirrors (
    id               bigserial PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    source_peer      bigint NOT NULL REFERENCES ferry.peers (id) ON DELETE RESTRICT,
    destination_peer bigint NOT NULL REFERENCES ferry.peers (id) ON DELETE RESTRICT,
    -- the mirror's statement, analysed: mappings and options
    spec             jsonb NOT NULL,
    state            text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW public.peers AS
SELECT p.name,
       p.type,
       CASE WHEN p.secret IS NULL THEN p.options
            ELSE p.options || jsonb_build_object('password', '********')
       END AS options,
       p.created_at
FROM ferry.peers p;
