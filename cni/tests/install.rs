//! `install-cni` against real conflists (see tests/fixtures/install/README.md): golden
//! outputs, idempotency, uninstall restoring the originals byte for byte, the runtime's file
//! choice, atomic writes, and the errors an operator sees.
//!
//! Layout of each test host: a temp dir with `net.d/` (conf dir), `bin/` (CNI bin dir) and
//! `image/nftpol-cni` (the binary to install).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nftpol_cni::install::{self, Action, InstallError, InstallOptions};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/install");

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        for d in ["net.d", "bin", "image"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        fs::write(
            dir.path().join("image/nftpol-cni"),
            b"\x7fELF fake plugin v1",
        )
        .unwrap();
        Host { dir }
    }

    /// A host whose conf dir holds these fixtures.
    fn with(fixtures: &[&str]) -> Host {
        let h = Host::new();
        for f in fixtures {
            fs::copy(Path::new(FIXTURES).join(f), h.conf(f)).unwrap();
        }
        h
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.dir.path().join("net.d").join(name)
    }

    fn opts(&self) -> InstallOptions {
        InstallOptions {
            source_binary: self.dir.path().join("image/nftpol-cni"),
            bin_dir: self.dir.path().join("bin"),
            conf_dir: self.dir.path().join("net.d"),
            ..InstallOptions::default()
        }
    }

    fn uninstall_opts(&self) -> InstallOptions {
        InstallOptions {
            uninstall: true,
            ..self.opts()
        }
    }

    /// File names in the conf dir, sorted (hidden temp files included).
    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path().join("net.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.conf(name)).unwrap()
    }
}

fn fixture(name: &str) -> String {
    fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
}

#[test]
fn flannel_conflist_gets_nftpol_as_last_plugin_and_nothing_else_changes() {
    let h = Host::with(&["10-flannel.conflist"]);
    let report = install::install(&h.opts()).unwrap();
    assert_eq!(
        h.read("10-flannel.conflist"),
        fixture("10-flannel.conflist.golden")
    );
    assert!(report.actions.contains(&Action::EntryAdded {
        file: h.conf("10-flannel.conflist"),
        position: 2
    }));
    assert_eq!(
        h.listing(),
        ["10-flannel.conflist", "10-flannel.conflist.nftpol-orig"]
    );
}

#[test]
fn kindnet_template_output_keeps_its_tabs_and_surrounding_newlines() {
    let h = Host::with(&["10-kindnet.conflist"]);
    install::install(&h.opts()).unwrap();
    assert_eq!(
        h.read("10-kindnet.conflist"),
        fixture("10-kindnet.conflist.golden")
    );
}

#[test]
fn containerd_bridge_conflist_keeps_its_one_space_indent_and_key_order() {
    let h = Host::with(&["10-containerd-net.conflist"]);
    install::install(&h.opts()).unwrap();
    assert_eq!(
        h.read("10-containerd-net.conflist"),
        fixture("10-containerd-net.conflist.golden")
    );
}

#[test]
fn single_plugin_conf_becomes_a_conflist_and_the_original_moves_aside() {
    let h = Host::with(&["bridge.conf"]);
    let report = install::install(&h.opts()).unwrap();
    assert_eq!(h.read("bridge.conflist"), fixture("bridge.conflist.golden"));
    assert_eq!(h.listing(), ["bridge.conf.nftpol-orig", "bridge.conflist"]);
    assert_eq!(h.read("bridge.conf.nftpol-orig"), fixture("bridge.conf"));
    assert_eq!(
        install::active_config(&h.opts().conf_dir).unwrap(),
        Some(h.conf("bridge.conflist"))
    );
    assert!(report.changed());
}

