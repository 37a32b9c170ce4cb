//! Cuts the submitted text into documents: YAML `---` separators, a JSON array or a
//! Kubernetes `List`, each document with its own source text and first line (so errors can
//! point at it).

use serde_json::Value;

use super::Cancelled;
use crate::policy::DocumentError;
use crate::policy::model::SourceFormat;

/// One document cut out of the submitted text.
pub(super) struct RawDocument {
    pub(super) value: Value,
    pub(super) source: String,
    pub(super) format: SourceFormat,
    /// 1-based line of the document's first line in the submitted text.
    pub(super) first_line: u32,
}

pub(super) fn looks_like_json(text: &str) -> bool {
    matches!(text.trim_start().chars().next(), Some('{') | Some('['))
}

/// Cuts the text into documents, expanding JSON arrays and Kubernetes Lists; asks
/// `keep_going` before parsing each YAML document.
pub(super) fn split_documents(
    text: &str,
    keep_going: &mut dyn FnMut(usize) -> bool,
) -> Result<Result<Vec<RawDocument>, DocumentError>, Cancelled> {
    let mut out = Vec::new();
    if looks_like_json(text) {
        if !keep_going(0) {
            return Err(Cancelled { documents_done: 0 });
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => {
                return Ok(Err(DocumentError {
                    document: 0,
                    policy: None,
                    path: String::new(),
                    message: format!("not valid JSON: {e}"),
                    line: e.line() as u32,
                }));
            }
        };
        match value {
            Value::Array(items) => {
                for item in items {
                    push_expanded(&mut out, item, None, SourceFormat::Json, 0);
                }
            }
            value => push_expanded(&mut out, value, Some(text), SourceFormat::Json, 1),
        }
        return Ok(Ok(out));
    }
    let mut chunk = String::new();
    let mut chunk_line = 1u32;
    let mut chunks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            chunks.push((std::mem::take(&mut chunk), chunk_line));
            chunk_line = i as u32 + 2;
            let rest = line.trim_start_matches('-').trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                chunk.push_str(rest);
                chunk.push('\n');
            }
            continue;
        }
        chunk.push_str(line);
        chunk.push('\n');
    }
    chunks.push((chunk, chunk_line));
    for (chunk, first_line) in chunks {
        let blank = chunk
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "...");
        if blank {
            continue;
        }
        if !keep_going(out.len()) {
            return Err(Cancelled {
                documents_done: out.len(),
            });
        }
        let value: Value = match serde_yaml_ng::from_str(&chunk) {
            Ok(value) => value,
            Err(e) => {
                let line = e
                    .location()
                    .map(|l| l.line() as u32 + first_line - 1)
                    .unwrap_or(0);
                return Ok(Err(DocumentError {
                    document: out.len(),
                    policy: None,
                    path: String::new(),
                    message: format!("not valid YAML: {e}"),
                    line,
                }));
            }
        };
        if value.is_null() {
            continue;
        }
        push_expanded(
            &mut out,
            value,
            Some(chunk.trim_end()),
            SourceFormat::Yaml,
            first_line,
        );
    }
    Ok(Ok(out))
}

/// Adds a document, or the items of a Kubernetes List.
fn push_expanded(
    out: &mut Vec<RawDocument>,
    value: Value,
    source: Option<&str>,
    format: SourceFormat,
    first_line: u32,
) {
    if value.get("kind").and_then(Value::as_str) == Some("List")
        && let Some(Value::Array(items)) = value.get("items")
    {
        for item in items.clone() {
            push_expanded(out, item, None, format, 0);
        }
        return;
    }
    let source = match source {
        Some(s) => s.to_owned(),
        None => render(&value, format),
    };
    out.push(RawDocument {
        value,
        source,
        format,
        first_line,
    });
}

fn render(value: &Value, format: SourceFormat) -> String {
    match format {
        SourceFormat::Json => serde_json::to_string_pretty(value).unwrap_or_default(),
        SourceFormat::Yaml => serde_yaml_ng::to_string(value).unwrap_or_default(),
    }
}
