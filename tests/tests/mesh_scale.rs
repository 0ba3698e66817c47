//! 500 nodes from one seed converge. Prints the virtual time to converge, gossip
//! bytes sent per node per second in steady state, and memory per peer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weft_tests::sim::DataPath;
use weft_tests::{Sim, seed_from_env, star};

// Each scenario runs on both data paths: `name::node` and `name::data_plane`.
weft_tests::both_data_paths!(i_five_hundred_nodes_converge,);

/// Counts the heap in use, for the memory-per-peer figure.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// How many nodes: `WEFT_SCALE_NODES`, else 500 on the Node path and 100 on the data-plane
/// path. Convergence carries no pod traffic, so the data-plane run differs only in the
/// packets sent at the end; a fifth of the nodes keeps its time small.
fn nodes(data_path: DataPath) -> usize {
    std::env::var("WEFT_SCALE_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(match data_path {
            DataPath::Node => 500,
            DataPath::DataPlane => 100,
        })
}

/// One scale run at a time: the heap figure counts the whole process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// i. 500 nodes, each knowing only node 0, converge (full mesh, every block known everywhere).
fn i_five_hundred_nodes_converge(data_path: DataPath) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = nodes(data_path);
    let started = Instant::now();
    let heap_before = IN_USE.load(Ordering::Relaxed);
    let mut sim = Sim::with_data_path(seed_from_env(9), data_path);
    // Real X25519 costs ~0.5M scalar multiplications here; the hash stand-in keeps the test
    // inside the CI budget (weft-crypto's insecure-fast-dh, refused in optimised builds).
    if std::env::var("WEFT_SCALE_REAL_DH").is_err() {
        sim.use_fast_insecure_dh();
    }
    star(&mut sim, n);
    let took = sim.run_until(Duration::from_secs(120), Duration::from_secs(1), |s| {
        s.full_mesh() && s.all_know_all_blocks()
    });
    let (up, pairs) = sim.mesh_progress();
    let took = took.unwrap_or_else(|| {
        panic!(
            "seed {}: {n} nodes did not converge in 120 s ({up}/{pairs} tunnels up)",
            sim.seed
        )
    });
    let heap = IN_USE.load(Ordering::Relaxed).saturating_sub(heap_before);

    // Steady state: bytes over one keepalive period (10 s, also two digest rounds).
    let gossip = |s: &Sim| -> u64 { (0..n).map(|i| s.node(i).stats().gossip_bytes).sum() };
    let control = |s: &Sim| -> u64 { (0..n).map(|i| s.node(i).stats().control_bytes).sum() };
    let (g0, c0) = (gossip(&sim), control(&sim));
    let window = weft_crypto::KEEPALIVE_TIMEOUT;
    sim.run_for(window);
    let (g1, c1) = (gossip(&sim), control(&sim));
    assert!(sim.full_mesh(), "still a full mesh in steady state");
    let per_node_s = |d: u64| d as f64 / n as f64 / window.as_secs_f64();
    eprintln!(
        "scale: {n} nodes converged in {:.1} s virtual; steady state per node: gossip {:.0} B/s, \
         all control (gossip + keepalives + IPAM) {:.0} B/s; heap {:.1} MiB = {:.0} B per peer \
         entry ({} entries); wall time {:.1} s; {} events",
        took.as_secs_f64(),
        per_node_s(g1 - g0),
        per_node_s(c1 - c0),
        heap as f64 / (1 << 20) as f64,
        heap as f64 / (n * (n - 1)) as f64,
        n * (n - 1),
        started.elapsed().as_secs_f64(),
        sim.events_processed(),
    );
    sim.assert_single_owners();

    // Every node's pods reach the next node's: pod traffic flows across the converged mesh.
    for i in 0..n {
        let p = sim.packet(i, (i + 1) % n, i as u32);
        sim.send_packets(i, vec![p]);
    }
    sim.run_for(Duration::from_secs(1));
    for i in 0..n {
        assert_eq!(
            sim.take_tun(i).len(),
            1,
            "seed {}: node {i} got no packet from its neighbour",
            sim.seed
        );
    }
    sim.assert_data_path_carried_traffic();
}