#[test]
fn installing_twice_changes_nothing() {
    for f in [
        "10-flannel.conflist",
        "10-kindnet.conflist",
        "10-containerd-net.conflist",
        "bridge.conf",
    ] {
        let h = Host::with(&[f]);
        install::install(&h.opts()).unwrap();
        let before: Vec<(String, Vec<u8>, u64)> = h
            .listing()
            .into_iter()
            .map(|n| {
                let p = h.conf(&n);
                (n, fs::read(&p).unwrap(), fs::metadata(&p).unwrap().ino())
            })
            .collect();
        let bin_ino = fs::metadata(h.dir.path().join("bin/nftpol")).unwrap().ino();
        let report = install::install(&h.opts()).unwrap();
        assert!(!report.changed(), "{f}: {report}");
        let after: Vec<(String, Vec<u8>, u64)> = h
            .listing()
            .into_iter()
            .map(|n| {
                let p = h.conf(&n);
                (n, fs::read(&p).unwrap(), fs::metadata(&p).unwrap().ino())
            })
            .collect();
        assert_eq!(before, after, "{f}: files were rewritten");
        assert_eq!(
            fs::metadata(h.dir.path().join("bin/nftpol")).unwrap().ino(),
            bin_ino
        );
    }
}

#[test]
fn uninstall_restores_every_original_byte_for_byte() {
    for f in [
        "10-flannel.conflist",
        "10-kindnet.conflist",
        "10-containerd-net.conflist",
        "bridge.conf",
    ] {
        let h = Host::with(&[f]);
        install::install(&h.opts()).unwrap();
        let report = install::uninstall(&h.uninstall_opts()).unwrap();
        assert_eq!(h.listing(), [f], "{f}: {report}");
        assert_eq!(h.read(f), fixture(f), "{f}");
        if f.ends_with(".conflist") {
            assert!(
                report.actions.contains(&Action::EntryRemoved {
                    file: h.conf(f),
                    byte_for_byte: true
                }),
                "{report:?}"
            );
        }
        // Uninstalling again finds nothing to do.
        assert!(!install::uninstall(&h.uninstall_opts()).unwrap().changed());
    }
}

#[test]
fn an_existing_entry_is_updated_in_place_keeping_the_operators_keys() {
    let h = Host::new();
    fs::write(
        h.conf("10-x.conflist"),
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"ptp"},{"type":"nftpol","logLevel":"debug","socket":"/old.sock"},{"type":"portmap"},{"type":"nftpol"}]}"#,
    )
    .unwrap();
    let opts = InstallOptions {
        timeout_seconds: 30,
        ..h.opts()
    };
    let report = install::install(&opts).unwrap();
    assert_eq!(
        h.read("10-x.conflist"),
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"ptp"},{"type":"nftpol","logLevel":"debug","socket":"/run/nftpol/nftpol.sock","timeoutSeconds":30},{"type":"portmap"}]}"#
    );
    assert!(report.actions.contains(&Action::EntryUpdated {
        file: h.conf("10-x.conflist")
    }));
    // Not pristine: no backup of a file that already had our entry.
    assert_eq!(h.listing(), ["10-x.conflist"]);
    assert!(report.warnings.is_empty());

    // Put first by hand: kept there (the operator's choice), but flagged.
    fs::write(
        h.conf("10-x.conflist"),
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"nftpol"},{"type":"ptp"}]}"#,
    )
    .unwrap();
    let report = install::install(&h.opts()).unwrap();
    assert!(
        report.warnings[0].contains("nftpol is the first plugin"),
        "{report}"
    );
}

#[test]
fn the_runtimes_file_is_chosen_like_libcni_does() {
    // containerd's own default sorts before flannel's: that is the file the runtime uses
    // (a classic surprise on kubeadm nodes), so that is where nftpol must go.
    let h = Host::with(&["10-flannel.conflist", "10-containerd-net.conflist"]);
    fs::write(h.conf("README.md"), "not a config").unwrap();
    fs::write(h.conf("00-old.conflist.bak"), "{").unwrap();
    fs::create_dir(h.conf("05-dir.conf")).unwrap();
    install::install(&h.opts()).unwrap();
    assert_eq!(
        h.read("10-containerd-net.conflist"),
        fixture("10-containerd-net.conflist.golden")
    );
    assert_eq!(
        h.read("10-flannel.conflist"),
        fixture("10-flannel.conflist")
    );
}

