//! Warren
