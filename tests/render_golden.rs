//! Golden tests of `nftpol render`: Kubernetes objects in YAML under tests/fixtures/golden/<case>
//! in, the node's table as `nft -f` text out, compared with `expected.nft` next to it.
//!
//! The expected files are reviewed like code: regenerate them with
//! `UPDATE_GOLDEN=1 cargo test --test render_golden` and read the diff. As root, every expected
//! file is also loaded with `nft -f` into a throwaway network namespace and listed back, so the
//! golden text is proven to be what nft accepts and prints.

#[path = "dataplane_netns/mod.rs"]
mod netns;

use std::path::{Path, PathBuf};

use nftpol::cli::{Options, render};

fn case(name: &str, node: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(name);
    let opts = Options {
        node: node.to_string(),
        paths: vec![dir.join("input.yaml")],
        table: "nftpol".to_string(),
    };
    let text = match render(&opts) {
        Ok(t) => t,
        Err(e) => panic!("render {name}: {e}"),
    };
    let expected_path: PathBuf = dir.join("expected.nft");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &text).expect("write golden file");
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1)",
            expected_path.display()
        )
    });
    assert!(
        text == expected,
        "render of {name} differs from {}:\n--- expected\n{expected}\n--- got\n{text}",
        expected_path.display()
    );

    // The kernel accepts the text and lists it back the same way (counters aside).
    if let Some(ns) = netns::Netns::enter(&format!("render_golden {name}")) {
        if let Err(e) = ns.nft_load(&text) {
            panic!("nft -f rejects the {name} golden text: {e}");
        }
        let listed = ns.run(&["nft", "list", "table", "inet", "nftpol"]);
        let listed = normalise(&listed);
        assert_eq!(listed, normalise(&text), "nft lists {name} differently");
    }
}

/// Counters carry values once loaded; element lists may be wrapped and ordered differently.
fn normalise(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut elements = String::new();
    let mut in_elements = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let line = line.replace("counter packets 0 bytes 0", "counter");
        if let Some(rest) = line.strip_prefix("elements = { ") {
            in_elements = true;
            elements.push_str(rest);
        } else if in_elements {
            elements.push(' ');
            elements.push_str(&line);
        } else {
            lines.push(line);
        }
        if in_elements && elements.ends_with('}') {
            in_elements = false;
            let body = elements.trim_end_matches('}').trim();
            let mut parts: Vec<String> = body.split(", ").map(|e| e.trim().to_string()).collect();
            parts.sort();
            lines.push(format!("elements = {{ {} }}", parts.join(", ")));
            elements.clear();
        }
    }
    lines
}

#[test]
fn the_documentation_example_on_the_db_node() {
    case("docs-example", "n1");
}

#[test]
fn default_deny_with_dns_and_allow_all() {
    case("deny-and-dns", "n1");
}

#[test]
fn named_ports_resolve_per_pod() {
    case("named-ports", "n1");
}

#[test]
fn dual_stack_ip_blocks_and_port_ranges() {
    case("dual-stack-ranges", "n1");
}