#[test]
fn a_named_conflist_is_used_and_a_shadowing_file_is_reported() {
    let h = Host::with(&["10-flannel.conflist", "10-containerd-net.conflist"]);
    let opts = InstallOptions {
        conflist: Some("10-flannel.conflist".into()),
        ..h.opts()
    };
    let report = install::install(&opts).unwrap();
    assert_eq!(
        h.read("10-flannel.conflist"),
        fixture("10-flannel.conflist.golden")
    );
    assert_eq!(report.warnings.len(), 1, "{report}");
    assert!(report.warnings[0].contains("10-containerd-net.conflist"));
}

#[test]
fn a_file_rewritten_by_its_owner_after_install_is_left_alone_on_uninstall() {
    let h = Host::with(&["10-flannel.conflist"]);
    install::install(&h.opts()).unwrap();
    // flannel's init container copies its config again on restart.
    fs::copy(
        Path::new(FIXTURES).join("10-flannel.conflist"),
        h.conf("10-flannel.conflist"),
    )
    .unwrap();
    let report = install::uninstall(&h.uninstall_opts()).unwrap();
    assert_eq!(
        h.read("10-flannel.conflist"),
        fixture("10-flannel.conflist")
    );
    assert_eq!(h.listing(), ["10-flannel.conflist"], "{report}");
    // And install after such a rewrite chains again.
    install::install(&h.opts()).unwrap();
    install::install(&h.opts()).unwrap();
    fs::copy(
        Path::new(FIXTURES).join("10-flannel.conflist"),
        h.conf("10-flannel.conflist"),
    )
    .unwrap();
    let report = install::install(&h.opts()).unwrap();
    assert!(report.changed());
    assert_eq!(
        h.read("10-flannel.conflist"),
        fixture("10-flannel.conflist.golden")
    );
}

#[test]
fn someone_elses_later_edit_survives_uninstall() {
    let h = Host::with(&["10-flannel.conflist"]);
    install::install(&h.opts()).unwrap();
    let edited = h
        .read("10-flannel.conflist")
        .replace("\"hairpinMode\": true", "\"hairpinMode\": false");
    fs::write(h.conf("10-flannel.conflist"), &edited).unwrap();
    let report = install::uninstall(&h.uninstall_opts()).unwrap();
    let want =
        fixture("10-flannel.conflist").replace("\"hairpinMode\": true", "\"hairpinMode\": false");
    assert_eq!(h.read("10-flannel.conflist"), want);
    assert!(report.actions.contains(&Action::EntryRemoved {
        file: h.conf("10-flannel.conflist"),
        byte_for_byte: false
    }));
    assert_eq!(h.listing(), ["10-flannel.conflist"]);
}

#[test]
fn the_binary_is_installed_executable_replaced_atomically_and_removed_on_request() {
    let h = Host::with(&["10-flannel.conflist"]);
    let bin = h.dir.path().join("bin/nftpol");
    let report = install::install(&h.opts()).unwrap();
    assert!(
        report
            .actions
            .contains(&Action::BinaryInstalled { path: bin.clone() })
    );
    assert_eq!(fs::read(&bin).unwrap(), b"\x7fELF fake plugin v1");
    assert_eq!(
        fs::metadata(&bin).unwrap().permissions().mode() & 0o7777,
        0o755
    );

    // A new version replaces the file by rename (a new inode): a plugin process still
    // running the old one is undisturbed, and no reader ever sees half a binary.
    let old_ino = fs::metadata(&bin).unwrap().ino();
    fs::write(
        h.dir.path().join("image/nftpol-cni"),
        b"\x7fELF fake plugin v2",
    )
    .unwrap();
    install::install(&h.opts()).unwrap();
    assert_eq!(fs::read(&bin).unwrap(), b"\x7fELF fake plugin v2");
    assert_ne!(fs::metadata(&bin).unwrap().ino(), old_ino);

    // A wrong mode is repaired.
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(install::install(&h.opts()).unwrap().changed());
    assert_eq!(
        fs::metadata(&bin).unwrap().permissions().mode() & 0o7777,
        0o755
    );

    install::uninstall(&h.uninstall_opts()).unwrap();
    assert!(bin.exists(), "uninstall keeps the binary unless asked");
    let opts = InstallOptions {
        remove_binary: true,
        ..h.uninstall_opts()
    };
    install::uninstall(&opts).unwrap();
    assert!(!bin.exists());
}

