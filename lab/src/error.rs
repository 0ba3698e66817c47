//! The lab library's error: what a caller (the `weft lab` commands, the end-to-end tests)
//! can tell apart. Inside, the lab keeps `anyhow` with context on every step; a failure
//! part-way through crosses the boundary as [`LabError::Failed`], with that chain intact.

/// Why a lab operation did not happen, or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Refused before anything was made or changed: a spec, prefix, link, netem option, node,
    /// pod or command that is not valid for this lab, or a router action that does not fit
    /// its state.
    #[error("{0}")]
    Refused(String),
    /// This machine or build cannot run a lab: not root, or a tool or one of weft's programs
    /// is missing.
    #[error("{0}")]
    Unsupported(String),
    /// No lab of this prefix is up (it has no state file).
    #[error("no lab {prefix:?} is up (start one with `weft lab up`)")]
    NotUp {
        /// The lab's prefix.
        prefix: String,
    },
    /// Making, changing or removing the lab failed part-way: a command or a file operation.
    /// Display and source are the inner chain's (`{:#}` shows every step).
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The lab library's result.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// `Err(LabError::Refused(format!(…)))` from the current function.
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err($crate::LabError::Refused(format!($($arg)*)))
    };
}

/// [`refuse!`] unless `cond` holds.
macro_rules! refuse_unless {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::error::refuse!($($arg)*);
        }
    };
}

pub(crate) use {refuse, refuse_unless};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_can_tell_a_refusal_from_a_missing_lab_and_a_failure() {
        assert!(matches!(
            crate::plan::parse_link("13"),
            Err(LabError::Refused(_))
        ));
        assert!(matches!(
            crate::plan::parse_netem("2:loss=500%"),
            Err(LabError::Refused(_))
        ));
        // A prefix no test or lab uses: nothing under the lab root carries it.
        match crate::status("zzerr9") {
            Err(LabError::NotUp { prefix }) => assert_eq!(prefix, "zzerr9"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            crate::status("Bad!"),
            Err(LabError::Refused(m)) if m.contains("prefix")
        ));
    }

    #[test]
    fn a_failure_keeps_its_chain() {
        use anyhow::Context;
        let inner: anyhow::Result<()> = Err(anyhow::anyhow!("`ip netns add x` failed"));
        let err: LabError = inner.context("attaching pod n1-p1").unwrap_err().into();
        assert_eq!(err.to_string(), "attaching pod n1-p1");
        assert_eq!(
            format!("{err:#}"),
            "attaching pod n1-p1: `ip netns add x` failed"
        );
        // Through anyhow, as the CLI prints it: each step once.
        let outer = anyhow::Error::new(err);
        assert_eq!(
            format!("{outer:#}"),
            "attaching pod n1-p1: `ip netns add x` failed"
        );
    }
}
