//! The join secret file, watched: its content is polled every [`POLL_INTERVAL`] and a new
//! valid content goes to the Node as [`weft_mesh::Command::SetJoinSecrets`] (the rotation of
//! docs/design.md §3).
//!
//! Polled and compared by content rather than watched with inotify: a Kubernetes Secret
//! volume is updated by swapping a symlink to a new directory, which an inotify watch on the
//! file does not see.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{error, info};
use weft_crypto::{JoinSecrets, Secret};

/// Makes glibc's malloc serve allocations of 1 MiB and more from mappings of their own,
/// unmapped when freed. Its default threshold adapts upwards after the first such free (the
/// start-up derivation), and the 7 MiB of each later Argon2id derivation then stays in the
/// arena of whichever blocking thread ran it: measured, one rotation took a router's VmRSS
/// from 31 to 60 MiB without this. Call before the first derivation. A no-op elsewhere (musl
/// maps large allocations by itself).
pub fn unmap_large_allocations_when_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc tunable; it takes no pointers and is called before
    // any thread of ours starts.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// How often the file is read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Where the join secrets come from, for the watch: the file and the cluster name that
/// salts the derivation.
#[derive(Debug, Clone)]
pub struct JoinSecretFile {
    /// The file (`--join-secret-file`).
    pub path: PathBuf,
    /// The cluster name (`--cluster-name`).
    pub cluster_name: String,
    /// Its content when the router read it at start (already applied).
    pub content: Secret<Vec<u8>>,
}

/// Reloads and refused contents, for metrics and the status API.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    /// New contents applied.
    pub reloads: AtomicU64,
    /// Contents refused (unreadable file, invalid secrets): counted once per bad content.
    pub errors: AtomicU64,
}

/// The watch: new secrets arrive on `updates`.
pub struct Watch {
    updates: mpsc::Receiver<JoinSecrets>,
    /// Its counters.
    pub counters: Arc<ReloadCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    /// Starts polling `file`.
    pub fn start(file: JoinSecretFile) -> Self {
        let (tx, updates) = mpsc::channel(1);
        let counters = Arc::new(ReloadCounters::default());
        let task = tokio::spawn(poll(file, tx, counters.clone()));
        Self {
            updates,
            counters,
            task,
        }
    }

    /// The next new secrets; pending forever without a watch.
    pub async fn next(watch: &mut Option<Self>) -> JoinSecrets {
        match watch {
            Some(w) => match w.updates.recv().await {
                Some(s) => s,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

async fn poll(file: JoinSecretFile, tx: mpsc::Sender<JoinSecrets>, counters: Arc<ReloadCounters>) {
    let mut last = file.content.clone();
    // The last failure, so that a bad file is logged and counted once, not every poll.
    let mut failing: Option<String> = None;
    let path = file.path.display().to_string();
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let read = {
            let p = file.path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(&p).map(Secret::new)).await
        };
        let content = match read {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let why = format!("cannot read it: {e}");
                if failing.as_ref() != Some(&why) {
                    error!(file = %path, error = %why, "join secret file refused; keeping the secrets in use");
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    failing = Some(why);
                }
                continue;
            }
            Err(_) => continue,
        };
        if content.expose() == last.expose() {
            continue;
        }
        // Argon2id takes tens of milliseconds per secret: off the runtime's threads.
        let cluster = file.cluster_name.clone();
        let text = Secret::new(content.expose().clone());
        let parsed =
            tokio::task::spawn_blocking(move || JoinSecrets::parse(text.expose(), &cluster)).await;
        match parsed {
            Ok(Ok(secrets)) => {
                info!(
                    file = %path,
                    primary = %secrets.primary().id(),
                    accepted = secrets.len(),
                    "join secret file changed: applying"
                );
                if tx.send(secrets).await.is_err() {
                    return;
                }
                counters.reloads.fetch_add(1, Ordering::Relaxed);
                failing = None;
                last = content;
            }
            Ok(Err(e)) => {
                let why = e.to_string();
                if failing.as_ref() != Some(&why) {
                    error!(file = %path, error = %why, "join secret file refused; keeping the secrets in use");
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    failing = Some(why);
                }
                // Not parsed again until it changes.
                last = content;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"join secret A, long enough";
    const B: &[u8] = b"join secret B, long enough";

    #[tokio::test]
    async fn a_new_content_is_applied_and_a_bad_one_counted_and_ignored() {
        let dir = std::env::temp_dir().join(format!("weft-js-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, A).unwrap();
        let file = JoinSecretFile {
            path: path.clone(),
            cluster_name: "test".into(),
            content: Secret::new(A.to_vec()),
        };
        let mut watch = Some(Watch::start(file));
        let counters = watch.as_ref().unwrap().counters.clone();
        let mut both = B.to_vec();
        both.push(b'\n');
        both.extend_from_slice(A);
        std::fs::write(&path, &both).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), Watch::next(&mut watch))
            .await
            .expect("the change was seen");
        assert_eq!(got, JoinSecrets::parse(&both, "test").unwrap());
        assert_eq!(counters.reloads.load(Ordering::Relaxed), 1);
        // A short secret: refused once, counted once, nothing sent.
        std::fs::write(&path, b"short\n").unwrap();
        let none = tokio::time::timeout(3 * POLL_INTERVAL, Watch::next(&mut watch)).await;
        assert!(none.is_err(), "a bad file changed the secrets");
        assert_eq!(counters.errors.load(Ordering::Relaxed), 1);
        // A missing file likewise.
        std::fs::remove_file(&path).unwrap();
        let none = tokio::time::timeout(2 * POLL_INTERVAL, Watch::next(&mut watch)).await;
        assert!(none.is_err());
        assert_eq!(counters.errors.load(Ordering::Relaxed), 2);
        // Back to a valid content: applied.
        std::fs::write(&path, B).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), Watch::next(&mut watch))
            .await
            .expect("the change was seen");
        assert_eq!(got, JoinSecrets::parse(B, "test").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
