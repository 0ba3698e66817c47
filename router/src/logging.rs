//! Logs through `tracing`: readable text by default, JSON for clusters. The filter comes
//! from `RUST_LOG` when set (e.g. `RUST_LOG=weft_mesh=debug`), else from the level given.
//! The field names and every event are listed in docs/logging.md.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::ParseError;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A log format name that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log format {0:?}: use text or json")]
pub struct UnknownLogFormat(pub String);

impl std::str::FromStr for LogFormat {
    type Err = UnknownLogFormat;
    fn from_str(s: &str) -> Result<Self, UnknownLogFormat> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(UnknownLogFormat(other.to_owned())),
        }
    }
}

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// `RUST_LOG` is set to something `tracing_subscriber` cannot read.
    #[error("RUST_LOG={spec:?}: {source}")]
    Env {
        /// The variable's value.
        spec: String,
        /// What is wrong with it.
        source: ParseError,
    },
    /// The level given (`--log-level`) is not a filter.
    #[error("log level {spec:?}: {source}")]
    Level {
        /// The level given.
        spec: String,
        /// What is wrong with it.
        source: ParseError,
    },
}

/// Installs the global subscriber (once per process). A filter that does not parse, from
/// `RUST_LOG` or the level given, is an error rather than silently ignored.
pub fn init(format: LogFormat, default_level: &str) -> Result<(), FilterError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => filter,
            Err(source) => return Err(FilterError::Env { spec, source }),
        },
        _ => EnvFilter::try_new(default_level).map_err(|source| FilterError::Level {
            spec: default_level.to_owned(),
            source,
        })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_others_are_named_in_the_error() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        let e = "yaml".parse::<LogFormat>().unwrap_err();
        assert_eq!(e.to_string(), "log format \"yaml\": use text or json");
    }
}
