//! Drives two handshakers with an arbitrary sequence of operations: real messages delivered,
//! dropped, duplicated, replayed out of order or mutated. Nothing may panic, and a session
//! that forms must be with the right peer and carry data both ways.
#![no_main]
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use weft_crypto::wire::Sealed;
use weft_crypto::{
    DATA_HEADER_LEN, DATA_OVERHEAD, Initiator, PayloadKind, Responding, Session, Timestamp,
};
use weft_fuzz::{SeededRng, node};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A starts a handshake.
    Initiate { index: u8 },
    /// B receives message number `which` of those seen so far (mutated if asked).
    DeliverToB { which: u8, flip: Option<(u8, u8)> },
    /// A receives message number `which`.
    DeliverToA { which: u8, flip: Option<(u8, u8)> },
    /// Raw bytes to either side.
    Garbage { to_a: bool, bytes: Vec<u8> },
    /// Time passes.
    Advance { secs: u16 },
    /// Send data over every session formed.
    Ping,
}

fuzz_target!(|ops: Vec<Op>| {
    let a = node(1);
    let mut b = node(2);
    let mut rng = SeededRng::new(9);
    let t0 = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut to_b: Vec<Vec<u8>> = Vec::new();
    let mut to_a: Vec<Vec<u8>> = Vec::new();
    let mut initiators: Vec<Initiator> = Vec::new();
    let mut responding: Vec<Responding> = Vec::new();
    let mut sessions_a: Vec<Session> = Vec::new();
    let mut sessions_b: Vec<Session> = Vec::new();
    let mut next_index = 100u32;
    for op in ops.into_iter().take(64) {
        let now = t0 + elapsed;
        let wall = Timestamp::from_unix(Duration::from_secs(1_800_000_000) + elapsed);
        match op {
            Op::Initiate { index } => {
                let (i, m) = a.initiate(u32::from(index), None, wall, &mut rng).unwrap();
                initiators.push(i);
                to_b.push(m.to_vec());
            }
            Op::DeliverToB { which, flip } => {
                let Some(m) = pick(&to_b, which, flip) else {
                    continue;
                };
                next_index += 1;
                if let Ok((r, resp)) = b.handle_initiation(&m, next_index, wall, &mut rng) {
                    responding.push(r);
                    to_a.push(resp.to_vec());
                }
                for r in std::mem::take(&mut responding) {
                    match b.handle_finish(r, &m, now) {
                        Ok(s) => sessions_b.push(s),
                        Err(rej) => responding.extend(rej.state),
                    }
                }
            }
            Op::DeliverToA { which, flip } => {
                let Some(m) = pick(&to_a, which, flip) else {
                    continue;
                };
                for i in std::mem::take(&mut initiators) {
                    match a.handle_response(i, &m, now) {
                        Ok((s, fin)) => {
                            sessions_a.push(s);
                            to_b.push(fin.to_vec());
                        }
                        Err(rej) => initiators.extend(rej.state),
                    }
                }
            }
            Op::Garbage { to_a: true, bytes } => {
                for i in std::mem::take(&mut initiators) {
                    let rej = a.handle_response(i, &bytes, now).unwrap_err();
                    initiators.extend(rej.state);
                }
            }
            Op::Garbage { to_a: false, bytes } => {
                let _ = b.handle_initiation(&bytes, 1, wall, &mut rng);
                for r in std::mem::take(&mut responding) {
                    match b.handle_finish(r, &bytes, now) {
                        Ok(s) => sessions_b.push(s),
                        Err(rej) => responding.extend(rej.state),
                    }
                }
            }
            Op::Advance { secs } => elapsed += Duration::from_secs(u64::from(secs)),
            Op::Ping => {
                for sb in &sessions_b {
                    assert_eq!(sb.remote(), a.public());
                    let peer_of = |s: &&Session| {
                        s.local_index() == sb.remote_index() && s.remote_index() == sb.local_index()
                    };
                    if let Some(sa) = sessions_a.iter().find(peer_of) {
                        assert_eq!(sa.remote(), b.public());
                        let mut p = vec![0u8; DATA_OVERHEAD + 3];
                        p[DATA_HEADER_LEN..DATA_HEADER_LEN + 3].copy_from_slice(b"abc");
                        if sa.seal_in_place(PayloadKind::Data, &mut p, now).is_ok() {
                            let mut sealed = Sealed::parse(&mut p[..]).unwrap();
                            let o = sb.open_in_place(&mut sealed, now).unwrap();
                            assert_eq!(&p[o.range()], b"abc");
                        }
                    }
                }
            }
        }
    }
});

fn pick(queue: &[Vec<u8>], which: u8, flip: Option<(u8, u8)>) -> Option<Vec<u8>> {
    if queue.is_empty() {
        return None;
    }
    let mut m = queue[usize::from(which) % queue.len()].clone();
    if let Some((at, mask)) = flip {
        let at = usize::from(at) % m.len();
        m[at] ^= mask;
    }
    Some(m)
}
