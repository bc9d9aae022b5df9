//! `nftpol install-cni`: put the plugin on a host and chain it into the network configuration
//! the container runtime uses, without ever letting the runtime read a half-written file.
//!
//! # What install does
//!
//! 1. Copies the plugin binary to `<bin dir>/nftpol` (mode 0755) atomically: a temp file in
//!    the same directory, fsync, rename. Done first, so a conflist never names a plugin that
//!    is not there yet.
//! 2. Picks the conflist: the one given, or the one libcni (containerd, CRI-O) would load:
//!    the lexicographically first `*.conf`, `*.conflist` or `*.json` in the conf dir. Our
//!    backups (`*.nftpol-orig`) and temp files have other extensions, so they never qualify.
//! 3. Adds `{"type": "nftpol", "socket": ..., "timeoutSeconds": ...}` as the *last* plugin.
//!    That is where chained add-ons go (Cilium's generic-veth chaining, Istio CNI, Linkerd
//!    CNI): after the plugin that creates the interface and the IPs, and after `portmap`,
//!    `bandwidth` or `tuning`, whose relative order stays untouched. Being last also means
//!    the runtime gets the pod's final result only after the agent committed its isolation.
//!    An existing `nftpol` entry is updated in place wherever the operator put it (other keys
//!    in it are kept; duplicates are dropped).
//! 4. Writes the conflist atomically, keeping its mode, every other key in its order, and its
//!    indentation style (tabs, n spaces, or one line). Running install twice changes nothing.
//!    The first time, the untouched original is kept as `<file>.nftpol-orig`.
//!
//! A single-plugin `.conf` (or `.json`) cannot hold a chain: it is converted to
//! `<stem>.conflist` (`cniVersion` and `name` lifted to the list, the plugin kept whole, as
//! libcni's `ConfListFromConf` does) and the original is renamed to `<file>.nftpol-orig`, in
//! that order, so the runtime always finds a valid config and `10-x.conf` never shadows
//! `10-x.conflist`.
//!
//! # What uninstall does
//!
//! Removes our entry from every config that has one (or from the given file) and restores
//! the file **byte for byte** from `<file>.nftpol-orig` when the result equals that backup
//! (the normal case); if someone else edited the file meanwhile, their edit is kept and only
//! our entry goes (then the restore is semantic: same JSON, same key order, our formatting).
//! A converted `.conf` is renamed back and our `.conflist` removed. The binary is removed only
//! on request (`remove_binary`).
//!
//! The plugin speaks `cniVersion` 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0; a conflist asking for
//! anything else (in `cniVersion` or `cniVersions`) is refused with an error naming the file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::json::{Json, Object};
use crate::plugin::config::{SUPPORTED_VERSIONS, Version};
use crate::protocol::DEFAULT_SOCKET;

/// Where the plugin binary is in the nftpol image.
pub const DEFAULT_SOURCE_BINARY: &str = "/usr/local/bin/nftpol-cni";
/// The host's CNI bin dir, as mounted into the agent pod.
pub const DEFAULT_BIN_DIR: &str = "/host/opt/cni/bin";
/// The host's CNI conf dir, as mounted into the agent pod.
pub const DEFAULT_CONF_DIR: &str = "/host/etc/cni/net.d";
/// The plugin's `type` (and file name in the bin dir).
pub const PLUGIN_TYPE: &str = "nftpol";
/// Default `timeoutSeconds` written into our entry.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
/// Suffix of the originals we keep (not a CNI extension, so runtimes ignore them).
pub const BACKUP_SUFFIX: &str = ".nftpol-orig";
/// Marker in our temp files' names (`.<name>.nftpol-tmp-<pid>`).
const TEMP_MARKER: &str = ".nftpol-tmp-";
/// The extensions libcni loads from the conf dir.
const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// What to install where. `Default` gives the in-cluster defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// The plugin binary to copy.
    pub source_binary: PathBuf,
    /// The host's CNI bin dir; the plugin lands there as `nftpol`.
    pub bin_dir: PathBuf,
    /// The host's CNI conf dir.
    pub conf_dir: PathBuf,
    /// A file name in `conf_dir`; `None`: the config the runtime would load.
    pub conflist: Option<String>,
    /// `socket` in our entry.
    pub socket: PathBuf,
    /// `timeoutSeconds` in our entry.
    pub timeout_seconds: u64,
    /// Leave the binary alone (e.g. when it is installed by other means).
    pub skip_binary: bool,
    /// Uninstall instead of install.
    pub uninstall: bool,
    /// On uninstall, also remove `<bin_dir>/nftpol`.
    pub remove_binary: bool,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            source_binary: DEFAULT_SOURCE_BINARY.into(),
            bin_dir: DEFAULT_BIN_DIR.into(),
            conf_dir: DEFAULT_CONF_DIR.into(),
            conflist: None,
            socket: DEFAULT_SOCKET.into(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            skip_binary: false,
            uninstall: false,
            remove_binary: false,
        }
    }
}

