//! weft-mesh: the brain of a router, sans-IO.
//!
//! Owns the peer table, gossip, routes, tunnel state machines and IPAM blocks. It takes bytes
//! and `now` and returns what to send and when to wake up; it never touches tokio, sockets,
//! netlink or the clock (DESIGN.md §8).
