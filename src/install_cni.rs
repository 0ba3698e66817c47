//! `weft install-cni`: the command line of weft-cni's conflist installer
//! ([`weft_cni::install`], which says what it guarantees).

use std::path::PathBuf;

use anyhow::Context;
use weft_cni::install::{self, Options, PLUGIN_NAME, Parts};

/// `weft install-cni`'s options (each also an environment variable, as the DaemonSet sets them).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The weft-cni binary to install (default: `weft-cni` beside this `weft` binary).
    #[arg(long, env = "WEFT_CNI_PLUGIN")]
    cni_plugin: Option<PathBuf>,
    /// The CNI bin directory the runtime runs plugins from.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The CNI configuration directory the runtime reads networks from.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The router's state directory (weft-cni reads the node's block and keeps leases there).
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// The bridge pods attach to (the router's --bridge).
    #[arg(long, env = "WEFT_BRIDGE", default_value = "weft")]
    bridge: String,
    /// The underlay MTU the pod MTU is computed from, as the router computes it (default:
    /// detected from the default route's interface, like the router).
    #[arg(long, env = "WEFT_UNDERLAY_MTU")]
    underlay_mtu: Option<u32>,
    /// Install only one of the two files. `plugin`: the binary alone (the DaemonSet's init
    /// container; the router writes the conflist once it can carry pod traffic, given
    /// --cni-conf-dir). `conflist`: the conflist alone, for a weft-cni already in
    /// --cni-bin-dir. Default: both, plugin first.
    #[arg(long, value_enum)]
    only: Option<Only>,
}

/// `--only`'s values.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum Only {
    /// The weft-cni binary alone.
    Plugin,
    /// The conflist alone.
    Conflist,
}

/// The subcommand: resolve the options (detecting the underlay MTU when not given), install,
/// print one line per action.
pub fn run(args: Args) -> anyhow::Result<()> {
    let plugin = match args.cni_plugin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this weft binary (pass --cni-plugin)")?
            .with_file_name(PLUGIN_NAME),
    };
    let parts = match args.only {
        None => Parts::Both,
        Some(Only::Plugin) => Parts::Plugin,
        Some(Only::Conflist) => Parts::Conflist,
    };
    let ours = [weft_router::config::TUN_NAME, args.bridge.as_str()];
    let pod_mtu = match parts {
        // Nothing to detect: the MTU is only written into the conflist.
        Parts::Plugin => 0,
        _ => install::pod_mtu(args.underlay_mtu, &ours)?,
    };
    let options = Options {
        plugin,
        bin_dir: args.cni_bin_dir,
        conf_dir: args.cni_conf_dir,
        state_dir: args.state_dir,
        bridge: args.bridge,
        pod_mtu,
    };
    for action in install::install_parts(&options, parts)? {
        println!("{action}");
    }
    Ok(())
}
