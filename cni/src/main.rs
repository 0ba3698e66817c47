//! The `weft-cni` binary: the CNI calling convention around [`weft_cni::plugin::run`].

use std::io::{Read, Write};

use weft_cni::config::{MAX_CONFIG_BYTES, NetConf};
use weft_cni::env::Invocation;
use weft_cni::plugin::{self, Failure};
use weft_cni::result::{CniError, ErrorCode};
use weft_cni::version::CniVersion;

fn main() {
    let mut stdin = Vec::new();
    // One byte past the limit tells "too large" apart from "exactly the limit".
    let read = std::io::stdin()
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut stdin);
    let outcome = match (read, Invocation::from_env(|k| std::env::var_os(k))) {
        (Err(e), _) => Err(Failure {
            error: CniError::new(ErrorCode::IoFailure, format!("reading stdin: {e}")),
            version: CniVersion::LATEST,
        }),
        (Ok(_), Err(error)) => Err(Failure {
            error,
            version: NetConf::peek_version(&stdin).unwrap_or(CniVersion::LATEST),
        }),
        (Ok(_), Ok(invocation)) => plugin::run(&invocation, &stdin),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(None) => {}
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
        }
        Err(f) => {
            // The runtime reads the JSON on stdout; stderr is for a human reading logs.
            let _ = writeln!(out, "{}", f.error.to_json(f.version));
            let _ = out.flush();
            eprintln!("weft-cni: {}", f.error);
            std::process::exit(1);
        }
    }
}
