//! Files -> documents: YAML streams split at `---`, JSON files whole, each parsed into a
//! `serde_json::Value` with its number and first line remembered.
//!
//! The YAML stream is split here rather than by the parser so that every document keeps its
//! number (including empty ones, which the parser's multi-document API silently drops), a
//! syntax error in one document does not hide the others, and error positions can be given
//! in lines of the whole file. Splitting at column-0 `---`/`...` lines is exact: YAML forbids
//! such lines inside any scalar, so they always are document markers.

use serde_json::Value;

use crate::core::convert::printable;

/// One document of a file.
#[derive(Debug)]
pub(crate) struct Document {
    /// 1-based number of the document within its file.
    pub number: usize,
    /// `None` for an empty document (only comments, or `---` alone, or `~`).
    pub value: Option<Value>,
}

/// A syntax error, positioned in the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub document: usize,
    /// 1-based line and column, when the parser reported them.
    pub position: Option<(u64, u64)>,
    pub message: String,
}

/// Which parser a file goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Yaml,
    Json,
}

impl Format {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        }
    }
}

/// The documents of a file, in order. The second value is the number of documents the file
/// has (so that messages about single-document files can leave the number out).
pub(crate) fn parse(text: &str, format: Format) -> (Vec<Result<Document, SyntaxError>>, usize) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        Format::Json => (vec![parse_json(text)], 1),
        Format::Yaml => {
            let chunks = split_yaml(text);
            let count = chunks.len();
            let docs = chunks
                .into_iter()
                .enumerate()
                .map(|(i, chunk)| parse_yaml(i + 1, chunk))
                .collect();
            (docs, count)
        }
    }
}

fn parse_json(text: &str) -> Result<Document, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Document {
            number: 1,
            value: None,
        });
    }
    match serde_json::from_str::<Value>(text) {
        Ok(value) => Ok(Document {
            number: 1,
            value: (!value.is_null()).then_some(value),
        }),
        Err(e) => {
            // serde_json appends " at line L column C"; the position is reported separately.
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = printable(full.strip_suffix(&suffix).unwrap_or(&full)).into_owned();
            Err(SyntaxError {
                document: 1,
                position: (e.line() > 0).then(|| (e.line() as u64, e.column() as u64)),
                message,
            })
        }
    }
}

/// A piece of the file holding one document.
struct Chunk<'a> {
    text: &'a str,
    /// 1-based line of the file where `text` starts.
    first_line: u64,
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Only blank lines, comments and directives: no document of its own.
fn is_preamble(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || l.starts_with('%')
    })
}

/// Splits a YAML stream into one chunk per document. Comments and directives before a `---`
/// belong to the document it starts; a trailing preamble without a document is dropped.
fn split_yaml(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks: Vec<Chunk<'_>> = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut offset = 0usize;
    for (line_no, line) in (1u64..).zip(text.split_inclusive('\n')) {
        let line_end = offset + line.len();
        if is_marker(line, "---") && offset > start && !is_preamble(&text[start..offset]) {
            chunks.push(Chunk {
                text: &text[start..offset],
                first_line: start_line,
            });
            start = offset;
            start_line = line_no;
        }
        if is_marker(line, "...") {
            let chunk = &text[start..line_end];
            if !is_preamble(chunk) {
                chunks.push(Chunk {
                    text: chunk,
                    first_line: start_line,
                });
            }
            start = line_end;
            start_line = line_no + 1;
        }
        offset = line_end;
    }
    let rest = &text[start..];
    if !is_preamble(rest) {
        chunks.push(Chunk {
            text: rest,
            first_line: start_line,
        });
    }
    chunks
}

fn yaml_options() -> serde_saphyr::Options {
    // Cluster dumps (`kubectl get pods -A -o yaml`) are one document with every pod in it:
    // lift the size budgets meant for configuration files, keep the alias-bomb protection.
    serde_saphyr::options! {
        with_snippet: false,
        emit_comments: false,
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: None,
            max_events: usize::MAX,
            max_nodes: usize::MAX,
            max_total_scalar_bytes: usize::MAX,
        },
    }
}

