//! Policy documents: the model ([`model`]), the bounds of submitted text ([`bounds`]),
//! reading YAML / JSON ([`parse`]) and field checks ([`validate`]).

pub mod bounds;
pub mod model;
pub mod parse;
pub mod validate;

use std::fmt;

pub use model::{Policy, PolicyKey};
pub use parse::{Cancelled, parse_documents, parse_documents_until};

/// One problem of one submitted document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentError {
    /// Index of the document in the submitted text (0-based).
    pub document: usize,
    /// The policy's namespace and name when they could be read.
    pub policy: Option<PolicyKey>,
    /// Path of the bad field (`spec.ingress[0].toPorts[0].ports[1].port`); empty for the
    /// whole document.
    pub path: String,
    /// What is wrong and what is expected.
    pub message: String,
    /// 1-based line in the submitted text; 0 when unknown.
    pub line: u32,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "document {}: {}", self.document, self.message)
        } else {
            write!(
                f,
                "document {}, {}: {}",
                self.document, self.path, self.message
            )
        }
    }
}

/// What reading a text gave: the valid policies and every error.
#[derive(Clone, Debug, Default)]
pub struct ParseOutcome {
    /// Documents that parsed and validated, in order.
    pub policies: Vec<Policy>,
    /// Every error found.
    pub errors: Vec<DocumentError>,
}
