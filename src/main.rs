//! `weft`: the command-line tool (and, later, the router daemon and the lab).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use weft_crypto::{JoinSecret, KeyPair, OsRandom};

/// weft: an encrypted mesh overlay network for Kubernetes.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a node key pair (written to --key-file, mode 0600) or a cluster join secret.
    ///
    /// A node's identity is its public key, printed on stdout. The join secret decides who
    /// may join the cluster: store it in a file (or a Kubernetes Secret) on every node.
    Keygen {
        /// Where to write the new private key. Refuses to replace an existing file.
        #[arg(long, env = "WEFT_KEY_FILE", conflicts_with = "join_secret")]
        key_file: Option<PathBuf>,
        /// Print a new random join secret (32 bytes, base64) instead of making a key pair.
        #[arg(long)]
        join_secret: bool,
    },
    /// Print the public key of an existing key file.
    Pubkey {
        /// The private key file (as written by `weft keygen`).
        #[arg(long, env = "WEFT_KEY_FILE")]
        key_file: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen {
            join_secret: true, ..
        } => {
            let text = JoinSecret::generate_text(&mut OsRandom);
            println!("{}", text.expose());
        }
        Command::Keygen {
            key_file: Some(path),
            ..
        } => {
            if path.exists() {
                bail!(
                    "{} already exists; weft keygen never replaces a key (a node's key is its \
                     identity). Remove it first if you really mean to",
                    path.display()
                );
            }
            let pair = KeyPair::generate(&mut OsRandom);
            pair.save(&path).context("writing the new key")?;
            println!("{}", pair.public());
        }
        Command::Keygen { .. } => bail!("say what to make: --key-file PATH or --join-secret"),
        Command::Pubkey { key_file } => println!("{}", KeyPair::load(&key_file)?.public()),
    }
    Ok(())
}
