//! The size and nesting bounds of submitted policy text, checked by a cheap linear pre-scan
//! BEFORE any parser sees it.
//!
//! Why: the YAML parser's cost grows with the square of the flow nesting depth (`[[[[…`):
//! an 80 KB document took 4.8 s of CPU and 200 KB more than 15 s, and since libyaml reads a
//! whole document before serde's recursion limit applies, no parser setting bounds it. With
//! the nesting bounded, parsing is linear in the size, and the size is bounded too. YAML
//! aliases are refused for the same reason: each `*alias` replays its anchor's whole subtree,
//! so a small document can expand to gigabytes.
//!
//! Depth counts every collection around a node, the document's root mapping included
//! (`spec: [[1]]` is 3 deep): block collections by indentation (plus each compact `- ` /
//! `? ` entry on a line), flow collections by their brackets, JSON by its brackets. The scan
//! knows quoted scalars, comments and block scalars (`|`, `>`), so brackets inside text do
//! not count; where it cannot tell, it counts (it may over-estimate a contrived document,
//! never under-estimate one: what passes here cannot make the parser slow).

use std::fmt;

use crate::policy::DocumentError;

/// Largest policy text one request may submit (all its documents together): 1 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Deepest nesting of collections in a policy document.
pub const MAX_NESTING_DEPTH: usize = 64;

/// Why a text was refused before parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoundsError {
    /// The text is larger than [`MAX_DOCUMENT_BYTES`].
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// Collections nest deeper than [`MAX_NESTING_DEPTH`].
    TooDeep {
        /// 1-based line where the limit was passed.
        line: u32,
    },
    /// A YAML alias (`*name`).
    Alias {
        /// 1-based line of the alias.
        line: u32,
    },
}

impl fmt::Display for BoundsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoundsError::TooLarge { bytes } => write!(
                f,
                "the policy text is {bytes} bytes; at most {MAX_DOCUMENT_BYTES} bytes (1 MiB) \
                 may be submitted at once: split it into several imports"
            ),
            BoundsError::TooDeep { line } => write!(
                f,
                "line {line}: collections nest deeper than {MAX_NESTING_DEPTH} levels (the \
                 limit of a policy document); a policy needs fewer than 10"
            ),
            BoundsError::Alias { line } => write!(
                f,
                "line {line}: YAML aliases (*name) are not accepted in policy documents; \
                 write the content out"
            ),
        }
    }
}

impl BoundsError {
    /// The error as the parser reports document errors.
    pub fn into_document_error(self) -> DocumentError {
        let line = match &self {
            BoundsError::TooLarge { .. } => 0,
            BoundsError::TooDeep { line } | BoundsError::Alias { line } => *line,
        };
        DocumentError {
            document: 0,
            policy: None,
            path: String::new(),
            message: self.to_string(),
            line,
        }
    }
}

/// Checks `text` against the bounds; `json` selects the JSON scan (else YAML). Linear in the
/// text's length and allocation-free but for the block-indentation stack (≤ 64 entries).
pub fn check(text: &str, json: bool) -> Result<(), BoundsError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(BoundsError::TooLarge { bytes: text.len() });
    }
    if json {
        check_json(text.as_bytes())
    } else {
        YamlScan::default().run(text.as_bytes())
    }
}

