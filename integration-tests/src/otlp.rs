//! A real OTLP receiver for trace tests: `rotel-agent` (PyPI `rotel`, installed under
//! `.tools/` by deploy/local/install-deps.sh) with its debug exporter, whose printout of every
//! received span is parsed back into [`ReceivedSpan`]s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;
use crate::process::wait_for_port;

/// One span as the receiver printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// Trace id (hex).
    pub trace_id: String,
    /// Parent span id (hex), empty for a root span.
    pub parent_id: String,
    /// Span id (hex).
    pub id: String,
    /// Span name.
    pub name: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_INTERNAL`, …
    pub kind: String,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_OK` or `STATUS_CODE_ERROR`.
    pub status_code: String,
    /// The status message (set with an error).
    pub status_message: String,
    /// Attributes, values without their type wrapper (`Str(x)` → `x`).
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute's value, or "".
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }

    /// Whether the span's status is an error.
    pub fn is_error(&self) -> bool {
        self.status_code == "STATUS_CODE_ERROR"
    }
}

/// Where `rotel-agent` is: `.tools/bin/rotel-agent` in the repository, else on `PATH`.
pub fn rotel_binary() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)?;
    let local = repo.join(".tools/bin/rotel-agent");
    if local.exists() {
        return Some(local);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v rotel-agent"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(PathBuf::from(
        String::from_utf8_lossy(&found.stdout).trim().to_owned(),
    ))
}

/// A running rotel-agent on free loopback ports; killed (and its files removed) on drop.
pub struct Rotel {
    child: Child,
    /// Its OTLP/gRPC port on 127.0.0.1.
    pub port: u16,
    output: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rotel {
    /// Starts the receiver and waits until it accepts connections.
    pub async fn start(binary: &std::path::Path) -> anyhow::Result<Rotel> {
        let dir = tempfile::Builder::new().prefix("kino-rotel-").tempdir()?;
        let (port, http_port) = (free_port(), free_port());
        let output = dir.path().join("rotel.out");
        let out = std::fs::File::create(&output)?;
        let child = Command::new(binary)
            .arg("start")
            .args(["--exporter", "blackhole"])
            .args(["--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        let rotel = Rotel {
            child,
            port,
            output,
            _dir: dir,
        };
        wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(20)).await?;
        Ok(rotel)
    }

    /// The endpoint to export to (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        parse_debug_log(&self.output())
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the debug exporter's printout (`--debug-log-verbosity detailed`).
pub fn parse_debug_log(text: &str) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut current: Option<ReceivedSpan> = None;
    // Attribute lines belong to the resource until the first span of a block.
    let mut in_resource = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("ResourceSpans #") {
            spans.extend(current.take());
            in_resource = true;
            service.clear();
            continue;
        }
        if trimmed.starts_with("Span #") {
            spans.extend(current.take());
            in_resource = false;
            current = Some(ReceivedSpan {
                service: service.clone(),
                ..ReceivedSpan::default()
            });
            continue;
        }
        if trimmed.starts_with("ScopeSpans #") {
            spans.extend(current.take());
            in_resource = false;
            continue;
        }
        if let Some(attribute) = trimmed.strip_prefix("-> ") {
            let Some((key, value)) = attribute.split_once(": ") else {
                continue;
            };
            let value = unwrap_value(value);
            if in_resource {
                if key == "service.name" {
                    service = value;
                }
            } else if let Some(span) = current.as_mut() {
                span.attributes.insert(key.to_owned(), value);
            }
            continue;
        }
        let (Some(span), Some((field, value))) = (current.as_mut(), trimmed.split_once(':')) else {
            continue;
        };
        let value = value.trim().to_owned();
        match field.trim() {
            "Trace ID" => span.trace_id = value,
            "Parent ID" => span.parent_id = value,
            "ID" => span.id = value,
            "Name" => span.name = value,
            "Kind" => span.kind = value,
            "Status code" => span.status_code = value,
            "Status message" => span.status_message = value,
            _ => {}
        }
    }
    spans.extend(current);
    spans
}

/// `Str(x)` → `x`, `Int(5)` → `5`, anything else as printed.
fn unwrap_value(value: &str) -> String {
    match value.split_once('(') {
        Some((_, rest)) if rest.ends_with(')') => rest[..rest.len() - 1].to_owned(),
        _ => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\u{1b}[2m2026\u{1b}[0m INFO Starting Rotel.
ResourceSpans #0
Resource SchemaURL: 
Resource attributes:
     -> telemetry.sdk.language: Str(rust)
     -> service.name: Str(kino-datastore-gateway)
ScopeSpans #0
ScopeSpans SchemaURL: 
InstrumentationScope kino-datastore-gateway 
Span #0
    Trace ID       : 82507b3c6bf18bf781e567cc2ff4972c
    Parent ID      : 5fdc8f3a19f8aab4
    ID             : ffece2a867771e46
    Name           : grpc.health.v1.Health/Check
    Kind           : SPAN_KIND_SERVER
Start time: 1795682798840546107
End time: 1795682798841042822
    Status code    : STATUS_CODE_ERROR
    Status message : Unavailable: gone
Attributes:
     -> rpc.system: Str(grpc)
     -> rpc.grpc.status_code: Int(14)
Span #1
    Trace ID       : 82507b3c6bf18bf781e567cc2ff4972c
    Parent ID      : 
    ID             : aee37b5c83bf8135
    Name           : embedded status
    Kind           : SPAN_KIND_INTERNAL
    Status code    : STATUS_CODE_UNSET
    Status message : 
Attributes:
     -> db.key: Str()
ResourceSpans #0
Resource attributes:
     -> service.name: Str(kino-cni)
ScopeSpans #0
Span #0
    Trace ID       : 12915a50a4dba937b04c9a77341e2a20
    Parent ID      : 
    ID             : 84d74a7ee13f43b2
    Name           : CNI ADD
    Kind           : SPAN_KIND_INTERNAL
Attributes:
     -> cni.container_id: Str(ctr: one)
";

    #[test]
    fn parses_services_ids_status_and_attributes() {
        let spans = parse_debug_log(SAMPLE);
        assert_eq!(spans.len(), 3, "{spans:#?}");
        let check = &spans[0];
        assert_eq!(check.service, "kino-datastore-gateway");
        assert_eq!(check.trace_id, "82507b3c6bf18bf781e567cc2ff4972c");
        assert_eq!(check.parent_id, "5fdc8f3a19f8aab4");
        assert_eq!(check.id, "ffece2a867771e46");
        assert_eq!(check.name, "grpc.health.v1.Health/Check");
        assert_eq!(check.kind, "SPAN_KIND_SERVER");
        assert!(check.is_error());
        assert_eq!(check.status_message, "Unavailable: gone");
        assert_eq!(check.attr("rpc.grpc.status_code"), "14");
        assert_eq!(check.attr("rpc.system"), "grpc");
        assert_eq!(spans[1].parent_id, "");
        assert_eq!(spans[1].attr("db.key"), "");
        assert!(!spans[1].is_error());
        assert_eq!(spans[2].service, "kino-cni");
        assert_eq!(spans[2].attr("cni.container_id"), "ctr: one");
        assert!(!spans[2].attributes.contains_key("service.name"));
    }
}
