//! Seal and open batches of 64 datagrams at 1400 B and 64 KiB, beside raw ring
//! ChaCha20-Poly1305 on the same buffers in the same run. `cargo bench -p weft-crypto`.
//!
//! The weft side includes everything the data plane pays per packet: header write, counter
//! reservation, replay window (check and mark), expiry checks. The raw side is only the AEAD.
//! Opening starts from checked datagrams (`wire::Sealed`): the receive path checks a header
//! once, to find the session, before it opens; that check is outside the timing.

use std::time::{Duration, Instant};

use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use weft_crypto::wire::Sealed;
use weft_crypto::{
    DATA_HEADER_LEN, DATA_OVERHEAD, Handshaker, JoinSecret, KeyPair, PayloadKind, SeededRng,
    Session, Timestamp,
};

const BATCH: usize = 64;
const SIZES: [usize; 2] = [1400, 65536];

fn main() {
    divan::main();
}

fn sessions() -> (Session, Session, Instant) {
    let mut rng = SeededRng::new(1);
    let secret =
        JoinSecret::new(b"benchmark join secret", weft_crypto::DEFAULT_CLUSTER_NAME).unwrap();
    let a = Handshaker::new(KeyPair::generate(&mut rng), secret.clone());
    let mut b = Handshaker::new(KeyPair::generate(&mut rng), secret);
    let wall = Timestamp::from_unix(Duration::from_secs(1_800_000_000));
    let now = Instant::now();
    let (i, m1) = a.initiate(1, None, wall, &mut rng).unwrap();
    let (r, m2) = b.handle_initiation(&m1, 2, wall, &mut rng).unwrap();
    let (sa, m3) = a.handle_response(i, &m2, now).map_err(|r| r.error).unwrap();
    let sb = b.handle_finish(r, &m3, now).map_err(|r| r.error).unwrap();
    (sa, sb, now)
}

fn batch(size: usize) -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| {
            let mut p = vec![0u8; DATA_OVERHEAD + size];
            p[DATA_HEADER_LEN..DATA_HEADER_LEN + size].fill(i as u8);
            p
        })
        .collect()
}

fn raw_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]).unwrap())
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// What ring alone does for one datagram: seal the body, with the header as AAD.
fn raw_seal(key: &LessSafeKey, counter: u64, p: &mut [u8]) {
    let (head, rest) = p.split_at_mut(DATA_HEADER_LEN);
    let (body, tag_out) = rest.split_at_mut(rest.len() - 16);
    let tag = key
        .seal_in_place_separate_tag(nonce(counter), Aad::from(&*head), body)
        .unwrap();
    tag_out.copy_from_slice(tag.as_ref());
}

#[divan::bench(args = SIZES)]
fn seal_weft(bencher: Bencher, size: usize) {
    let (a, _b, now) = sessions();
    let mut packets = batch(size);
    bencher
        .counter(BytesCount::new(size * BATCH))
        .bench_local(|| {
            a.seal_batch(PayloadKind::Data, black_box(&mut packets), now)
                .unwrap()
        });
}

#[divan::bench(args = SIZES)]
fn seal_ring(bencher: Bencher, size: usize) {
    let key = raw_key();
    let mut packets = batch(size);
    let mut counter = 0u64;
    bencher
        .counter(BytesCount::new(size * BATCH))
        .bench_local(|| {
            for p in black_box(&mut packets).iter_mut() {
                raw_seal(&key, counter, p);
                counter += 1;
            }
        });
}

#[divan::bench(args = SIZES)]
fn open_weft(bencher: Bencher, size: usize) {
    let (a, b, now) = sessions();
    let mut results = Vec::with_capacity(BATCH);
    bencher
        .counter(BytesCount::new(size * BATCH))
        .with_inputs(|| {
            let mut packets = batch(size);
            a.seal_batch(PayloadKind::Data, &mut packets, now).unwrap();
            // The receive path checks each header once, to find the session.
            packets
                .into_iter()
                .map(|p| Sealed::parse(p).unwrap())
                .collect::<Vec<_>>()
        })
        .bench_local_refs(|packets| {
            b.open_batch(packets, now, &mut results);
            assert!(results.iter().all(|r| r.is_ok()));
        });
}

#[divan::bench(args = SIZES)]
fn open_ring(bencher: Bencher, size: usize) {
    let key = raw_key();
    let mut counter = 0u64;
    bencher
        .counter(BytesCount::new(size * BATCH))
        .with_inputs(|| {
            let mut packets = batch(size);
            for p in packets.iter_mut() {
                raw_seal(&key, counter, p);
                counter += 1;
            }
            (packets, counter - BATCH as u64)
        })
        .bench_local_refs(|(packets, first)| {
            for (i, p) in packets.iter_mut().enumerate() {
                let (head, sealed) = p.split_at_mut(DATA_HEADER_LEN);
                key.open_in_place(nonce(*first + i as u64), Aad::from(&*head), sealed)
                    .unwrap();
            }
        });
}
