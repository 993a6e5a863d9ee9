//! Shared helpers for Warren black-box tests.
