//! The conflist installer behind `weft install-cni`: puts `weft-cni` and its network
//! configuration where the container runtime looks for them (docs/design.md §6). Under the
//! DaemonSet the two halves run at different times: the init container installs the plugin
//! before the router starts, and the router writes the conflist once it can carry pod traffic
//! (the conflist is what makes the kubelet call the node's network ready). Both run again on
//! every pod restart, so they must be idempotent.
//!
//! What it guarantees:
//! - everything is checked before anything is written (the plugin is an ELF file, the
//!   directories exist, the conflist passes weft-cni's own config parser): bad input changes
//!   nothing;
//! - each file is written atomically ([`weft_sys::durable`]: temporary file in the same
//!   directory, fsync, rename, directory fsync): a runtime never reads a torn conflist, and
//!   replacing the binary while a CNI call runs it is safe (the running process keeps the old
//!   inode; an in-place write would fail with ETXTBSY or corrupt it);
//! - a file whose content and mode are already right is not rewritten (reported "unchanged"),
//!   so a restart does not make the runtime reload its configuration;
//! - stale weft configurations (another file name whose first plugin is `weft-cni`) are
//!   removed; other vendors' files are never touched.
//!
//! Chaining. A conflist is the chain the runtime runs for the pod's `eth0`. `portmap` belongs
//! in it: it implements `hostPort` through the `portMappings` capability, which the runtime
//! only passes to plugins that declare it. `loopback` does not: the CNI spec leaves `lo` to
//! the runtime, and containerd (and CRI-O's older versions) run the `loopback` binary from the
//! bin directory themselves, as a separate network, for every pod. Chaining it again in our
//! list would run it twice, and its DEL in our chain would take `lo` down under the runtime's
//! own loopback network. So `portmap` is chained when its binary is there, `loopback` is only
//! looked for, and a missing binary of either is reported with what stops working.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use weft_sys::durable;
use weft_sys::mtu::{self, MIN_POD_MTU, TUNNEL_OVERHEAD, UnderlayMtuError};

use crate::config::{ConfigError, NetConf, PolicyWait};

/// The conflist's file name. Runtimes load the first configuration in name order (containerd
/// loads exactly one), so a low number puts weft ahead of leftovers with later names.
pub const CONFLIST_NAME: &str = "10-weft.conflist";
/// The network name pods are attached under (the runtime's cache is keyed by it).
pub const NETWORK_NAME: &str = "weft";
/// The plugin's file name in the bin directory: the conflist's `type`.
pub const PLUGIN_NAME: &str = "weft-cni";
/// cniVersion of the list. A conflist gives every plugin the list's version, and the
/// reference plugins of many distributions (Debian's 1.1.1) stop at 1.0.0.
pub const CNI_VERSION: &str = "1.0.0";
/// Temporary files of earlier versions, which wrote their own: a leading dot and a `.tmp`
/// suffix. A crashed run's leftovers are recognisably ours and removed. (Today's temporaries
/// are [`weft_sys::durable`]'s, cleared by its rule.)
const OLD_TEMP_PREFIX: &str = ".weft-install.";
const OLD_TEMP_SUFFIX: &str = ".tmp";
/// The extensions libcni loads from the conf directory.
const CONF_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];
/// Configurations larger than this are not ours and not read (a real one is a few hundred
/// bytes).
const MAX_CONF_BYTES: u64 = 1 << 20;

/// What to install.
#[derive(Debug, Clone)]
pub struct Options {
    /// The weft-cni binary to copy.
    pub plugin: PathBuf,
    /// The CNI bin directory the runtime runs plugins from.
    pub bin_dir: PathBuf,
    /// The CNI configuration directory the runtime reads networks from.
    pub conf_dir: PathBuf,
    /// The router's state directory (weft-cni reads the node's block and keeps leases there).
    pub state_dir: PathBuf,
    /// The bridge pods attach to.
    pub bridge: String,
    /// The pod MTU (see [`pod_mtu`]).
    pub pod_mtu: u32,
}

