//! Prints the sabotage table of docs/VALIDATION.md: wrong results accepted
//! (ε) and compute per useful unit (R) for each scheme, adversary share and
//! strategy, on the real `validate()`.
//!
//! cargo run --release -p formic-protocol --example simulate -- [UNITS] [SEED] [FILTER]
//!
//! FILTER keeps only rows whose scheme, W, f or strategy text contains it
//! (e.g. `probation`, `cheat once`).

#[path = "../sim/engine.rs"]
mod engine;

use engine::{Params, Scheme, Strategy, simulate};

fn main() {
    let mut args = std::env::args().skip(1);
    let units: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let filter: Option<String> = args.next();
    let schemes = [
        Scheme {
            name: "visible quorum 2 (voting)",
            quorum: 2,
            audit_rate: 0.0,
            probation: 0,
            adversary_starts_veteran: true,
            sybil_respawn: false,
        },
        Scheme {
            name: "1 visible + 50% hidden audits",
            quorum: 1,
            audit_rate: 0.5,
            probation: 0,
            adversary_starts_veteran: true,
            sybil_respawn: false,
        },
        Scheme {
            name: "1 visible + 100% hidden audits",
            quorum: 1,
            audit_rate: 1.0,
            probation: 0,
            adversary_starts_veteran: true,
            sybil_respawn: false,
        },
        Scheme {
            name: "1 + 50% audits, probation 2700 (fresh adversary)",
            quorum: 1,
            audit_rate: 0.5,
            probation: 2700,
            adversary_starts_veteran: false,
            sybil_respawn: true,
        },
        Scheme {
            name: "1 + 35% audits, probation 2700 (fresh adversary)",
            quorum: 1,
            audit_rate: 0.35,
            probation: 2700,
            adversary_starts_veteran: false,
            sybil_respawn: true,
        },
        Scheme {
            name: "1 + 50% audits, probation 50 (fresh adversary)",
            quorum: 1,
            audit_rate: 0.5,
            probation: 50,
            adversary_starts_veteran: false,
            sybil_respawn: true,
        },
    ];
    println!(
        "units = {units}, seed = {seed}; ε = wrong accepted ÷ units; R = executions ÷ validated units\n"
    );
    println!(
        "| scheme | W | f | strategy | ε | R | validated | adversary ids caught | honest ids blacklisted |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for scheme in schemes {
        for workers in [100usize, 1000] {
            for f in [0.0, 0.05, 0.2] {
                let strategies: &[Strategy] = if f == 0.0 {
                    &[Strategy::CheatOnce]
                } else {
                    &Strategy::ALL
                };
                for &strategy in strategies {
                    let label = format!(
                        "{} | {} | {} | {}",
                        scheme.name,
                        workers,
                        f,
                        strategy.name()
                    );
                    if filter
                        .as_ref()
                        .is_some_and(|flt| !label.contains(flt.as_str()))
                    {
                        continue;
                    }
                    let r = simulate(Params {
                        workers,
                        adversary_fraction: f,
                        units,
                        batch_size: 1000,
                        scheme,
                        strategy,
                        seed,
                        max_replicas: 8,
                    });
                    println!(
                        "| {} | {} | {} | {} | {:.1e} | {:.3} | {} | {} | {} |",
                        scheme.name,
                        workers,
                        f,
                        if f == 0.0 { "—" } else { strategy.name() },
                        r.epsilon(),
                        r.overhead(),
                        r.validated,
                        r.adversary_identities_caught,
                        r.honest_identities_blacklisted
                    );
                }
            }
        }
    }
}
