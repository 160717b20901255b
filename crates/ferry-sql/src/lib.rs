//! ferry-sql
