//! Errors rendered on one line with every cause, for logs and records.
//!
//! Library errors carry their causes as `#[source]` fields rather than
//! baking them into their own message, so `main` can print each cause on
//! its own line. Where an error becomes text instead (a log field read by
//! `journalctl`, a failure reason kept in a record) this joins the chain
//! as `outer: cause: root`, so no cause is lost on the way. `main` prints
//! a command's failure with it too.
//!
//! Some error types (std's, libp2p's, and older ones here) also quote
//! their source in their own message; a cause whose text is already shown
//! is skipped so nothing is said twice.

use std::error::Error;
use std::fmt;

/// Displays `err` followed by each of its sources, separated by `: `.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            cause = e.source();
        }
        f.write_str(&shown)
    }
}

/// [`Chain`] as an owned string.
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    Chain(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load the project")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_joined_in_order() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&e), "cannot load the project: disk full");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write the file: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let e = Quoting(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&e), "cannot write the file: disk full");
    }

    #[test]
    fn an_error_without_cause_is_its_message() {
        let e = std::io::Error::other("disk full");
        assert_eq!(Chain(&e).to_string(), "disk full");
    }
}