#[test]
fn readers_never_see_a_partial_conflist_and_no_temp_file_is_left() {
    let h = Host::with(&["10-kindnet.conflist"]);
    let path = h.conf("10-kindnet.conflist");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let bytes = fs::read(&path).expect("the conflist vanished");
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|e| {
                    panic!("torn read: {e}: {:?}", String::from_utf8_lossy(&bytes))
                });
                reads += 1;
            }
            reads
        })
    };
    for _ in 0..200 {
        install::install(&h.opts()).unwrap();
        install::uninstall(&h.uninstall_opts()).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    assert_eq!(h.listing(), ["10-kindnet.conflist"]);
    assert_eq!(
        h.read("10-kindnet.conflist"),
        fixture("10-kindnet.conflist")
    );
    let bin_dir: Vec<_> = fs::read_dir(h.dir.path().join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(bin_dir, ["nftpol"]);
}

#[test]
fn temp_files_of_a_crashed_run_are_cleaned_up() {
    let h = Host::with(&["10-flannel.conflist"]);
    fs::write(h.conf(".10-flannel.conflist.nftpol-tmp-99999"), "{\"half").unwrap();
    install::install(&h.opts()).unwrap();
    assert_eq!(
        h.listing(),
        ["10-flannel.conflist", "10-flannel.conflist.nftpol-orig"]
    );
}

#[test]
fn the_conflist_mode_is_kept() {
    let h = Host::with(&["10-flannel.conflist"]);
    fs::set_permissions(
        h.conf("10-flannel.conflist"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    install::install(&h.opts()).unwrap();
    let mode = fs::metadata(h.conf("10-flannel.conflist"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
}

fn install_err(opts: &InstallOptions) -> String {
    install::install(opts).unwrap_err().to_string()
}

#[test]
fn errors_name_the_file_and_the_problem() {
    // No conf dir.
    let h = Host::new();
    let opts = InstallOptions {
        conf_dir: h.dir.path().join("missing"),
        ..h.opts()
    };
    let e = install_err(&opts);
    assert!(e.contains("missing") && e.contains("No such file"), "{e}");

    // Empty conf dir.
    let e = install_err(&h.opts());
    assert!(
        e.starts_with("no CNI network config") && e.contains("net.d"),
        "{e}"
    );

    // Invalid JSON: file and position.
    fs::write(
        h.conf("10-bad.conflist"),
        "{\n  \"name\": \"x\",\n  \"plugins\": [\n}\n",
    )
    .unwrap();
    let e = install_err(&h.opts());
    assert!(
        e.contains("10-bad.conflist is not valid JSON") && e.contains("line 4"),
        "{e}"
    );

    // No plugins array.
    fs::write(
        h.conf("10-bad.conflist"),
        r#"{"cniVersion":"1.0.0","name":"x","type":"bridge"}"#,
    )
    .unwrap();
    let e = install_err(&h.opts());
    assert!(
        e.contains("10-bad.conflist") && e.contains("no \"plugins\" array"),
        "{e}"
    );

    // A spec version the plugin does not speak, in cniVersion or cniVersions.
    fs::write(
        h.conf("10-bad.conflist"),
        r#"{"cniVersion":"0.2.0","name":"x","plugins":[]}"#,
    )
    .unwrap();
    let e = install::install(&h.opts()).unwrap_err();
    assert!(
        matches!(e, InstallError::UnsupportedVersion { ref version, .. } if version == "0.2.0"),
        "{e}"
    );
    fs::write(
        h.conf("10-bad.conflist"),
        r#"{"cniVersion":"1.1.0","cniVersions":["1.1.0","1.2.0"],"name":"x","plugins":[]}"#,
    )
    .unwrap();
    let e = install_err(&h.opts());
    assert!(e.contains("\"1.2.0\" is not supported"), "{e}");

    // Nothing to chain after.
    fs::write(
        h.conf("10-bad.conflist"),
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
    )
    .unwrap();
    let e = install_err(&h.opts());
    assert!(
        e.contains("10-bad.conflist") && e.contains("no plugin to chain after"),
        "{e}"
    );

    // A conflist by mistake in a .conf file.
    fs::remove_file(h.conf("10-bad.conflist")).unwrap();
    fs::write(
        h.conf("10-a.conf"),
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
    )
    .unwrap();
    let e = install_err(&h.opts());
    assert!(
        e.contains("10-a.conf") && e.contains("rename it to .conflist"),
        "{e}"
    );

    // A named conflist that is not there.
    let opts = InstallOptions {
        conflist: Some("99-nope.conflist".into()),
        ..h.opts()
    };
    let e = install_err(&opts);
    assert!(e.ends_with("99-nope.conflist does not exist"), "{e}");

    // The binary to install is missing: nothing in the conf dir changes.
    let h = Host::with(&["10-flannel.conflist"]);
    let opts = InstallOptions {
        source_binary: "/nonexistent/nftpol-cni".into(),
        ..h.opts()
    };
    let e = install_err(&opts);
    assert!(e.contains("/nonexistent/nftpol-cni"), "{e}");
    assert_eq!(
        h.read("10-flannel.conflist"),
        fixture("10-flannel.conflist")
    );
}

#[test]
fn converting_would_not_overwrite_someone_elses_conflist() {
    let h = Host::with(&["bridge.conf"]);
    fs::write(
        h.conf("bridge.conflist"),
        r#"{"cniVersion":"1.0.0","name":"y","plugins":[{"type":"ptp"}]}"#,
    )
    .unwrap();
    let e = install::install(&h.opts()).unwrap_err();
    assert!(matches!(e, InstallError::Conflict { .. }), "{e}");
    assert_eq!(h.read("bridge.conf"), fixture("bridge.conf"));
}

#[test]
fn a_converted_conf_stays_converted_across_reinstalls_and_owner_rewrites() {
    let h = Host::with(&["bridge.conf"]);
    let named = InstallOptions {
        conflist: Some("bridge.conf".into()),
        ..h.opts()
    };
    install::install(&named).unwrap();
    // Naming the original file again finds our conversion.
    assert!(!install::install(&named).unwrap().changed());
    // The network plugin writes its .conf again (it would shadow our .conflist): install
    // converts the new one and keeps it as the backup.
    let rewritten = fixture("bridge.conf").replace("10.88.0.0/16", "10.89.0.0/16");
    fs::write(h.conf("bridge.conf"), &rewritten).unwrap();
    install::install(&h.opts()).unwrap();
    assert_eq!(h.listing(), ["bridge.conf.nftpol-orig", "bridge.conflist"]);
    assert_eq!(
        h.read("bridge.conflist"),
        fixture("bridge.conflist.golden").replace("10.88.0.0/16", "10.89.0.0/16")
    );
    install::uninstall(&h.uninstall_opts()).unwrap();
    assert_eq!(h.listing(), ["bridge.conf"]);
    assert_eq!(h.read("bridge.conf"), rewritten);
}
