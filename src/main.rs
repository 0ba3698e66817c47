//! `weft`: the command-line tool (and, later, the router daemon and the lab).

mod lab;

use std::collections::{BTreeMap, BTreeSet};
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
    /// A weft cluster inside network namespaces on this machine (needs root).
    #[command(subcommand)]
    Lab(LabCommand),
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Build a lab: an underlay switch, N nodes, M pods per node attached by weft-cni.
    ///
    /// Removes what an earlier run with the same prefix left behind first; if anything fails
    /// half-way, removes what it made.
    Up {
        /// Number of nodes (1–200).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per node (0–50).
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Put node N behind a NAT box (repeatable).
        #[arg(long = "nat", value_name = "NODE")]
        nat: Vec<usize>,
        /// Impair node N's underlay link both ways, e.g. `2:loss=5%,delay=20ms` (repeatable).
        #[arg(long = "netem", value_name = "NODE:OPTS", value_parser = lab::plan::parse_netem)]
        netem: Vec<(usize, lab::plan::Netem)>,
        /// Drop all underlay traffic between two nodes, e.g. `1-3` (repeatable).
        #[arg(long = "block", value_name = "A-B", value_parser = lab::plan::parse_link)]
        block: Vec<(usize, usize)>,
        /// The weft-cni binary (default: next to this weft binary).
        #[arg(long, env = "WEFT_CNI_BIN")]
        cni_bin: Option<PathBuf>,
        #[command(flatten)]
        which: LabName,
    },
    /// Remove a lab and everything it made.
    Down {
        #[command(flatten)]
        which: LabName,
    },
    /// Show a lab's nodes and pods.
    Status {
        /// Print JSON (nodes, and pods with name, node and address) for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        which: LabName,
    },
    /// Run a command inside a pod: `weft lab exec n1-p1 -- ping 10.32.2.2`.
    Exec {
        /// The pod, as `weft lab status` names it (e.g. n1-p1).
        pod: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        which: LabName,
    },
}

#[derive(clap::Args, Debug)]
struct LabName {
    /// Name prefix of the lab's namespaces (1–8 lowercase letters or digits); several labs
    /// with different prefixes can run side by side.
    #[arg(long, env = "WEFT_LAB_PREFIX", default_value = "weft")]
    prefix: String,
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
        Command::Lab(cmd) => return run_lab(cmd),
    }
    Ok(())
}

fn run_lab(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up {
            nodes,
            pods,
            nat,
            netem,
            block,
            cni_bin,
            which,
        } => {
            let spec = lab::plan::LabSpec {
                prefix: which.prefix,
                nodes,
                pods,
                nat: nat.into_iter().collect::<BTreeSet<_>>(),
                netem: netem.into_iter().collect::<BTreeMap<_, _>>(),
                blocked: block.into_iter().collect(),
            };
            let cni_bin = match cni_bin {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("weft-cni"),
            };
            let state = lab::up(&spec, &cni_bin)?;
            print!("{}", lab::render(&state));
        }
        LabCommand::Down { which } => {
            let n = lab::down(&which.prefix)?;
            println!("lab {:?}: removed {n} namespaces", which.prefix);
        }
        LabCommand::Status { json, which } => {
            let state = lab::status(&which.prefix)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                print!("{}", lab::render(&state));
            }
        }
        LabCommand::Exec {
            pod,
            command,
            which,
        } => {
            let code = lab::exec(&which.prefix, &pod, &command)?;
            std::process::exit(code);
        }
    }
    Ok(())
}
