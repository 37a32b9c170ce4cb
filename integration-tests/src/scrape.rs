//! Reading Prometheus `/metrics` endpoints: a plain HTTP/1.0 GET and a lookup of one sample in
//! the text format.

use std::io::{Read, Write};
use std::time::Duration;

/// `GET path` over HTTP/1.0 to `addr` on the host's network; the whole response.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The value of the first sample of metric `name` whose labels include every `labels` pair
/// (`name` must match exactly: `foo` does not match `foo_total`).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let wanted = labels.iter().all(|(k, v)| {
                label_text
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            if !wanted {
                return None;
            }
            value.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn finds_samples_by_name_and_labels() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\",b=\"two\"} 3\nx_total{a=\"2\",b=\"two\"} 5\nx 7\nx_bucket{le=\"+Inf\"} 9\n";
        assert_eq!(sample(text, "x_total", &[("a", "2")]), Some(5.0));
        assert_eq!(sample(text, "x_total", &[("b", "two")]), Some(3.0));
        assert_eq!(sample(text, "x", &[]), Some(7.0));
        assert_eq!(sample(text, "x_bucket", &[("le", "+Inf")]), Some(9.0));
        assert_eq!(sample(text, "x_total", &[("a", "3")]), None);
    }
}
