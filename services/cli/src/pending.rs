//! Command groups whose backing services arrive in later issues: they exist so `kino --help`
//! shows the whole tool, and fail with the issue that brings them (never with made-up output).

use std::fmt;

/// A `kino` command group that is not implemented yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingGroup {
    /// `kino observe`.
    Observe,
}

impl PendingGroup {
    /// The subcommand's name.
    pub fn name(self) -> &'static str {
        match self {
            PendingGroup::Observe => "observe",
        }
    }

    /// The issue that brings the group, and what it needs from it.
    pub fn issue(self) -> (u32, &'static str) {
        match self {
            PendingGroup::Observe => (6, "the agent's flow observer"),
        }
    }

    /// The error to report when the group is run.
    pub fn error(self) -> NotImplemented {
        NotImplemented(self)
    }
}

/// `kino <group>` was run but the group is not implemented yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct NotImplemented(pub PendingGroup);

impl fmt::Display for NotImplemented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (issue, needs) = self.0.issue();
        write!(
            f,
            "`kino {}` is not implemented yet (issue #{issue}): it needs {needs}; `kino status` shows what runs today",
            self.0.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_group_names_its_issue() {
        let message = PendingGroup::Observe.error().to_string();
        assert!(message.contains("not implemented yet"), "{message}");
        assert!(message.contains("issue #6"), "{message}");
        assert!(message.contains("`kino observe`"), "{message}");
    }
}
