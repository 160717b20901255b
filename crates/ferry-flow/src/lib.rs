//! ferry-flow
