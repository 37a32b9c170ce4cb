//! Logging flags shared by every binary.

use std::fmt;

/// Log output format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable single-line text (coloured when stderr is a terminal).
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        })
    }
}

/// Logging flags; `#[command(flatten)]` them into a binary's config.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr: `pretty` (human) or `json` (one object per line).
    #[arg(long = "log-format", env = "KINO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `info,kino_agent=debug`.
    /// Only affects logs: request spans are always exported when OTLP export is on.
    #[arg(long = "log-level", env = "KINO_LOG", default_value = "info")]
    pub log_level: String,
}

impl Default for LogArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_level: "info".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn flags_parse_and_default() {
        let cli = Cli::try_parse_from(["x", "--log-format", "json", "--log-level", "debug"])
            .expect("valid flags");
        assert_eq!(cli.log.log_format, LogFormat::Json);
        assert_eq!(cli.log.log_level, "debug");
        assert!(Cli::try_parse_from(["x", "--log-format", "xml"]).is_err());
    }
}
