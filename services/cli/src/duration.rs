//! Durations on the command line (`--timeout 2s`, `--wait-timeout 500ms`): one spelling for
//! every flag.

use std::time::Duration;

/// Parses `2s`, `1.5s`, `500ms` or a bare number of seconds; more than 0, at most 1 hour.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration: write e.g. 2s, 1.5s or 500ms");
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| invalid())?;
    if !value.is_finite() || value <= 0.0 || value * scale > 3600.0 {
        return Err(format!("{text:?} must be more than 0 and at most 1 hour"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}