/// Why install or uninstall failed. Every variant names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("CNI conf dir {}: {source}", .dir.display())]
    ConfDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no CNI network config (*.conflist, *.conf, *.json) in {}: is the pod network \
         (flannel, kindnet, ...) installed on this node yet?",
        .dir.display()
    )]
    NoConfig { dir: PathBuf },
    #[error("CNI config {} does not exist", .file.display())]
    ConfigMissing { file: PathBuf },
    #[error("cannot read {}: {source}", .file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not valid JSON: {source}", .file.display())]
    InvalidJson {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {reason}", .file.display())]
    InvalidConfig { file: PathBuf, reason: String },
    #[error("{}: cniVersion {version:?} is not supported by nftpol's plugin (it supports {supported})", .file.display())]
    UnsupportedVersion {
        file: PathBuf,
        version: String,
        supported: String,
    },
    #[error("CNI bin dir {}: {source}", .dir.display())]
    BinDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the plugin binary {}: {source}", .path.display())]
    SourceBinary {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}: {source}", .file.display())]
    Write {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {}: {source}", .file.display())]
    Remove {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "converting {} would overwrite {}, which nftpol did not write: move one of them away",
        .conf.display(), .existing.display()
    )]
    Conflict { conf: PathBuf, existing: PathBuf },
    #[error(
        "{} is not the config the runtime loads: {} sorts before it (was a config added \
         while installing? run install again)",
        .ours.display(), .first.display()
    )]
    NotActive { ours: PathBuf, first: PathBuf },
}

/// One thing install or uninstall did (or found already done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    BinaryInstalled {
        path: PathBuf,
    },
    BinaryUnchanged {
        path: PathBuf,
    },
    BinaryRemoved {
        path: PathBuf,
    },
    /// Our entry was appended as plugin number `position` (0-based).
    EntryAdded {
        file: PathBuf,
        position: usize,
    },
    EntryUpdated {
        file: PathBuf,
    },
    EntryUnchanged {
        file: PathBuf,
    },
    /// A single-plugin config was turned into a conflist; the original moved to `backup`.
    Converted {
        from: PathBuf,
        to: PathBuf,
        backup: PathBuf,
    },
    /// Our entry was removed; `byte_for_byte`: the file is exactly the original again.
    EntryRemoved {
        file: PathBuf,
        byte_for_byte: bool,
    },
    /// A converted config was put back and our conflist removed.
    ConversionUndone {
        restored: PathBuf,
        removed: PathBuf,
    },
    /// A single-plugin config was put back from its backup.
    BackupRestored {
        path: PathBuf,
    },
    /// A backup or temp file of ours that no longer served a purpose.
    Cleaned {
        path: PathBuf,
    },
}

