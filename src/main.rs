//! `weft`: the command-line tool and the router daemon.
fn main() {}
