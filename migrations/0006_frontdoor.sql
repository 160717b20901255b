-- The front door: what a Ferry login may read.
--
-- SQL that clients send through Ferry runs as a reader role that may read the views in
-- public and nothing else. The daemon names that role (--catalog-reader-role), so it is not
-- created here: after every migration run the runner creates it when missing and grants it
-- SELECT on every view then in public (see crates/ferry-catalog/src/migrate.rs), so views
-- that later migrations add or recreate are covered without saying so.
--
-- Here, Ferry's own schema is closed to every role but its owner, now and for whatever
-- later migrations put in it, whatever defaults the database had.

REVOKE ALL ON SCHEMA ferry FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA ferry FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA ferry FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ferry FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA ferry REVOKE ALL ON TABLES FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA ferry REVOKE ALL ON SEQUENCES FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA ferry REVOKE ALL ON FUNCTIONS FROM PUBLIC;