impl Action {
    fn changed(&self) -> bool {
        !matches!(
            self,
            Action::BinaryUnchanged { .. } | Action::EntryUnchanged { .. }
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::BinaryInstalled { path } => write!(f, "installed {}", path.display()),
            Action::BinaryUnchanged { path } => write!(f, "{} is up to date", path.display()),
            Action::BinaryRemoved { path } => write!(f, "removed {}", path.display()),
            Action::EntryAdded { file, position } => write!(
                f,
                "chained nftpol into {} as plugin #{}",
                file.display(),
                position + 1
            ),
            Action::EntryUpdated { file } => {
                write!(f, "updated nftpol's entry in {}", file.display())
            }
            Action::EntryUnchanged { file } => {
                write!(f, "{} already chains nftpol", file.display())
            }
            Action::Converted { from, to, backup } => write!(
                f,
                "converted {} to {} (original kept as {})",
                from.display(),
                to.display(),
                backup.display()
            ),
            Action::EntryRemoved {
                file,
                byte_for_byte,
            } => write!(
                f,
                "removed nftpol from {}{}",
                file.display(),
                if *byte_for_byte {
                    " (original restored byte for byte)"
                } else {
                    ""
                }
            ),
            Action::ConversionUndone { restored, removed } => write!(
                f,
                "restored {} and removed {}",
                restored.display(),
                removed.display()
            ),
            Action::BackupRestored { path } => {
                write!(f, "restored {} from its backup", path.display())
            }
            Action::Cleaned { path } => write!(f, "removed leftover {}", path.display()),
        }
    }
}

/// What install or uninstall did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub actions: Vec<Action>,
    /// Things the operator should know that did not stop the operation.
    pub warnings: Vec<String>,
}

