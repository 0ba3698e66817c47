//! weft-cni: the CNI plugin and the CNI types shared with the router's control API.
//!
//! Synchronous and small: it runs once per CNI call and never depends on `weft-mesh`,
//! `weft-crypto` or `weft-router` (DESIGN.md §8).