fn check_json(text: &[u8]) -> Result<(), BoundsError> {
    let mut depth = 0usize;
    let mut line = 1u32;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING_DEPTH {
                    return Err(BoundsError::TooDeep { line });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A quoted scalar the scan is inside of (it may span lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quote {
    Single,
    Double,
}

/// One block indentation column with what was seen at it: mapping keys (or scalars) and
/// sequence entries. A sequence may sit at the same column as the mapping holding it
/// (`key:` then `- item` below it), so a column with both is two levels.
#[derive(Clone, Copy, Debug)]
struct Level {
    col: usize,
    key: bool,
    dash: bool,
}

impl Level {
    fn depth(&self) -> usize {
        1 + usize::from(self.key && self.dash)
    }
}

/// State of the YAML scan, carried across lines.
#[derive(Default)]
struct YamlScan {
    /// The open block levels, by column.
    block: Vec<Level>,
    /// Sum of the levels' depths.
    block_depth: usize,
    /// Open flow collections (`[`, `{`).
    flow: usize,
    /// Depth of the block levels around the outermost open flow collection.
    flow_base: usize,
    /// Inside a flow collection, whether a node may start at the next character (a line
    /// break is whitespace there).
    flow_node_start: bool,
    /// Inside a quoted scalar.
    quote: Option<Quote>,
    /// The previous character ended a `\` escape in a double-quoted scalar.
    escaped: bool,
    /// Lines indented deeper than this belong to a block scalar (`|`, `>`).
    block_scalar: Option<usize>,
    /// 1-based current line.
    line: u32,
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A block scalar header: `|` or `>`, then indentation/chomping indicators, then the end
/// of the line, spaces or a comment.
fn is_block_scalar_header(rest: &[u8]) -> bool {
    let mut i = 1;
    while i < rest.len() && matches!(rest[i], b'0'..=b'9' | b'+' | b'-') {
        i += 1;
    }
    i == rest.len() || is_space(rest[i])
}

impl YamlScan {
    fn run(mut self, text: &[u8]) -> Result<(), BoundsError> {
        for raw in text.split(|&b| b == b'\n') {
            self.line += 1;
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            self.scan_line(line)?;
        }
        Ok(())
    }

    fn check_depth(&self, depth: usize) -> Result<(), BoundsError> {
        if depth > MAX_NESTING_DEPTH {
            Err(BoundsError::TooDeep { line: self.line })
        } else {
            Ok(())
        }
    }

    /// Opens a block level at `col` unless the innermost one is there.
    fn open(&mut self, col: usize) -> Result<(), BoundsError> {
        while self.block.last().is_some_and(|top| top.col > col) {
            let top = self.block.pop().expect("checked");
            self.block_depth -= top.depth();
        }
        if self.block.last().is_none_or(|top| top.col != col) {
            self.block.push(Level {
                col,
                key: false,
                dash: false,
            });
            self.block_depth += 1;
        }
        self.check_depth(self.block_depth)
    }

    /// Marks what the innermost level holds: a sequence entry or a key/scalar.
    fn mark(&mut self, dash: bool) -> Result<(), BoundsError> {
        if let Some(top) = self.block.last_mut() {
            let before = top.depth();
            if dash {
                top.dash = true;
            } else {
                top.key = true;
            }
            self.block_depth = self.block_depth + top.depth() - before;
        }
        self.check_depth(self.block_depth)
    }

    fn scan_line(&mut self, line: &[u8]) -> Result<(), BoundsError> {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let content = &line[indent..];
        let blank = content.iter().all(|&b| is_space(b)) || content.first() == Some(&b'#');
        // Continuations of a quoted scalar or of a flow collection: no block structure.
        if self.quote.is_some() || self.flow > 0 {
            return self.scan(line, 0);
        }
        if let Some(parent) = self.block_scalar {
            if blank || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        if blank {
            return Ok(());
        }
        if indent == 0 && (content.starts_with(b"---") || content.starts_with(b"...")) {
            let rest = &content[3..];
            if rest.is_empty() || is_space(rest[0]) {
                // A new document (or the end of one): its block structure starts afresh.
                self.block.clear();
                self.block_depth = 0;
                return self.scan(line, 3);
            }
        }
        if indent == 0 && content.first() == Some(&b'%') {
            return Ok(()); // a directive
        }
        self.open(indent)?;
        self.scan(line, indent)
    }

    /// Scans `line` from `start`, a place where a node may begin in block context (or the
    /// continuation of a quoted scalar or flow collection).
    fn scan(&mut self, line: &[u8], start: usize) -> Result<(), BoundsError> {
        let mut node_start = if self.flow > 0 {
            self.flow_node_start
        } else {
            true
        };
        // The first token of a block node marks its level (once per node).
        let mut block_node = self.flow == 0 && self.quote.is_none();
        let mut i = start;
        // The node being read is the first of its block level (a flow collection there IS
        // that level's node, not one more inside it).
        let mut first_of_level = false;
        while i < line.len() {
            let b = line[i];
            if let Some(quote) = self.quote {
                match (quote, b) {
                    (Quote::Double, _) if self.escaped => self.escaped = false,
                    (Quote::Double, b'\\') => self.escaped = true,
                    (Quote::Double, b'"') => self.quote = None,
                    // `''` is an escaped quote inside the scalar.
                    (Quote::Single, b'\'') if line.get(i + 1) == Some(&b'\'') => i += 1,
                    (Quote::Single, b'\'') => self.quote = None,
                    _ => {}
                }
                i += 1;
                continue;
            }
            if is_space(b) {
                i += 1;
                continue;
            }
            let next = line.get(i + 1).copied();
            let ends_token = next.is_none_or(is_space);
            let after_space = i == 0 || is_space(line[i - 1]);
            if b == b'#' && after_space {
                break;
            }
            let block_context = self.flow == 0;
            if block_context && node_start && matches!(b, b'-' | b'?') && ends_token {
                // A compact entry: the level here holds a sequence (or complex keys), and
                // the entry's content, if on this line, opens a level at its column.
                self.mark(true)?;
                let content = (i + 1..line.len()).find(|&j| !is_space(line[j]));
                match content {
                    Some(col) if line[col] != b'#' => {
                        self.open(col)?;
                        i = col;
                    }
                    _ => break,
                }
                continue;
            }
            if block_node && node_start && block_context {
                let top = self.block.last().copied();
                self.mark(false)?;
                block_node = false;
                first_of_level = top.is_some_and(|t| !t.key && !t.dash);
            }
            match b {
                b'[' | b'{' if node_start || !block_context => {
                    if block_context {
                        self.flow_base = self.block_depth - usize::from(first_of_level);
                    }
                    self.flow += 1;
                    self.check_depth(self.flow_base + self.flow)?;
                    node_start = true;
                }
                b']' | b'}' if !block_context => {
                    self.flow -= 1;
                    node_start = false;
                }
                b',' if !block_context => node_start = true,
                b'"' if node_start => {
                    self.quote = Some(Quote::Double);
                    node_start = false;
                }
                b'\'' if node_start => {
                    self.quote = Some(Quote::Single);
                    node_start = false;
                }
                b'*' if node_start => return Err(BoundsError::Alias { line: self.line }),
                b'|' | b'>' if node_start && block_context => {
                    if is_block_scalar_header(&line[i..]) {
                        // Its text is the lines indented deeper than its level's column.
                        let col = self.block.last().map_or(0, |top| top.col);
                        self.block_scalar = Some(col);
                        break;
                    }
                    node_start = false;
                }
                // Anchors and tags come before the node they mark.
                b'&' | b'!' if node_start => {
                    while i + 1 < line.len() && !is_space(line[i + 1]) {
                        i += 1;
                    }
                }
                b':' if ends_token || !block_context => {
                    node_start = true;
                    first_of_level = false;
                }
                b'?' if !block_context => node_start = true,
                _ => node_start = false,
            }
            i += 1;
        }
        if self.quote == Some(Quote::Double) {
            // A line break inside a double-quoted scalar is folded; an escape cannot span it.
            self.escaped = false;
        }
        self.flow_node_start = node_start;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<(), BoundsError> {
        check(text, false)
    }

    fn nested_flow(depth: usize) -> String {
        // The root mapping is one level: `spec:` holds depth - 1 sequences.
        format!(
            "spec: {}1{}\n",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    #[test]
    fn flow_nesting_up_to_the_limit_passes() {
        assert_eq!(yaml(&nested_flow(MAX_NESTING_DEPTH)), Ok(()));
        assert_eq!(
            yaml(&nested_flow(MAX_NESTING_DEPTH + 1)),
            Err(BoundsError::TooDeep { line: 1 })
        );
        let map = format!("{}1{}", "{a: ".repeat(70), "}".repeat(70));
        assert!(matches!(yaml(&map), Err(BoundsError::TooDeep { .. })));
    }

    #[test]
    fn block_nesting_counts_indentation_and_compact_entries() {
        let mut deep = String::new();
        for level in 0..MAX_NESTING_DEPTH {
            deep.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
        }
        assert_eq!(yaml(&deep), Ok(()));
        deep.push_str(&format!("{}x: 1\n", " ".repeat(MAX_NESTING_DEPTH)));
        assert_eq!(
            yaml(&deep),
            Err(BoundsError::TooDeep {
                line: MAX_NESTING_DEPTH as u32 + 1
            })
        );
        let dashes = format!("{}x\n", "- ".repeat(MAX_NESTING_DEPTH + 1));
        assert!(matches!(yaml(&dashes), Err(BoundsError::TooDeep { .. })));
    }

    #[test]
    fn brackets_in_text_do_not_count() {
        let deep = "[".repeat(200);
        for text in [
            format!("description: \"{deep}\"\n"),
            format!("description: '{deep}'\n"),
            format!("description: it's {deep}\n"),
            format!("description: |\n  {deep}\n  more\nspec: {{}}\n"),
            format!("description: >-\n  {deep}\n"),
            format!("spec: {{}} # {deep}\n"),
            format!("description: \"multi\n  line {deep}\"\nspec: []\n"),
            format!("spec: {{description: 'it''s {deep}'}}\n"),
        ] {
            assert_eq!(yaml(&text), Ok(()), "{text}");
        }
        assert_eq!(check(&format!("{{\"d\": \"{deep}\\\"\"}}"), true), Ok(()));
    }

    #[test]
    fn a_real_policy_passes() {
        let policy = r#"
apiVersion: kino.io/v1
kind: KinoNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  description: lb may reach web on 80-90 [sic]
  endpointSelector:
    matchLabels: {app: web}
  ingress:
  - fromEndpoints: [{matchLabels: {app: lb}}]
    toPorts: [{ports: [{port: "80", endPort: 90, protocol: TCP}]}]
  - fromEntities: [host]
  egressDeny:
  - toCIDRSet:
    - cidr: 0.0.0.0/0
      except: [10.0.0.0/8]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: 53, protocol: UDP}]}]
"#;
        assert_eq!(yaml(policy), Ok(()));
    }

    #[test]
    fn json_nesting_and_size() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(check(&deep, true), Err(BoundsError::TooDeep { line: 1 }));
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(check(&ok, true), Ok(()));
        let big = " ".repeat(MAX_DOCUMENT_BYTES + 1);
        assert_eq!(
            check(&big, false),
            Err(BoundsError::TooLarge {
                bytes: MAX_DOCUMENT_BYTES + 1
            })
        );
    }

    #[test]
    fn aliases_are_refused() {
        let text = "a: &x [1, 2]\nb: [*x, *x]\n";
        assert_eq!(yaml(text), Err(BoundsError::Alias { line: 2 }));
        assert_eq!(yaml("a: \"*x\"\nb: a*b\n"), Ok(()));
    }
}
