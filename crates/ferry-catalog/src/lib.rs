//! ferry-catalog
