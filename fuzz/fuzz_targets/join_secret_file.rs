//! Arbitrary bytes as a join secret file: the parser never panics, accepts 1 to
//! MAX_JOIN_SECRETS lines of at least MIN_JOIN_SECRET_LEN bytes, and refuses everything else
//! before deriving anything. Lines are "derived" from a pool made once (Argon2id per input
//! would make the target crawl), so only the parsing is under test.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft_crypto::{
    DEFAULT_CLUSTER_NAME, JoinSecret, JoinSecrets, MAX_JOIN_SECRETS, MIN_JOIN_SECRET_LEN,
};

fn pool() -> &'static Vec<JoinSecret> {
    static POOL: OnceLock<Vec<JoinSecret>> = OnceLock::new();
    POOL.get_or_init(|| {
        (0..MAX_JOIN_SECRETS)
            .map(|i| {
                JoinSecret::new(
                    format!("fuzzing join secret {i:04}").as_bytes(),
                    DEFAULT_CLUSTER_NAME,
                )
                .expect("long enough")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut derived = 0;
    let parsed = JoinSecrets::parse_with(data, DEFAULT_CLUSTER_NAME, |_| {
        derived += 1;
        Ok(pool()[derived - 1].clone())
    });
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty())
        .collect();
    match parsed {
        Ok(secrets) => {
            assert_eq!(secrets.len(), lines.len());
            assert!(lines.iter().all(|l| l.len() >= MIN_JOIN_SECRET_LEN));
        }
        Err(_) => {
            let valid = !lines.is_empty()
                && lines.len() <= MAX_JOIN_SECRETS
                && lines.iter().all(|l| l.len() >= MIN_JOIN_SECRET_LEN)
                && lines
                    .iter()
                    .enumerate()
                    .all(|(i, l)| !lines[..i].contains(l));
            assert!(!valid, "a valid file was refused");
            // Nothing was derived for text that is refused.
            assert_eq!(derived, 0);
        }
    }
});
