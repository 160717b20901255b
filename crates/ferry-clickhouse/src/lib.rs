//! ferry-clickhouse