/// Why install-cni refused or failed. Refusals come before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// An option names something that cannot be used (a relative or missing directory, a
    /// plugin that is not an ELF file, a directory where a file goes).
    #[error("{0}")]
    Refused(String),
    /// The configuration weft-cni would be handed does not pass its own parser.
    #[error("the configuration weft-cni would get is refused: {0}")]
    Config(#[from] ConfigError),
    /// The underlay MTU leaves too little room for pods.
    #[error(
        "underlay MTU {0} leaves less than {MIN_POD_MTU} bytes for pods after weft's \
         {TUNNEL_OVERHEAD} bytes of tunnel overhead"
    )]
    UnderlayMtuTooSmall(u32),
    /// The underlay MTU was not given and could not be read from the kernel.
    #[error("{0} (pass --underlay-mtu)")]
    DetectMtu(#[from] UnderlayMtuError),
    /// The file system refused.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done ("writing", "listing", …).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { what, path, source }
}

/// One thing install-cni did or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A file was written (it was missing or different).
    Installed(PathBuf),
    /// A file already had the right content and mode.
    Unchanged(PathBuf),
    /// Another weft configuration, which would compete with ours.
    RemovedStale(PathBuf),
    /// A temporary file a crashed run of ours left.
    RemovedTemp(PathBuf),
    /// A plugin chained after weft-cni.
    Chained(&'static str),
    /// Something the operator should know: a plugin missing, a foreign config loaded first.
    Note(String),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Installed(p) => write!(f, "installed {}", p.display()),
            Action::Unchanged(p) => write!(f, "unchanged {}", p.display()),
            Action::RemovedStale(p) => write!(f, "removed stale weft config {}", p.display()),
            Action::RemovedTemp(p) => write!(f, "removed leftover temporary file {}", p.display()),
            Action::Chained(p) => write!(f, "chained {p} after {PLUGIN_NAME}"),
            Action::Note(n) => write!(f, "note: {n}"),
        }
    }
}

/// The pod MTU to write, computed as the router computes it: from `underlay` when given, else
/// from the underlay MTU the kernel reports, not counting weft's own devices (`ours`: the TUN
/// device and the bridge).
pub fn pod_mtu(underlay: Option<u32>, ours: &[&str]) -> Result<u32, InstallError> {
    let underlay = match underlay {
        Some(m) => m,
        None => mtu::underlay_mtu(ours)?,
    };
    mtu::pod_mtu(underlay).ok_or(InstallError::UnderlayMtuTooSmall(underlay))
}

/// Which of the two files to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parts {
    /// The plugin, then the conflist (a node where nothing else decides when pods may start).
    #[default]
    Both,
    /// Only the plugin binary: the DaemonSet's init container, so that the conflist (which
    /// tells the kubelet the node's network is ready) waits for the router.
    Plugin,
    /// Only the conflist, for a plugin already in the bin directory: what the router writes
    /// once it can carry pod traffic (docs/design.md, start-up order).
    Conflist,
}

impl Parts {
    fn plugin(self) -> bool {
        self != Parts::Conflist
    }

    fn conflist(self) -> bool {
        self != Parts::Plugin
    }
}

/// Installs the plugin and the conflist; returns what it did, in order.
pub fn install(o: &Options) -> Result<Vec<Action>, InstallError> {
    install_parts(o, Parts::Both)
}

/// Installs the plugin, the conflist or both; returns what it did, in order. With
/// [`Parts::Conflist`], `o.plugin` is not read: the plugin must already be in the bin
/// directory (a conflist naming a missing plugin would fail every pod).
pub fn install_parts(o: &Options, parts: Parts) -> Result<Vec<Action>, InstallError> {
    install_parts_with(o, parts, None)
}