impl Report {
    /// Whether anything on disk changed (false for a repeated install).
    pub fn changed(&self) -> bool {
        self.actions.iter().any(Action::changed)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.actions {
            writeln!(f, "{a}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Install, or uninstall when `opts.uninstall` is set.
pub fn execute(opts: &InstallOptions) -> Result<Report, InstallError> {
    if opts.uninstall {
        uninstall(opts)
    } else {
        install(opts)
    }
}

/// Installs the binary and chains the plugin into the conflist (idempotent).
pub fn install(opts: &InstallOptions) -> Result<Report, InstallError> {
    let mut report = Report::default();
    check_conf_dir(&opts.conf_dir)?;
    if !opts.skip_binary {
        report.actions.push(install_binary(opts)?);
    }
    clean_temp_files(&opts.conf_dir, &mut report);

    let file = match &opts.conflist {
        Some(name) => {
            let file = opts.conf_dir.join(name);
            let converted = file.with_extension("conflist");
            if file.exists() {
                file
            } else if !is_conflist(&file) && backup_of(&file).exists() && converted.exists() {
                converted // we converted it on an earlier run
            } else {
                return Err(InstallError::ConfigMissing { file });
            }
        }
        None => active_config(&opts.conf_dir)?.ok_or_else(|| InstallError::NoConfig {
            dir: opts.conf_dir.clone(),
        })?,
    };
    let doc = Document::read(&file)?;
    let ours = if is_conflist(&file) {
        chain_into_conflist(&doc, opts, &mut report)?;
        file.clone()
    } else {
        convert_and_chain(&doc, opts, &mut report)?
    };

    if let Some(first) = active_config(&opts.conf_dir)?
        && first != ours
    {
        if opts.conflist.is_some() {
            report.warnings.push(format!(
                "the runtime loads {} first, not {}",
                first.display(),
                ours.display()
            ));
        } else {
            return Err(InstallError::NotActive { ours, first });
        }
    }
    Ok(report)
}

/// Removes the plugin from the conflist(s), restoring the originals.
pub fn uninstall(opts: &InstallOptions) -> Result<Report, InstallError> {
    let mut report = Report::default();
    check_conf_dir(&opts.conf_dir)?;
    clean_temp_files(&opts.conf_dir, &mut report);
    let files = match &opts.conflist {
        Some(name) => {
            let file = opts.conf_dir.join(name);
            match (is_conflist(&file), file.exists()) {
                (_, true) => vec![file],
                // The converted file's original name: look for our conflist instead.
                (false, false) => vec![file.with_extension("conflist")],
                (true, false) => return Err(InstallError::ConfigMissing { file }),
            }
        }
        None => config_files(&opts.conf_dir)?
            .into_iter()
            .filter(|f| is_conflist(f))
            .collect(),
    };
    for file in files {
        if !file.exists() {
            continue;
        }
        let doc = match Document::read(&file) {
            Ok(doc) => doc,
            // Scanning the whole dir: a broken file of someone else's is not ours to fix.
            Err(e @ (InstallError::InvalidJson { .. } | InstallError::InvalidConfig { .. }))
                if opts.conflist.is_none() =>
            {
                report.warnings.push(format!("skipped: {e}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        unchain(&doc, &mut report)?;
    }
    if opts.conflist.is_none() {
        clean_backups(&opts.conf_dir, &mut report)?;
    }
    if opts.remove_binary {
        let path = opts.bin_dir.join(PLUGIN_TYPE);
        if path.exists() {
            remove(&path)?;
            report.actions.push(Action::BinaryRemoved { path });
        }
    }
    Ok(report)
}

/// Deals with backups left after every entry of ours is gone (the network plugin rewrote a
/// file, or a conversion was half done): a single-plugin original whose file is missing is
/// put back; any other backup is removed.
fn clean_backups(dir: &Path, report: &mut Report) -> Result<(), InstallError> {
    for backup in list_dir(dir)?
        .into_iter()
        .filter(|p| file_name(p).ends_with(BACKUP_SUFFIX))
    {
        let name = file_name(&backup);
        let owner = dir.join(&name[..name.len() - BACKUP_SUFFIX.len()]);
        if !is_conflist(&owner) && !owner.exists() {
            rename(&backup, &owner)?;
            report.actions.push(Action::BackupRestored { path: owner });
        } else {
            remove(&backup)?;
            report.actions.push(Action::Cleaned { path: backup });
        }
    }
    Ok(())
}

/// The config file libcni would load from `dir`: the lexicographically first `*.conf`,
/// `*.conflist` or `*.json` (`None` if there is none).
pub fn active_config(dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    Ok(config_files(dir)?.into_iter().next())
}

/// The files libcni considers in `dir`, in its order.
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut files: Vec<PathBuf> = list_dir(dir)?
        .into_iter()
        .filter(|p| {
            let name = file_name(p);
            !name.contains(TEMP_MARKER)
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
                && !p.is_dir()
        })
        .collect();
    // Go's sort.Strings on the paths: byte order of the names, all in the same dir.
    files.sort_by(|a, b| file_name(a).as_bytes().cmp(file_name(b).as_bytes()));
    Ok(files)
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let conf_dir_err = |source| InstallError::ConfDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(conf_dir_err)? {
        out.push(entry.map_err(conf_dir_err)?.path());
    }
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_conflist(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "conflist")
}

fn backup_of(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(BACKUP_SUFFIX);
    PathBuf::from(s)
}

fn check_conf_dir(dir: &Path) -> Result<(), InstallError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(InstallError::ConfDir {
            dir: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        }),
        Err(source) => Err(InstallError::ConfDir {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// Removes temp files a crashed earlier run left behind.
fn clean_temp_files(dir: &Path, report: &mut Report) {
    let Ok(entries) = list_dir(dir) else { return };
    for p in entries {
        let name = file_name(&p);
        if name.starts_with('.') && name.contains(TEMP_MARKER) && fs::remove_file(&p).is_ok() {
            report.actions.push(Action::Cleaned { path: p });
        }
    }
}

fn install_binary(opts: &InstallOptions) -> Result<Action, InstallError> {
    match fs::metadata(&opts.bin_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(InstallError::BinDir {
                dir: opts.bin_dir.clone(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Err(source) => {
            return Err(InstallError::BinDir {
                dir: opts.bin_dir.clone(),
                source,
            });
        }
    }
    let bytes = fs::read(&opts.source_binary).map_err(|source| InstallError::SourceBinary {
        path: opts.source_binary.clone(),
        source,
    })?;
    let path = opts.bin_dir.join(PLUGIN_TYPE);
    let current_mode = fs::metadata(&path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777);
    if current_mode == Some(0o755) && fs::read(&path).ok().as_deref() == Some(&bytes[..]) {
        return Ok(Action::BinaryUnchanged { path });
    }
    clean_temp_files(&opts.bin_dir, &mut Report::default());
    write_atomic(&path, &bytes, 0o755)?;
    Ok(Action::BinaryInstalled { path })
}

/// Writes `bytes` to `path` so that readers see the old or the new content, never a mix:
/// a temp file in the same directory (whose name no runtime loads), fsync, rename, fsync of
/// the directory.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let err = |source| InstallError::Write {
        file: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}{TEMP_MARKER}{}",
        file_name(path),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode given at creation.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

fn rename(from: &Path, to: &Path) -> Result<(), InstallError> {
    fs::rename(from, to).map_err(|source| InstallError::Write {
        file: to.to_path_buf(),
        source,
    })?;
    if let Some(dir) = to.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(InstallError::Remove {
            file: path.to_path_buf(),
            source,
        }),
    }
}

/// A config file as read: its bytes, JSON object, mode and formatting style.
struct Document {
    /// Where writes go (a symlinked config is written through to its target).
    path: PathBuf,
    bytes: Vec<u8>,
    obj: Object,
    mode: u32,
    style: Style,
}

impl Document {
    fn read(file: &Path) -> Result<Document, InstallError> {
        let read_err = |source| InstallError::Read {
            file: file.to_path_buf(),
            source,
        };
        let path = if fs::symlink_metadata(file).map_err(read_err)?.is_symlink() {
            fs::canonicalize(file).map_err(read_err)?
        } else {
            file.to_path_buf()
        };
        let bytes = fs::read(&path).map_err(read_err)?;
        let mode = fs::metadata(&path).map_err(read_err)?.permissions().mode() & 0o7777;
        let json: Json =
            serde_json::from_slice(&bytes).map_err(|source| InstallError::InvalidJson {
                file: file.to_path_buf(),
                source,
            })?;
        let obj = match json {
            Json::Object(o) => o,
            other => {
                return Err(InstallError::InvalidConfig {
                    file: file.to_path_buf(),
                    reason: format!("the top level is {}, not an object", other.kind()),
                });
            }
        };
        let style = Style::of(&bytes);
        Ok(Document {
            path,
            bytes,
            obj,
            mode,
            style,
        })
    }

    fn invalid(&self, reason: impl Into<String>) -> InstallError {
        InstallError::InvalidConfig {
            file: self.path.clone(),
            reason: reason.into(),
        }
    }
}

/// How a file is formatted, so our rewrite looks like the original.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Style {
    /// One indentation step (`\t`, two spaces, ...); empty for one-line JSON.
    indent: Vec<u8>,
    /// Whitespace before and after the JSON text.
    leading: Vec<u8>,
    trailing: Vec<u8>,
}

impl Style {
    fn of(bytes: &[u8]) -> Style {
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(start, |i| i + 1);
        let body = &bytes[start..end];
        let indent = body
            .split(|&b| b == b'\n')
            .skip(1)
            .find_map(|line| {
                let ws = line
                    .iter()
                    .take_while(|&&b| b == b' ' || b == b'\t')
                    .count();
                (ws > 0 && ws < line.len()).then(|| line[..ws].to_vec())
            })
            .unwrap_or_else(|| {
                if body.contains(&b'\n') {
                    b"  ".to_vec()
                } else {
                    Vec::new()
                }
            });
        Style {
            indent,
            leading: bytes[..start].to_vec(),
            trailing: bytes[end..].to_vec(),
        }
    }

    fn render(&self, json: &Json, file: &Path) -> Result<Vec<u8>, InstallError> {
        let body = json
            .to_vec_indented(&self.indent)
            .map_err(|e| InstallError::Write {
                file: file.to_path_buf(),
                source: io::Error::other(e),
            })?;
        let mut out = self.leading.clone();
        out.extend_from_slice(&body);
        out.extend_from_slice(&self.trailing);
        Ok(out)
    }
}

/// Refuses configs asking for a spec version our plugin does not speak.
fn check_versions(doc: &Document) -> Result<(), InstallError> {
    let obj = &doc.obj;
    let mut asked = Vec::new();
    match obj.get("cniVersion") {
        Some(Json::String(v)) => asked.push(v.clone()),
        Some(other) => {
            return Err(doc.invalid(format!("cniVersion is {}, not a string", other.kind())));
        }
        None => asked.push(String::new()),
    }
    if let Some(list) = obj.get("cniVersions") {
        let items = list
            .as_array()
            .ok_or_else(|| doc.invalid("cniVersions is not an array"))?;
        for v in items {
            asked.push(v.as_str().unwrap_or_default().to_string());
        }
    }
    match asked.into_iter().find(|v| Version::parse(v).is_none()) {
        None => Ok(()),
        Some(version) => Err(InstallError::UnsupportedVersion {
            file: doc.path.clone(),
            version,
            supported: SUPPORTED_VERSIONS.join(", "),
        }),
    }
}

fn is_ours(plugin: &Json) -> bool {
    plugin
        .as_object()
        .and_then(|o| o.get("type"))
        .and_then(Json::as_str)
        == Some(PLUGIN_TYPE)
}

/// Sets our keys in `entry`, keeping any others (e.g. `logLevel`) and their places.
fn fill_entry(entry: &mut Object, opts: &InstallOptions) {
    entry.insert("type", Json::String(PLUGIN_TYPE.into()));
    entry.insert(
        "socket",
        Json::String(opts.socket.to_string_lossy().into_owned()),
    );
    entry.insert("timeoutSeconds", Json::Number(opts.timeout_seconds.into()));
}

/// The `plugins` array of a conflist, validated.
fn plugins_mut<'a>(obj: &'a mut Object, doc: &Document) -> Result<&'a mut Vec<Json>, InstallError> {
    let plugins = obj
        .get_mut("plugins")
        .ok_or_else(|| doc.invalid("no \"plugins\" array: not a conflist"))?;
    let kind = plugins.kind();
    let plugins = plugins
        .as_array_mut()
        .ok_or_else(|| doc.invalid(format!("\"plugins\" is {kind}, not an array")))?;
    if let Some(i) = plugins.iter().position(|p| p.as_object().is_none()) {
        return Err(doc.invalid(format!("plugins[{i}] is not an object")));
    }
    Ok(plugins)
}

fn chain_into_conflist(
    doc: &Document,
    opts: &InstallOptions,
    report: &mut Report,
) -> Result<(), InstallError> {
    check_versions(doc)?;
    let mut obj = doc.obj.clone();
    let plugins = plugins_mut(&mut obj, doc)?;
    if plugins.iter().all(is_ours) {
        return Err(doc.invalid(
            "no plugin to chain after: nftpol needs the plugin that creates the pod's \
             interface before it",
        ));
    }
    let pristine = !plugins.iter().any(is_ours);
    let action = if pristine {
        let mut entry = Object::new();
        fill_entry(&mut entry, opts);
        plugins.push(Json::Object(entry));
        Action::EntryAdded {
            file: doc.path.clone(),
            position: plugins.len() - 1,
        }
    } else {
        let mut seen = false;
        plugins.retain_mut(|p| {
            if !is_ours(p) {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            if let Some(entry) = p.as_object_mut() {
                fill_entry(entry, opts);
            }
            true
        });
        if plugins.first().is_some_and(is_ours) {
            report.warnings.push(format!(
                "{}: nftpol is the first plugin; it gets no prevResult there and every ADD \
                 will fail: move it after the plugin that creates the pod's interface",
                doc.path.display()
            ));
        }
        Action::EntryUpdated {
            file: doc.path.clone(),
        }
    };
    let out = doc.style.render(&Json::Object(obj), &doc.path)?;
    if out == doc.bytes {
        report.actions.push(Action::EntryUnchanged {
            file: doc.path.clone(),
        });
        return Ok(());
    }
    if pristine {
        write_atomic(&backup_of(&doc.path), &doc.bytes, doc.mode)?;
    }
    write_atomic(&doc.path, &out, doc.mode)?;
    report.actions.push(action);
    Ok(())
}

/// Turns a single-plugin config into `<stem>.conflist` with our entry; returns its path.
fn convert_and_chain(
    doc: &Document,
    opts: &InstallOptions,
    report: &mut Report,
) -> Result<PathBuf, InstallError> {
    let conf = &doc.obj;
    if conf.get("type").and_then(Json::as_str).is_none() {
        let hint = if conf.get("plugins").is_some() {
            " (it has a \"plugins\" list: rename it to .conflist)"
        } else {
            ""
        };
        return Err(doc.invalid(format!("a single-plugin config needs a \"type\"{hint}")));
    }
    check_versions(doc)?;
    let target = doc.path.with_extension("conflist");
    let backup = backup_of(&doc.path);
    if target.exists() && !backup.exists() {
        return Err(InstallError::Conflict {
            conf: doc.path.clone(),
            existing: target,
        });
    }
    let mut list = Object::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = conf.get(key) {
            list.push(key, v.clone());
        }
    }
    let mut entry = Object::new();
    fill_entry(&mut entry, opts);
    list.push(
        "plugins",
        Json::Array(vec![Json::Object(doc.obj.clone()), Json::Object(entry)]),
    );
    let out = doc.style.render(&Json::Object(list), &target)?;
    write_atomic(&target, &out, doc.mode)?;
    rename(&doc.path, &backup)?;
    report.actions.push(Action::Converted {
        from: doc.path.clone(),
        to: target.clone(),
        backup,
    });
    report.actions.push(Action::EntryAdded {
        file: target.clone(),
        position: 1,
    });
    Ok(target)
}

/// Removes our entry from a conflist (or undoes our conversion).
fn unchain(doc: &Document, report: &mut Report) -> Result<(), InstallError> {
    let mut obj = doc.obj.clone();
    let Ok(plugins) = plugins_mut(&mut obj, doc) else {
        return Ok(()); // not a conflist we could have written
    };
    if !plugins.iter().any(is_ours) {
        return Ok(());
    }
    plugins.retain(|p| !is_ours(p));

    // Did we convert a single-plugin config into this file?
    for ext in ["conf", "json"] {
        let original = doc.path.with_extension(ext);
        let backup = backup_of(&original);
        if backup.exists() {
            if original.exists() {
                remove(&backup)?; // the network plugin wrote a new one meanwhile
            } else {
                rename(&backup, &original)?;
            }
            remove(&doc.path)?;
            report.actions.push(Action::ConversionUndone {
                restored: original,
                removed: doc.path.clone(),
            });
            return Ok(());
        }
    }

    let json = Json::Object(obj);
    let backup = backup_of(&doc.path);
    let original = fs::read(&backup).ok();
    let same_as_original = original
        .as_deref()
        .and_then(|b| serde_json::from_slice::<Json>(b).ok())
        .is_some_and(|o| o == json);
    let (out, byte_for_byte) = match original {
        Some(bytes) if same_as_original => (bytes, true),
        _ => (doc.style.render(&json, &doc.path)?, false),
    };
    write_atomic(&doc.path, &out, doc.mode)?;
    remove(&backup)?;
    report.actions.push(Action::EntryRemoved {
        file: doc.path.clone(),
        byte_for_byte,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_detects_tabs_spaces_and_one_line() {
        assert_eq!(Style::of(b"{\n\t\"a\": 1\n}\n").indent, b"\t");
        assert_eq!(Style::of(b"{\n    \"a\": 1\n}").indent, b"    ");
        assert_eq!(Style::of(b"{\"a\":1}").indent, b"");
        let s = Style::of(b"\n{\n\n\t\"a\": 1\n}\n\n");
        assert_eq!(
            (
                s.leading.as_slice(),
                s.trailing.as_slice(),
                s.indent.as_slice()
            ),
            (&b"\n"[..], &b"\n\n"[..], &b"\t"[..])
        );
    }

    #[test]
    fn backups_and_temp_files_are_never_configs() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "00-a.conflist.nftpol-orig",
            ".10-b.conflist.nftpol-tmp-42",
            "10-b.conflist",
            "05-c.conf.nftpol-orig",
        ] {
            fs::write(dir.path().join(name), "{}").unwrap();
        }
        assert_eq!(
            active_config(dir.path()).unwrap(),
            Some(dir.path().join("10-b.conflist"))
        );
    }
}
