//! The `warren` binary: parse flags, set up logging, bind, and run until a signal.
fn main() {}