/// [`install_parts`], with the conflist's `policy` key when `policy` is set: a router that
/// enforces NetworkPolicy has ADD wait for its rules (docs/networkpolicy.md).
pub fn install_parts_with(
    o: &Options,
    parts: Parts,
    policy: Option<&PolicyWait>,
) -> Result<Vec<Action>, InstallError> {
    // Everything is checked first: an error below this block leaves the directories as found.
    let bin_dir = existing_dir(&o.bin_dir, "--cni-bin-dir")?;
    if parts.conflist() {
        let conf_dir = existing_dir(&o.conf_dir, "--cni-conf-dir")?;
        if bin_dir == conf_dir {
            return Err(InstallError::Refused(format!(
                "--cni-bin-dir and --cni-conf-dir are the same directory ({})",
                bin_dir.display()
            )));
        }
    }
    let bin_target = o.bin_dir.join(PLUGIN_NAME);
    let conf_target = o.conf_dir.join(CONFLIST_NAME);
    let plugin = if parts.plugin() {
        not_a_directory(&bin_target)?;
        Some(read_plugin(&o.plugin)?)
    } else {
        if !has_executable(&bin_target) {
            return Err(InstallError::Refused(format!(
                "{} is not an installed plugin: install it first (`weft install-cni --only \
                 plugin`), or pods would fail to start under this conflist",
                bin_target.display()
            )));
        }
        None
    };
    let portmap = has_executable(&o.bin_dir.join("portmap"));
    let loopback = has_executable(&o.bin_dir.join("loopback"));
    let conflist = if parts.conflist() {
        not_a_directory(&conf_target)?;
        Some(render_conflist_with(o, portmap, policy)?)
    } else {
        None
    };

    let mut actions = Vec::new();
    if plugin.is_some() {
        remove_own_temps(&bin_target, &mut actions)?;
    }
    if conflist.is_some() {
        remove_own_temps(&conf_target, &mut actions)?;
    }
    if let Some(plugin) = &plugin {
        actions.push(ensure_file(&bin_target, plugin, 0o755)?);
    }
    let Some(conflist) = conflist else {
        return Ok(actions);
    };
    // After the binary: the runtime may use the conflist the moment it appears.
    actions.push(ensure_file(&conf_target, &conflist, 0o644)?);
    if portmap {
        actions.push(Action::Chained("portmap"));
    } else {
        actions.push(Action::Note(format!(
            "portmap not found in {}: not chained, so hostPort does not work for weft pods \
             (install the CNI reference plugins there)",
            o.bin_dir.display()
        )));
    }
    if !loopback {
        actions.push(Action::Note(format!(
            "loopback not found in {}: the runtime runs it for every pod's lo (containerd \
             cannot start a pod without it); install the CNI reference plugins there",
            o.bin_dir.display()
        )));
    }
    remove_stale_configs(&o.conf_dir, &mut actions)?;
    if let Some(first) = first_config(&o.conf_dir)?
        && first != CONFLIST_NAME
    {
        actions.push(Action::Note(format!(
            "{first} in {} sorts before {CONFLIST_NAME}: runtimes use the first configuration \
             in name order, so pods will not get weft until it is removed (it is not weft's, so \
             it was left alone)",
            o.conf_dir.display()
        )));
    }
    Ok(actions)
}

/// The conflist for this node, checked by weft-cni's own parser the way a runtime hands it the
/// first plugin (with the list's cniVersion and name added).
pub fn render_conflist(o: &Options, portmap: bool) -> Result<Vec<u8>, InstallError> {
    render_conflist_with(o, portmap, None)
}

/// [`render_conflist`], with weft-cni's `policy` key when `policy` is set.
pub fn render_conflist_with(
    o: &Options,
    portmap: bool,
    policy: Option<&PolicyWait>,
) -> Result<Vec<u8>, InstallError> {
    // Structs rather than a JSON value: they keep the field order a reader expects (type
    // first), where a serde_json map would sort the keys.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ConfList<'a> {
        cni_version: &'a str,
        name: &'a str,
        plugins: Vec<Plugin<'a>>,
    }
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Plugin<'a> {
        Weft {
            #[serde(rename = "type")]
            kind: &'a str,
            bridge: &'a str,
            mtu: u32,
            #[serde(rename = "stateDir")]
            state_dir: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            policy: Option<Policy<'a>>,
        },
        Portmap {
            #[serde(rename = "type")]
            kind: &'a str,
            capabilities: serde_json::Value,
        },
    }
    let state_dir = o.state_dir.to_str().ok_or_else(|| {
        InstallError::Refused(format!(
            "--state-dir {} is not UTF-8",
            o.state_dir.display()
        ))
    })?;
    #[derive(serde::Serialize)]
    struct Policy<'a> {
        control_socket: &'a str,
        timeout_seconds: u64,
    }
    let policy = policy
        .map(|p| -> Result<Policy<'_>, InstallError> {
            Ok(Policy {
                control_socket: p.control_socket.to_str().ok_or_else(|| {
                    InstallError::Refused(format!(
                        "the control socket {} is not UTF-8",
                        p.control_socket.display()
                    ))
                })?,
                timeout_seconds: p.timeout.as_secs(),
            })
        })
        .transpose()?;
    let weft = Plugin::Weft {
        kind: PLUGIN_NAME,
        bridge: &o.bridge,
        mtu: o.pod_mtu,
        state_dir,
        policy,
    };
    let mut as_run = serde_json::to_value(&weft).expect("a plugin entry serialises");
    as_run["cniVersion"] = CNI_VERSION.into();
    as_run["name"] = NETWORK_NAME.into();
    NetConf::parse(as_run.to_string().as_bytes())?;
    let mut plugins = vec![weft];
    if portmap {
        plugins.push(Plugin::Portmap {
            kind: "portmap",
            capabilities: serde_json::json!({ "portMappings": true }),
        });
    }
    let list = ConfList {
        cni_version: CNI_VERSION,
        name: NETWORK_NAME,
        plugins,
    };
    let mut bytes = serde_json::to_vec_pretty(&list).expect("a conflist serialises");
    bytes.push(b'\n');
    Ok(bytes)
}

