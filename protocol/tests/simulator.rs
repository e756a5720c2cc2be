//! A small simulator run in CI: the real validate() against colluding
//! saboteurs. The full 30,000-unit table is `examples/simulate.rs`.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../sim/engine.rs"]
#[allow(dead_code)] // the report example uses the rest
mod engine;

use engine::{Params, Scheme, Strategy, simulate};

fn params(scheme: Scheme, strategy: Strategy, f: f64) -> Params {
    Params {
        workers: 100,
        adversary_fraction: f,
        units: 2_000,
        batch_size: 500,
        scheme,
        strategy,
        seed: 7,
        max_replicas: 8,
    }
}

const VOTING: Scheme = Scheme {
    name: "voting",
    quorum: 2,
    audit_rate: 0.0,
    probation: 0,
    adversary_starts_veteran: true,
    sybil_respawn: false,
};
const AUDITED: Scheme = Scheme {
    name: "audits",
    quorum: 1,
    audit_rate: 0.5,
    probation: 0,
    adversary_starts_veteran: true,
    sybil_respawn: false,
};
const PROBATION: Scheme = Scheme {
    name: "probation",
    quorum: 1,
    audit_rate: 0.5,
    probation: 2700,
    adversary_starts_veteran: false,
    sybil_respawn: true,
};

#[test]
fn honest_network_validates_everything_at_the_replication_it_asked_for() {
    let r = simulate(params(VOTING, Strategy::CheatOnce, 0.0));
    assert_eq!(
        (
            r.validated,
            r.wrong_accepted,
            r.honest_identities_blacklisted
        ),
        (2_000, 0, 0)
    );
    assert_eq!(r.executions, 4_000);
    let r = simulate(params(AUDITED, Strategy::CheatOnce, 0.0));
    assert_eq!((r.validated, r.wrong_accepted), (2_000, 0));
    assert!(
        r.overhead() > 1.4 && r.overhead() < 1.6,
        "R = {}",
        r.overhead()
    );
}

#[test]
fn blatant_saboteurs_are_caught_and_never_accepted() {
    for scheme in [VOTING, AUDITED] {
        let r = simulate(params(scheme, Strategy::AlwaysWrong, 0.2));
        assert!(r.adversary_identities_caught > 0, "{scheme:?}");
        // Only units held entirely by adversary identities and never
        // checked can slip through; with always-wrong that's rare.
        assert!(r.epsilon() < 0.05, "{scheme:?}: ε = {}", r.epsilon());
    }
}

#[test]
fn hidden_audits_beat_visible_voting_against_collusion() {
    let voting = simulate(params(VOTING, Strategy::CheatWhenSafe, 0.2));
    let audited = simulate(params(AUDITED, Strategy::CheatWhenSafe, 0.2));
    assert!(
        voting.wrong_accepted > 0,
        "voting should let colluders through"
    );
    assert!(
        audited.wrong_accepted * 2 < voting.wrong_accepted,
        "audits {} vs voting {}",
        audited.wrong_accepted,
        voting.wrong_accepted
    );
}

#[test]
fn fresh_identities_on_probation_cannot_cheat_alone() {
    let r = simulate(params(PROBATION, Strategy::CheatWhenSafe, 0.2));
    assert_eq!(r.wrong_accepted, 0);
    assert_eq!(r.validated, 2_000);
}