fn parse_yaml(number: usize, chunk: Chunk<'_>) -> Result<Document, SyntaxError> {
    match serde_saphyr::from_str_with_options::<Option<Value>>(chunk.text, yaml_options()) {
        Ok(value) => Ok(Document {
            number,
            value: value.filter(|v| !v.is_null()),
        }),
        Err(e) => {
            use serde_saphyr::MessageFormatter;
            let inner = e.without_snippet();
            let message = serde_saphyr::DefaultMessageFormatter.format_message(inner);
            let message = printable(&message).into_owned();
            let position = inner
                .location()
                .filter(|l| l.line() > 0)
                .map(|l| (l.line() + chunk.first_line - 1, l.column()));
            Err(SyntaxError {
                document: number,
                position,
                message,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(text: &str) -> Vec<Option<Value>> {
        let (docs, count) = parse(text, Format::Yaml);
        assert_eq!(docs.len(), count);
        docs.into_iter()
            .enumerate()
            .map(|(i, d)| {
                let d = d.unwrap_or_else(|e| panic!("document {} of {text:?}: {e:?}", i + 1));
                assert_eq!(d.number, i + 1);
                d.value
            })
            .collect()
    }

    #[test]
    fn documents_are_split_at_markers_and_keep_their_numbers() {
        let a = Some(json!({"a": 1}));
        let b = Some(json!({"b": 2}));
        let cases: Vec<(&str, Vec<Option<Value>>)> = vec![
            ("a: 1\n", vec![a.clone()]),
            ("a: 1\n---\nb: 2\n", vec![a.clone(), b.clone()]),
            ("---\na: 1\n---\nb: 2\n", vec![a.clone(), b.clone()]),
            ("# header\n---\na: 1\n", vec![a.clone()]),
            // Empty documents count.
            ("---\n---\nb: 2\n", vec![None, b.clone()]),
            (
                "a: 1\n---\n# nothing\n---\nb: 2\n---\n",
                vec![a.clone(), None, b.clone(), None],
            ),
            ("--- {a: 1}\n--- {b: 2}\n", vec![a.clone(), b.clone()]),
            ("a: 1\n...\n---\nb: 2\n...\n", vec![a.clone(), b.clone()]),
            ("%YAML 1.2\n---\na: 1\n", vec![a.clone()]),
            ("a: 1\r\n---\r\nb: 2\r\n", vec![a.clone(), b.clone()]),
            ("\u{feff}a: 1\n", vec![a.clone()]),
            // Indented markers belong to block scalars.
            (
                "a: |\n  x\n  ---\n  y\n",
                vec![Some(json!({"a": "x\n---\ny\n"}))],
            ),
            // `----` and `---x` are not markers.
            ("a: 1\n----: 2\n", vec![Some(json!({"a": 1, "----": 2}))]),
            ("", vec![]),
            ("# only a comment\n", vec![]),
            ("---\n", vec![None]),
        ];
        for (text, want) in cases {
            assert_eq!(values(text), want, "{text:?}");
        }
    }

    #[test]
    fn syntax_errors_are_positioned_in_the_whole_file() {
        let text = "a: 1\n---\nb: 2\n---\n# comment\nc: [1, 2\nd: 4\n---\ne: 5\n";
        let (docs, count) = parse(text, Format::Yaml);
        assert_eq!(count, 4);
        let err = docs[2].as_ref().unwrap_err();
        assert_eq!(err.document, 3);
        assert_eq!(err.position, Some((7, 2)));
        assert_eq!(err.message, "illegal placement of ':' indicator");
        // The documents around it still parse.
        assert_eq!(docs[3].as_ref().unwrap().value, Some(json!({"e": 5})));
    }

    #[test]
    fn duplicate_keys_are_syntax_errors() {
        let (docs, _) = parse("metadata:\n  name: a\n  name: b\n", Format::Yaml);
        let err = docs[0].as_ref().unwrap_err();
        assert_eq!(err.position, Some((3, 3)));
        assert!(
            err.message.starts_with("duplicate mapping key: name"),
            "{err:?}"
        );
    }

    #[test]
    fn json_is_one_document() {
        let (docs, count) = parse("{\"a\": [1,\n 2,, ]}", Format::Json);
        assert_eq!(count, 1);
        let err = docs[0].as_ref().unwrap_err();
        assert_eq!(
            (err.position, err.message.as_str()),
            (Some((2, 4)), "expected value")
        );
        let (docs, _) = parse(" \n", Format::Json);
        assert!(docs[0].as_ref().unwrap().value.is_none());
    }

    mod no_panic {
        use super::*;
        use proptest::prelude::*;

        /// Lines built from YAML's troublemakers: markers, directives, comments, block
        /// scalars, flow collections, bad indentation, tabs, quotes, non-ASCII.
        fn yamlish() -> impl Strategy<Value = String> {
            let line = prop_oneof![
                Just("---".to_string()),
                Just("--- |".to_string()),
                Just("...".to_string()),
                Just("%YAML 1.2".to_string()),
                Just("# c".to_string()),
                Just("a: 1".to_string()),
                Just("  b: [1, {c: d}]".to_string()),
                Just(" x: \"open".to_string()),
                Just("- - -".to_string()),
                Just("\t: é\r".to_string()),
                Just("&a [*a]".to_string()),
                "[ -~]{0,10}",
            ];
            proptest::collection::vec(line, 0..12).prop_map(|l| l.join("\n"))
        }

        proptest! {
            #[test]
            fn any_text_splits_and_parses_without_panicking(text in yamlish()) {
                let lines = text.lines().count() as u64 + 1;
                let (docs, count) = parse(&text, Format::Yaml);
                prop_assert_eq!(docs.len(), count);
                for (i, doc) in docs.iter().enumerate() {
                    match doc {
                        Ok(d) => prop_assert_eq!(d.number, i + 1),
                        Err(e) => {
                            prop_assert_eq!(e.document, i + 1);
                            if let Some((line, _)) = e.position {
                                prop_assert!(line >= 1 && line <= lines, "{e:?} in {lines} lines");
                            }
                        }
                    }
                }
                let (json, _) = parse(&text, Format::Json);
                prop_assert_eq!(json.len(), 1);
            }
        }
    }
}