fn existing_dir<'a>(dir: &'a Path, flag: &'static str) -> Result<&'a Path, InstallError> {
    if !dir.is_absolute() {
        return Err(InstallError::Refused(format!(
            "{flag} {} must be an absolute path",
            dir.display()
        )));
    }
    let meta = fs::metadata(dir).map_err(io_err(flag, dir))?;
    if !meta.is_dir() {
        return Err(InstallError::Refused(format!(
            "{flag} {} is not a directory",
            dir.display()
        )));
    }
    Ok(dir)
}

fn not_a_directory(path: &Path) -> Result<(), InstallError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(InstallError::Refused(format!(
            "{} is a directory; refusing to replace it with a file",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Reads the plugin to install, refusing what cannot be a plugin binary for this kernel.
fn read_plugin(path: &Path) -> Result<Vec<u8>, InstallError> {
    let meta = fs::metadata(path).map_err(io_err(
        "the weft-cni binary (pass --cni-plugin or WEFT_CNI_PLUGIN)",
        path,
    ))?;
    if !meta.is_file() {
        return Err(InstallError::Refused(format!(
            "the weft-cni binary {} is not a file",
            path.display()
        )));
    }
    let bytes = fs::read(path).map_err(io_err("reading", path))?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(InstallError::Refused(format!(
            "{} is not an ELF executable; is it really weft-cni?",
            path.display()
        )));
    }
    Ok(bytes)
}

fn has_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Writes `bytes` with `mode` to `path` atomically, unless it already holds exactly that.
fn ensure_file(path: &Path, bytes: &[u8], mode: u32) -> Result<Action, InstallError> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && meta.is_file()
        && meta.permissions().mode() & 0o7777 == mode
        && meta.len() == bytes.len() as u64
        && fs::read(path).is_ok_and(|old| old == bytes)
    {
        return Ok(Action::Unchanged(path.to_owned()));
    }
    durable::write_atomic(path, bytes, mode).map_err(io_err("writing", path))?;
    Ok(Action::Installed(path.to_owned()))
}

/// Removes what crashed runs left while writing `target`: today's temporaries of it that no
/// live writer holds, and every temporary of earlier versions (only install-cni wrote those).
fn remove_own_temps(target: &Path, actions: &mut Vec<Action>) -> Result<(), InstallError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(OLD_TEMP_PREFIX)
            && name.ends_with(OLD_TEMP_SUFFIX)
            && entry.file_type().map_err(io_err("listing", dir))?.is_file()
        {
            let path = entry.path();
            durable::remove(&path).map_err(io_err("removing", &path))?;
            actions.push(Action::RemovedTemp(path));
        }
    }
    for path in durable::remove_stale_temps(target).map_err(io_err("clearing", target))? {
        actions.push(Action::RemovedTemp(path));
    }
    Ok(())
}

