-- RESYNC MIRROR loads every table again into a fresh table beside the live one, then swaps
-- them. While a resync runs, load_table names the fresh table and load_table_uuid is its
-- ClickHouse UUID, by which a swap interrupted by a crash is recognised as done.

ALTER TABLE ferry.mirror_table
    ADD COLUMN load_table      text,
    ADD COLUMN load_table_uuid text;
