//! Midge rule engine (being built).