/// The configuration files libcni would load from `dir`, in its (name) order.
fn config_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, InstallError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let is_conf = Path::new(&name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONF_EXTENSIONS.contains(&e));
        if is_conf {
            files.push((name, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

fn first_config(dir: &Path) -> Result<Option<String>, InstallError> {
    Ok(config_files(dir)?.into_iter().next().map(|(name, _)| name))
}

/// Removes weft's configurations other than [`CONFLIST_NAME`]: a conflist whose first plugin
/// is weft-cni, or a single-plugin `.conf` of type weft-cni. Symbolic links, unreadable,
/// oversized or non-JSON files, and lists where weft-cni is chained after another vendor's
/// plugin are someone else's and stay.
fn remove_stale_configs(dir: &Path, actions: &mut Vec<Action>) -> Result<(), InstallError> {
    for (name, path) in config_files(dir)? {
        if name == CONFLIST_NAME {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_CONF_BYTES {
            continue;
        }
        let Ok(bytes) = fs::read(&path) else {
            continue;
        };
        if is_weft_config(&bytes) {
            durable::remove(&path).map_err(io_err("removing", &path))?;
            actions.push(Action::RemovedStale(path));
        }
    }
    Ok(())
}

/// Whether a configuration file's content is one of weft's: its (first) plugin's type is
/// weft-cni.
pub fn is_weft_config(bytes: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return false;
    };
    let first = match value.get("plugins") {
        Some(plugins) => plugins.get(0),
        None => Some(&value),
    };
    first.and_then(|p| p.get("type")).and_then(|t| t.as_str()) == Some(PLUGIN_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A scratch tree: bin/, net.d/, and a fake plugin (this test binary: a real ELF file).
    struct Scratch {
        root: PathBuf,
        options: Options,
    }

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "weft-install-cni-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("bin")).unwrap();
            fs::create_dir_all(root.join("net.d")).unwrap();
            fs::create_dir_all(root.join("src")).unwrap();
            let plugin = root.join("src").join(PLUGIN_NAME);
            fs::copy(std::env::current_exe().unwrap(), &plugin).unwrap();
            let options = Options {
                plugin,
                bin_dir: root.join("bin"),
                conf_dir: root.join("net.d"),
                state_dir: PathBuf::from("/var/lib/weft"),
                bridge: "weft".into(),
                pod_mtu: 1375,
            };
            Scratch { root, options }
        }

        fn bin(&self, name: &str) -> PathBuf {
            self.options.bin_dir.join(name)
        }

        fn conf(&self, name: &str) -> PathBuf {
            self.options.conf_dir.join(name)
        }

        fn add_plugin(&self, name: &str) {
            fs::write(self.bin(name), b"\x7fELF fake").unwrap();
            fs::set_permissions(self.bin(name), fs::Permissions::from_mode(0o755)).unwrap();
        }

        /// Every file under the tree: name, content, mode, inode, mtime.
        fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>, u32, u64, i64, i64)> {
            let mut out = Vec::new();
            for dir in [&self.options.bin_dir, &self.options.conf_dir] {
                for e in fs::read_dir(dir).unwrap() {
                    let p = e.unwrap().path();
                    let m = fs::symlink_metadata(&p).unwrap();
                    let content = if m.is_file() {
                        fs::read(&p).unwrap()
                    } else {
                        vec![]
                    };
                    out.push((p, content, m.mode(), m.ino(), m.mtime(), m.mtime_nsec()));
                }
            }
            out.sort();
            out
        }

        fn names(&self, dir: &Path) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    /// The plugin config a runtime would hand weft-cni for this conflist.
    fn first_plugin_as_run(conflist: &[u8]) -> NetConf {
        let list: serde_json::Value = serde_json::from_slice(conflist).unwrap();
        let mut plugin = list["plugins"][0].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        NetConf::parse(plugin.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn the_policy_key_is_written_only_when_asked_and_parses_back() {
        let s = Scratch::new();
        let plain = render_conflist(&s.options, false).unwrap();
        assert!(first_plugin_as_run(&plain).policy.is_none());
        let wait = PolicyWait {
            control_socket: "/var/lib/weft/control.sock".into(),
            timeout: std::time::Duration::from_secs(10),
        };
        let with = render_conflist_with(&s.options, false, Some(&wait)).unwrap();
        let list: serde_json::Value = serde_json::from_slice(&with).unwrap();
        assert_eq!(
            list["plugins"][0]["policy"],
            serde_json::json!({"control_socket": "/var/lib/weft/control.sock",
                "timeout_seconds": 10})
        );
        assert_eq!(first_plugin_as_run(&with).policy, Some(wait));
    }

    #[test]
    fn fresh_install_writes_both_files_with_their_modes() {
        let s = Scratch::new();
        s.add_plugin("portmap");
        s.add_plugin("loopback");
        let actions = install(&s.options).unwrap();
        assert_eq!(
            actions,
            vec![
                Action::Installed(s.bin(PLUGIN_NAME)),
                Action::Installed(s.conf(CONFLIST_NAME)),
                Action::Chained("portmap"),
            ]
        );
        let bin = fs::metadata(s.bin(PLUGIN_NAME)).unwrap();
        assert_eq!(bin.mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read(s.bin(PLUGIN_NAME)).unwrap(),
            fs::read(&s.options.plugin).unwrap()
        );
        let conf = fs::metadata(s.conf(CONFLIST_NAME)).unwrap();
        assert_eq!(conf.mode() & 0o7777, 0o644);

        let bytes = fs::read(s.conf(CONFLIST_NAME)).unwrap();
        let list: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(list["cniVersion"], CNI_VERSION);
        assert_eq!(list["name"], NETWORK_NAME);
        let types: Vec<&str> = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["weft-cni", "portmap"]);
        assert_eq!(
            list["plugins"][1]["capabilities"],
            serde_json::json!({"portMappings": true})
        );
        // weft-cni's own parser accepts what the runtime will hand it, with the node's values.
        let conf = first_plugin_as_run(&bytes);
        assert_eq!(conf.mtu, 1375);
        // A conflist without an MTU gets weft-cni's default: the same figure.
        assert_eq!(
            Some(crate::config::DEFAULT_MTU),
            weft_sys::mtu::pod_mtu(1500)
        );
        assert_eq!(conf.bridge.as_str(), "weft");
        assert_eq!(conf.state_dir, PathBuf::from("/var/lib/weft"));
        assert_eq!(conf.name, "weft");
    }

    #[test]
    fn second_run_rewrites_nothing() {
        let s = Scratch::new();
        s.add_plugin("portmap");
        s.add_plugin("loopback");
        install(&s.options).unwrap();
        let before = s.snapshot();
        // Coarse file system timestamps would hide a rewrite; the inode would not.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let actions = install(&s.options).unwrap();
        assert_eq!(
            actions,
            vec![
                Action::Unchanged(s.bin(PLUGIN_NAME)),
                Action::Unchanged(s.conf(CONFLIST_NAME)),
                Action::Chained("portmap"),
            ]
        );
        assert_eq!(s.snapshot(), before);
    }

    #[test]
    fn the_plugin_and_the_conflist_install_apart() {
        let s = Scratch::new();
        s.add_plugin("loopback");
        // The conflist alone, before the plugin is there: refused, nothing written.
        let before = s.snapshot();
        let err = install_parts(&s.options, Parts::Conflist)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an installed plugin"), "{err}");
        assert_eq!(s.snapshot(), before);
        // The plugin alone (the init container): no conflist, so no network for the kubelet.
        let actions = install_parts(&s.options, Parts::Plugin).unwrap();
        assert_eq!(actions, vec![Action::Installed(s.bin(PLUGIN_NAME))]);
        assert_eq!(s.names(&s.options.conf_dir), Vec::<String>::new());
        // The conflist alone (the router, once ready): the plugin's path is not read.
        let mut o = s.options.clone();
        o.plugin = s.root.join("gone");
        let actions = install_parts(&o, Parts::Conflist).unwrap();
        assert_eq!(actions[0], Action::Installed(s.conf(CONFLIST_NAME)));
        assert_eq!(
            first_plugin_as_run(&fs::read(s.conf(CONFLIST_NAME)).unwrap()).mtu,
            1375
        );
        // Both again: the same files as `install`, nothing rewritten.
        let before = s.snapshot();
        let actions = install_parts(&s.options, Parts::Both).unwrap();
        assert_eq!(actions[0], Action::Unchanged(s.bin(PLUGIN_NAME)));
        assert_eq!(actions[1], Action::Unchanged(s.conf(CONFLIST_NAME)));
        assert_eq!(s.snapshot(), before);
    }

    #[test]
    fn changed_values_and_modes_are_rewritten() {
        let s = Scratch::new();
        install(&s.options).unwrap();
        fs::set_permissions(s.bin(PLUGIN_NAME), fs::Permissions::from_mode(0o700)).unwrap();
        let mut o = s.options.clone();
        o.pod_mtu = 8921;
        let actions = install(&o).unwrap();
        assert_eq!(actions[0], Action::Installed(s.bin(PLUGIN_NAME)));
        assert_eq!(actions[1], Action::Installed(s.conf(CONFLIST_NAME)));
        let mode = fs::metadata(s.bin(PLUGIN_NAME)).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        assert_eq!(
            first_plugin_as_run(&fs::read(s.conf(CONFLIST_NAME)).unwrap()).mtu,
            8921
        );
    }

    #[test]
    fn stale_weft_configs_go_and_foreign_files_stay() {
        let s = Scratch::new();
        let stale_list = br#"{"cniVersion":"0.4.0","name":"weft","plugins":[{"type":"weft-cni"}]}"#;
        let stale_conf = br#"{"cniVersion":"0.3.1","name":"weft","type":"weft-cni"}"#;
        let foreign: Vec<(&str, &[u8])> = vec![
            (
                "05-bridge.conflist",
                br#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
            ),
            // weft-cni chained after someone else's plugin is their list, not ours.
            (
                "20-other.conflist",
                br#"{"cniVersion":"1.0.0","name":"o","plugins":[{"type":"x"},{"type":"weft-cni"}]}"#,
            ),
            ("30-broken.conf", b"{not json"),
            ("weft-notes.txt", br#"{"type":"weft-cni"}"#),
        ];
        fs::write(s.conf("00-weft.conflist"), stale_list).unwrap();
        fs::write(s.conf("99-weft.conf"), stale_conf).unwrap();
        for (name, bytes) in &foreign {
            fs::write(s.conf(name), bytes).unwrap();
        }
        // A symbolic link to a weft config is left: what it points at may be anyone's.
        std::os::unix::fs::symlink(s.conf("99-weft.conf"), s.conf("50-link.conf")).unwrap();
        let actions = install(&s.options).unwrap();
        assert!(actions.contains(&Action::RemovedStale(s.conf("00-weft.conflist"))));
        assert!(actions.contains(&Action::RemovedStale(s.conf("99-weft.conf"))));
        for (name, bytes) in &foreign {
            assert_eq!(
                &fs::read(s.conf(name)).unwrap(),
                bytes,
                "{name} was changed"
            );
        }
        assert!(fs::symlink_metadata(s.conf("50-link.conf")).is_ok());
        // The foreign bridge list sorts first: the operator is told, the file is not touched.
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Note(n) if n.starts_with("05-bridge.conflist")))
        );
    }

    #[test]
    fn missing_portmap_and_loopback_are_reported() {
        let s = Scratch::new();
        let actions = install(&s.options).unwrap();
        let notes: Vec<&String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Note(n) => Some(n),
                _ => None,
            })
            .collect();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("portmap not found"));
        assert!(notes[1].starts_with("loopback not found"));
        let list: serde_json::Value =
            serde_json::from_slice(&fs::read(s.conf(CONFLIST_NAME)).unwrap()).unwrap();
        assert_eq!(list["plugins"].as_array().unwrap().len(), 1);
        // A portmap without an execute bit is not a plugin the runtime can run.
        fs::write(s.bin("portmap"), b"x").unwrap();
        let actions = install(&s.options).unwrap();
        assert!(!actions.contains(&Action::Chained("portmap")));
    }

    #[test]
    fn no_temporary_files_are_left_and_old_ones_are_cleared() {
        let s = Scratch::new();
        let crashed = s.conf(&format!(
            "{OLD_TEMP_PREFIX}{CONFLIST_NAME}.4242{OLD_TEMP_SUFFIX}"
        ));
        fs::write(&crashed, b"half").unwrap();
        let actions = install(&s.options).unwrap();
        assert_eq!(actions[0], Action::RemovedTemp(crashed));
        assert_eq!(s.names(&s.options.bin_dir), [PLUGIN_NAME]);
        assert_eq!(s.names(&s.options.conf_dir), [CONFLIST_NAME]);
    }

    #[test]
    fn a_crashed_writers_durable_temporaries_are_cleared_and_reported() {
        let s = Scratch::new();
        // What weft_sys::durable leaves when a run dies between create and rename, in the
        // name format of this version and of the pid-based one before it.
        let crashed = [
            s.conf(&format!(".tmp-{CONFLIST_NAME}-00000000deadbeef")),
            s.bin(&format!(".tmp-{PLUGIN_NAME}-1-0")),
        ];
        for path in &crashed {
            fs::write(path, b"half").unwrap();
        }
        let actions = install(&s.options).unwrap();
        assert_eq!(actions[0], Action::RemovedTemp(crashed[1].clone()));
        assert_eq!(actions[1], Action::RemovedTemp(crashed[0].clone()));
        assert_eq!(s.names(&s.options.bin_dir), [PLUGIN_NAME]);
        assert_eq!(s.names(&s.options.conf_dir), [CONFLIST_NAME]);
    }

    #[test]
    fn the_pod_mtu_is_the_underlay_less_the_tunnel_overhead() {
        assert_eq!(pod_mtu(Some(1500), &[]).unwrap(), 1375);
        assert_eq!(pod_mtu(Some(9001), &[]).unwrap(), 9001 - TUNNEL_OVERHEAD);
        let err = pod_mtu(Some(600), &[]).unwrap_err().to_string();
        assert!(err.contains("less than 576 bytes"), "{err}");
    }

    #[test]
    fn bad_input_is_refused_and_changes_nothing() {
        let s = Scratch::new();
        fs::write(
            s.conf("00-weft.conflist"),
            br#"{"plugins":[{"type":"weft-cni"}]}"#,
        )
        .unwrap();
        let crashed = s.conf(&format!("{OLD_TEMP_PREFIX}x.1{OLD_TEMP_SUFFIX}"));
        fs::write(&crashed, b"half").unwrap();
        let before = s.snapshot();
        let refuse = |change: &dyn Fn(&mut Options), expect: &str| {
            let mut o = s.options.clone();
            change(&mut o);
            let err = format!("{:#}", install(&o).unwrap_err());
            assert!(err.contains(expect), "{err:?} does not mention {expect:?}");
            assert_eq!(
                s.snapshot(),
                before,
                "a refused run ({expect}) changed files"
            );
        };
        refuse(&|o| o.bin_dir = "opt/cni/bin".into(), "absolute");
        refuse(&|o| o.conf_dir = s.root.join("missing"), "missing");
        refuse(&|o| o.conf_dir = o.plugin.clone(), "not a directory");
        refuse(&|o| o.conf_dir = o.bin_dir.clone(), "same directory");
        refuse(&|o| o.plugin = s.root.join("nothing"), "nothing");
        refuse(&|o| o.plugin = s.conf("00-weft.conflist"), "not an ELF");
        refuse(&|o| o.plugin = s.root.join("src"), "not a file");
        refuse(&|o| o.bridge = "a/b".into(), "bridge");
        refuse(&|o| o.bridge = "far-too-long-bridge-name".into(), "bridge");
        refuse(&|o| o.state_dir = "var/lib/weft".into(), "stateDir");
        refuse(&|o| o.pod_mtu = 10, "mtu");
        // A directory where the conflist should go is not replaced.
        fs::create_dir(s.conf(CONFLIST_NAME)).unwrap();
        let before = s.snapshot();
        let err = install(&s.options).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        assert_eq!(s.snapshot(), before);
    }

    #[test]
    fn weft_configs_are_recognised_by_their_first_plugin() {
        assert!(is_weft_config(br#"{"type":"weft-cni"}"#));
        assert!(is_weft_config(
            br#"{"plugins":[{"type":"weft-cni"},{"type":"portmap"}]}"#
        ));
        assert!(!is_weft_config(
            br#"{"plugins":[{"type":"portmap"},{"type":"weft-cni"}]}"#
        ));
        assert!(!is_weft_config(br#"{"plugins":[]}"#));
        assert!(!is_weft_config(br#"{"plugins":"weft-cni"}"#));
        assert!(!is_weft_config(br#"{"type":"bridge"}"#));
        assert!(!is_weft_config(b"weft-cni"));
        assert!(!is_weft_config(b""));
    }
}
