//! `kino policy import|validate`: sizes checked before anything is sent. The compiler reads
//! at most [`MAX_POLICY_REQUEST_BYTES`] per request, and the datastore stores each policy as
//! one record of at most its `--max-value-bytes` (the document's text is part of the record,
//! so a document whose text alone is larger can never be stored). A file past either limit
//! is refused here, naming the limit, instead of being sent whole to be refused (or, before,
//! to fail as INTERNAL after the compiler had read it all).
//!
//! Documents are told apart without parsing: the `---` lines between YAML documents. A
//! document that is a JSON array or a `kind: List` holds several policies (each stored
//! apart), so only the compiler can tell whether one of them is too big; it checks every
//! policy against the gateway's limit before writing any.

use kino_api::datastore::StatusRequest;
use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::limits::{DEFAULT_MAX_VALUE_BYTES, MAX_POLICY_REQUEST_BYTES};
use kino_service_kit::ClientTlsArgs;

/// A file too big to import, and the limit it passes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooLarge {
    /// The whole request.
    #[error(
        "{file} is {size} bytes, above the {limit} bytes kino-policy-compiler reads in one request; nothing was sent: split it into several files"
    )]
    Request {
        /// The file.
        file: String,
        /// Its size.
        size: usize,
        /// The compiler's request limit.
        limit: usize,
    },
    /// One document.
    #[error(
        "document {index} of {file} (line {line}) is {size} bytes, above the datastore's limit of {limit} bytes per policy (kino-datastore-gateway --max-value-bytes); nothing was sent: split its rules into several policies"
    )]
    Document {
        /// The file.
        file: String,
        /// The document's index (0-based, as the compiler counts them).
        index: usize,
        /// Its first line (1-based).
        line: usize,
        /// Its size.
        size: usize,
        /// The datastore's value limit.
        limit: usize,
    },
}

/// One YAML document of a file: index, first line, text.
struct Document<'a> {
    index: usize,
    line: usize,
    text: &'a str,
}

/// The file's YAML documents (split at `---` lines), empty ones left out.
fn documents(text: &str) -> Vec<Document<'_>> {
    let mut out = Vec::new();
    let (mut start, mut start_line, mut offset) = (0usize, 1usize, 0usize);
    let mut bounds = Vec::new();
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            bounds.push((start, offset, start_line));
            start = offset + line.len();
            start_line = number + 2;
        }
        offset += line.len();
    }
    bounds.push((start, text.len(), start_line));
    for (start, end, line) in bounds {
        let doc = &text[start..end];
        if !doc.trim().is_empty() {
            out.push(Document {
                index: out.len(),
                line,
                text: doc,
            });
        }
    }
    out
}

/// A document that holds several policies (a JSON array, a `kind: List`).
fn holds_several(document: &str) -> bool {
    let trimmed = document.trim_start();
    trimmed.starts_with('[')
        || document.lines().any(|l| {
            let l = l.trim();
            l == "kind: List" || l.replace(' ', "").contains("\"kind\":\"List\"")
        })
}

/// Checks `text` (from `file`) against the compiler's request limit and each document
/// against the datastore's value limit, asking the gateway at `datastore` for its limit
/// only when a document is past the default (else the default holds).
pub async fn check(
    text: &str,
    file: &str,
    datastore: &str,
    tls: &ClientTlsArgs,
) -> Result<(), TooLarge> {
    if text.len() > MAX_POLICY_REQUEST_BYTES {
        return Err(TooLarge::Request {
            file: file.to_owned(),
            size: text.len(),
            limit: MAX_POLICY_REQUEST_BYTES,
        });
    }
    let mut limit = None;
    for document in documents(text) {
        if document.text.len() <= DEFAULT_MAX_VALUE_BYTES || holds_several(document.text) {
            continue;
        }
        let limit = match limit {
            Some(limit) => limit,
            None => *limit.insert(gateway_limit(datastore, tls).await),
        };
        if document.text.len() > limit {
            return Err(TooLarge::Document {
                file: file.to_owned(),
                index: document.index,
                line: document.line,
                size: document.text.len(),
                limit,
            });
        }
    }
    Ok(())
}

/// The gateway's `--max-value-bytes` as it reports it; the default when it cannot be asked
/// (the compiler checks again against the real one before writing).
async fn gateway_limit(datastore: &str, tls: &ClientTlsArgs) -> usize {
    let Ok(channel) = kino_service_kit::connect(datastore, tls).await else {
        return DEFAULT_MAX_VALUE_BYTES;
    };
    match DatastoreServiceClient::new(channel)
        .status(StatusRequest {})
        .await
    {
        Ok(status) => match usize::try_from(status.into_inner().max_value_bytes) {
            Ok(0) | Err(_) => DEFAULT_MAX_VALUE_BYTES,
            Ok(limit) => limit,
        },
        Err(_) => DEFAULT_MAX_VALUE_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_separator_lines_with_their_first_line() {
        let text = "a: 1\n---\nb: 2\nc: 3\n--- # two\n\n---\nd: 4";
        let docs = documents(text);
        let seen: Vec<(usize, usize, &str)> =
            docs.iter().map(|d| (d.index, d.line, d.text)).collect();
        assert_eq!(
            seen,
            [(0, 1, "a: 1\n"), (1, 3, "b: 2\nc: 3\n"), (2, 8, "d: 4")]
        );
    }

    #[tokio::test]
    async fn a_document_past_the_value_limit_is_refused_before_sending() {
        // Nothing listens there: the default limit applies.
        let datastore = "unix:/nonexistent/kino-test-ds.sock";
        let big = format!(
            "kind: CiliumNetworkPolicy\nmetadata: {{name: big}}\n# {}\n",
            "x".repeat(DEFAULT_MAX_VALUE_BYTES)
        );
        let text = format!("kind: CiliumNetworkPolicy\nmetadata: {{name: small}}\n---\n{big}");
        let error = check(&text, "p.yaml", datastore, &ClientTlsArgs::default())
            .await
            .expect_err("too big");
        assert!(
            matches!(
                error,
                TooLarge::Document {
                    index: 1,
                    line: 4,
                    ..
                }
            ),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&DEFAULT_MAX_VALUE_BYTES.to_string())
                && message.contains("--max-value-bytes"),
            "{message}"
        );
        // A List of many small policies may be larger than one record: the compiler checks.
        let list = format!(
            "kind: List\nitems:\n{}",
            "- {kind: CiliumNetworkPolicy}\n".repeat(50_000)
        );
        assert!(list.len() > DEFAULT_MAX_VALUE_BYTES);
        check(&list, "l.yaml", datastore, &ClientTlsArgs::default())
            .await
            .expect("a big List is the compiler's to check");
        let huge = "#".repeat(MAX_POLICY_REQUEST_BYTES + 1);
        let error = check(&huge, "h.yaml", datastore, &ClientTlsArgs::default())
            .await
            .expect_err("past the request limit");
        assert!(matches!(error, TooLarge::Request { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains(&MAX_POLICY_REQUEST_BYTES.to_string())
        );
    }
}
