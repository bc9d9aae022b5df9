//! What users see when their input is wrong: every message names the file (and document),
//! the object and the field. Fixtures: tests/fixtures/input/bad/, one broken thing per file.
//! Paths are relative to the package root, where cargo runs integration tests, so the
//! messages below are exactly what `nftpol render -f tests/fixtures/input/bad/...` prints.

use std::path::PathBuf;

use nftpol::input::{InputError, load};

const BAD: &str = "tests/fixtures/input/bad";

fn error_of(path: &str) -> InputError {
    match load(&[PathBuf::from(path)]) {
        Ok(loaded) => panic!("{path} should not load, got {loaded:?}"),
        Err(e) => e,
    }
}

fn message_of(path: &str) -> String {
    error_of(path).to_string()
}

#[test]
fn unparseable_yaml_names_file_line_column_and_document() {
    let file = format!("{BAD}/unparseable.yaml");
    assert_eq!(
        message_of(&file),
        format!(
            "{file}:18:4: document 2: invalid YAML: \
             while parsing a block mapping, did not find expected key"
        )
    );
    assert!(matches!(error_of(&file), InputError::Syntax { .. }));
}

#[test]
fn unparseable_json_names_file_line_and_column() {
    let file = format!("{BAD}/broken.json");
    assert_eq!(
        message_of(&file),
        format!("{file}:4:31: invalid JSON: trailing comma")
    );
}

#[test]
fn invalid_cidr_names_object_and_field() {
    let file = format!("{BAD}/invalid-cidr.yaml");
    assert_eq!(
        message_of(&file),
        format!(
            "{file}: NetworkPolicy prod/allow-office: spec.ingress[0].from[1].ipBlock.except[0]: \
             invalid value \"172.17.1/24\": \"172.17.1\" is not an IPv4 or IPv6 address"
        )
    );
    match error_of(&file) {
        InputError::Convert { origin, error } => {
            assert_eq!(origin.file, PathBuf::from(&file));
            assert_eq!(error.kind, "NetworkPolicy");
            assert_eq!(error.object, "prod/allow-office");
            assert_eq!(error.field, "spec.ingress[0].from[1].ipBlock.except[0]");
        }
        other => panic!("expected a conversion error, got {other:?}"),
    }
}

#[test]
fn bad_selector_operator_names_object_and_field() {
    let file = format!("{BAD}/bad-operator.yaml");
    assert_eq!(
        message_of(&file),
        format!(
            "{file}: NetworkPolicy prod/allow-monitoring: \
             spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator: \
             unsupported value \"Equals\" (supported: In, NotIn, Exists, DoesNotExist)"
        )
    );
}

#[test]
fn invalid_port_name_names_object_and_field() {
    let file = format!("{BAD}/invalid-port-name.yaml");
    assert_eq!(
        message_of(&file),
        format!(
            "{file}: NetworkPolicy prod/allow-metrics: spec.egress[1].ports[0].port: \
             invalid value \"metrics_http\": must contain only lowercase letters, digits and '-'"
        )
    );
}

#[test]
fn duplicates_name_both_places_across_and_within_files() {
    let dir = format!("{BAD}/duplicate");
    let err = error_of(&dir);
    assert_eq!(
        err.to_string(),
        format!(
            "2 problems in the input:\n\
             {dir}/b.yaml: document 2: NetworkPolicy prod/allow-web: metadata.name: \
             duplicate object, first defined at {dir}/a.yaml\n\
             {dir}/b.yaml: document 4: Pod default/web: metadata.name: \
             duplicate object, first defined at {dir}/b.yaml: document 3"
        )
    );
    assert!(
        err.problems()
            .iter()
            .all(|p| matches!(p, InputError::Duplicate { .. }))
    );
}

#[test]
fn schema_errors_name_object_and_field() {
    let file = format!("{BAD}/schema.yaml");
    assert_eq!(
        message_of(&file),
        format!(
            "{file}: Pod prod/web: spec.containers[0].ports[0].containerPort: \
             invalid type: string \"80\", expected i32"
        )
    );
}

#[test]
fn documents_that_are_not_objects_are_rejected() {
    let file = format!("{BAD}/not-an-object.yaml");
    assert_eq!(
        message_of(&file),
        format!(
            "{file}: not a Kubernetes object: expected a mapping with apiVersion and kind, \
             found a list"
        )
    );
    let file = format!("{BAD}/missing-kind.json");
    assert_eq!(
        message_of(&file),
        format!("{file}: object prod/web: kind: required")
    );
}

#[test]
fn every_problem_of_a_directory_is_reported_in_order_and_nothing_is_loaded() {
    let err = error_of(BAD);
    let messages: Vec<String> = err.problems().iter().map(|p| p.to_string()).collect();
    // Sorted directory order; each file's own message is checked exactly above.
    let files: Vec<&str> = messages
        .iter()
        .map(|m| m.split([':']).next().unwrap_or_default())
        .collect();
    assert_eq!(
        files,
        [
            "bad-operator.yaml",
            "broken.json",
            "duplicate/b.yaml",
            "duplicate/b.yaml",
            "invalid-cidr.yaml",
            "invalid-port-name.yaml",
            "missing-kind.json",
            "not-an-object.yaml",
            "schema.yaml",
            "unparseable.yaml",
        ]
        .map(|f| format!("{BAD}/{f}"))
    );
    assert!(err.to_string().starts_with("10 problems in the input:\n"));
    for single in [
        "bad-operator.yaml",
        "invalid-cidr.yaml",
        "schema.yaml",
        "unparseable.yaml",
    ] {
        let alone = message_of(&format!("{BAD}/{single}"));
        assert!(messages.contains(&alone), "{alone} is among {messages:#?}");
    }
}

#[test]
fn missing_paths_are_reported() {
    let err = error_of("tests/fixtures/input/no-such-file.yaml");
    assert!(matches!(&err, InputError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("tests/fixtures/input/no-such-file.yaml: cannot read: "),
        "{err}"
    );
}
