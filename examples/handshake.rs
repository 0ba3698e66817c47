//! weft-crypto at a glance: two peers in memory run the three-message handshake, then one
//! packet is sealed and opened. `cargo run --example handshake`
//!
//! Real routers pass `OsRandom` and the real clocks, as here; the simulator passes a seeded
//! generator and a virtual clock instead.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use weft_crypto::wire::Sealed;
use weft_crypto::{
    DATA_HEADER_LEN, DATA_OVERHEAD, Handshaker, JoinSecret, KeyPair, OsRandom, PayloadKind,
    Timestamp,
};

fn main() -> anyhow::Result<()> {
    let mut rng = OsRandom;
    let secret = JoinSecret::new(
        b"an example join secret, not for real use",
        weft_crypto::DEFAULT_CLUSTER_NAME,
    )?;
    let alice = Handshaker::new(KeyPair::generate(&mut rng), secret.clone());
    let mut bob = Handshaker::new(KeyPair::generate(&mut rng), secret);
    println!("alice {}\nbob   {}", alice.public(), bob.public());

    let wall = Timestamp::from_unix(SystemTime::now().duration_since(UNIX_EPOCH)?);
    let now = Instant::now();

    // Each side picks a local index for the handshake; the other side addresses it with it.
    let (initiator, initiation) = alice.initiate(0x1111, None, wall, &mut rng)?;
    println!("initiation  alice -> bob   {:>3} bytes", initiation.len());
    let (responding, response) = bob.handle_initiation(&initiation, 0x2222, wall, &mut rng)?;
    println!("response    bob   -> alice {:>3} bytes", response.len());
    let (alice_session, finish) = alice
        .handle_response(initiator, &response, now)
        .map_err(|r| r.error)?;
    println!("finish      alice -> bob   {:>3} bytes", finish.len());
    let bob_session = bob
        .handle_finish(responding, &finish, now)
        .map_err(|r| r.error)?;
    println!(
        "established: alice sees {}, bob sees {}",
        alice_session.remote(),
        bob_session.remote()
    );

    // A packet is laid out with room for the header in front and the tag behind.
    let payload = b"an IP packet from a pod";
    let mut packet = vec![0u8; DATA_OVERHEAD + payload.len()];
    packet[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
    alice_session.seal_in_place(PayloadKind::Data, &mut packet, now)?;
    // The receiver checks the header once; the session opens the checked datagram.
    let mut sealed = Sealed::parse(&mut packet[..])?;
    let header = sealed.header();
    println!(
        "data        alice -> bob   {:>3} bytes ({} of payload + {DATA_OVERHEAD} of overhead), \
         receiver index {:#x}, counter {}",
        sealed.as_bytes().len(),
        payload.len(),
        header.receiver_index,
        header.counter
    );
    let opened = bob_session.open_in_place(&mut sealed, now)?;
    println!(
        "opened: {:?}",
        String::from_utf8_lossy(&packet[opened.range()])
    );
    Ok(())
}
