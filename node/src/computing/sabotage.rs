//! Deliberately wrong workers, for tests and the demo: the saboteurs the
//! validation scheme must withstand (docs/VALIDATION.md). Never enabled by
//! default.
//!
//! [`Sabotage`] is compiled into every build because `formic demo` runs
//! saboteurs in-process to show validation outvoting them; nothing else
//! reaches it. The ways to switch misbehaviour on from outside (`formic
//! node --sabotage`, injected host faults) exist only with the
//! `test-support` cargo feature, which the test crates enable and release
//! builds do not.

use formic_protocol::messages::UnitRef;
use formic_protocol::{ContentId, SignerKey};

/// How a saboteur node corrupts its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// Every result wrong (and different from other saboteurs').
    AlwaysWrong,
    /// Each result wrong with this probability in parts per million.
    SometimesWrong { per_million: u32 },
    /// Honest for the first `after` units, then always wrong.
    HonestThenDefect { after: u64 },
    /// Never computes: reports a made-up result without running the unit.
    Copier,
    /// Members of one group return the same wrong answer for a unit, so
    /// they agree with each other and try to outvote honest workers.
    Colluding { group: [u8; 32] },
}

impl Sabotage {
    /// Parses the `--sabotage` flag: `always-wrong`, `sometimes-wrong:0.1`,
    /// `honest-then-defect:20`, `copier`, `colluding:<group name>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once(':').map_or((s, None), |(k, a)| (k, Some(a)));
        match (kind, arg) {
            ("always-wrong", None) => Ok(Self::AlwaysWrong),
            ("copier", None) => Ok(Self::Copier),
            ("sometimes-wrong", Some(p)) => {
                let p: f64 = p
                    .parse()
                    .map_err(|_| format!("`{p}` is not a probability"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("probability {p} is not between 0 and 1"));
                }
                Ok(Self::SometimesWrong {
                    per_million: (p * 1e6) as u32,
                })
            }
            ("honest-then-defect", Some(n)) => {
                let after = n
                    .parse()
                    .map_err(|_| format!("`{n}` is not a unit count"))?;
                Ok(Self::HonestThenDefect { after })
            }
            ("colluding", Some(g)) => Ok(Self::Colluding {
                group: *blake3::hash(g.as_bytes()).as_bytes(),
            }),
            _ => Err(format!(
                "unknown sabotage `{s}`: use always-wrong, sometimes-wrong:P, honest-then-defect:N, copier or colluding:GROUP"
            )),
        }
    }

    /// Whether this saboteur skips running the unit altogether.
    pub fn skips_compute(&self) -> bool {
        matches!(self, Self::Copier)
    }

    /// The output to report instead of `honest` (None: report honestly).
    /// `done` counts units this node finished before; `draw` is fresh
    /// randomness.
    pub fn corrupt(
        &self,
        unit: &UnitRef,
        me: &SignerKey,
        done: u64,
        draw: u32,
        honest: &[u8],
    ) -> Option<Vec<u8>> {
        let personal = || {
            let mut h = blake3::Hasher::new();
            h.update(b"formic-sabotage");
            h.update(me.as_bytes());
            h.update(unit.id().as_bytes());
            format!("wrong {}\n", ContentId::from(h.finalize()).short()).into_bytes()
        };
        match self {
            Self::AlwaysWrong | Self::Copier => Some(personal()),
            Self::SometimesWrong { per_million } => {
                (draw % 1_000_000 < *per_million).then(personal)
            }
            Self::HonestThenDefect { after } => (done >= *after).then(personal),
            Self::Colluding { group } => {
                let mut h = blake3::Hasher::new();
                h.update(b"formic-collude");
                h.update(group);
                h.update(unit.id().as_bytes());
                // Differs from the honest output except by astronomical luck.
                let wrong =
                    format!("agreed {}\n", ContentId::from(h.finalize()).short()).into_bytes();
                (wrong != honest).then_some(wrong)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_mode_and_rejects_nonsense() {
        assert_eq!(Sabotage::parse("always-wrong"), Ok(Sabotage::AlwaysWrong));
        assert_eq!(
            Sabotage::parse("sometimes-wrong:0.5"),
            Ok(Sabotage::SometimesWrong {
                per_million: 500_000
            })
        );
        assert_eq!(
            Sabotage::parse("honest-then-defect:3"),
            Ok(Sabotage::HonestThenDefect { after: 3 })
        );
        assert_eq!(Sabotage::parse("copier"), Ok(Sabotage::Copier));
        assert!(matches!(
            Sabotage::parse("colluding:red"),
            Ok(Sabotage::Colluding { .. })
        ));
        assert!(Sabotage::parse("sometimes-wrong:2").is_err());
        assert!(Sabotage::parse("evil").is_err());
    }

    #[test]
    fn colluders_agree_and_others_do_not() {
        let unit = UnitRef {
            project: ContentId::of(b"p"),
            index: 1,
        };
        let a = SignerKey::from_bytes([1; 32]);
        let b = SignerKey::from_bytes([2; 32]);
        let red = Sabotage::parse("colluding:red").expect("parse");
        assert_eq!(
            red.corrupt(&unit, &a, 0, 0, b"42"),
            red.corrupt(&unit, &b, 0, 0, b"42")
        );
        let w = Sabotage::AlwaysWrong;
        assert_ne!(
            w.corrupt(&unit, &a, 0, 0, b"42"),
            w.corrupt(&unit, &b, 0, 0, b"42")
        );
        assert_eq!(
            Sabotage::HonestThenDefect { after: 5 }.corrupt(&unit, &a, 4, 0, b"42"),
            None
        );
    }
}

/// Whether an injected host fault strikes before the unit's claim is out
/// or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "test-support"), allow(dead_code))]
pub(crate) enum InjectedFault {
    /// At once, as a full sandbox pool would.
    BeforeClaim,
    /// Mid-run, as an input fetch that times out would.
    AfterClaim,
}

/// Host faults still to inject (`ComputeConfig::host_faults`). Without the
/// `test-support` feature there are none and this is empty.
#[derive(Debug)]
pub(crate) struct InjectedFaults {
    #[cfg(feature = "test-support")]
    left: std::cell::Cell<u32>,
    #[cfg(feature = "test-support")]
    total: u32,
}

impl InjectedFaults {
    #[cfg_attr(not(feature = "test-support"), allow(unused_variables))]
    pub(crate) fn new(total: u32) -> Self {
        Self {
            #[cfg(feature = "test-support")]
            left: std::cell::Cell::new(total),
            #[cfg(feature = "test-support")]
            total,
        }
    }

    /// The fault for the next unit run, if one is due. Counting down from
    /// the total, they alternate, and the first strikes after the claim.
    pub(crate) fn next(&self) -> Option<InjectedFault> {
        #[cfg(feature = "test-support")]
        {
            let left = self.left.get();
            if left == 0 {
                return None;
            }
            self.left.set(left - 1);
            Some(if left % 2 == self.total % 2 {
                InjectedFault::AfterClaim
            } else {
                InjectedFault::BeforeClaim
            })
        }
        #[cfg(not(feature = "test-support"))]
        None
    }
}
