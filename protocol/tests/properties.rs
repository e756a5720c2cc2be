//! Property tests for the wire format: every record round-trips through its
//! canonical encoding, random bytes into every decoder give errors and never
//! panics, and any one-byte change to a signed manifest is caught.

// Test code: a failing unwrap or expect is a test failure with its message
// (clippy.toml allows them only inside #[test] functions and test modules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use formic_protocol::codec::{self, DecodeError};
use formic_protocol::messages::*;
use formic_protocol::signed::VerifiedRoots;
use formic_protocol::{ContentId, Signed, SignedPayload, VerifyError};
use libp2p_identity::Keypair;
use proptest::prelude::*;

fn content_id() -> impl Strategy<Value = ContentId> {
    any::<[u8; 32]>().prop_map(ContentId::from_bytes)
}

fn blob_ref() -> impl Strategy<Value = BlobRef> {
    (content_id(), any::<u64>()).prop_map(|(id, size)| BlobRef { id, size })
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Data::Inline),
        blob_ref().prop_map(Data::Blob),
    ]
}

fn unit_ref() -> impl Strategy<Value = UnitRef> {
    (content_id(), any::<u64>()).prop_map(|(project, index)| UnitRef { project, index })
}

fn manifest() -> impl Strategy<Value = ProjectManifest> {
    (
        ".{0,40}",
        blob_ref(),
        any::<[u64; 4]>(),
        (any::<u16>(), any::<u16>(), any::<u64>(), any::<u32>()),
        (any::<u64>(), ".{0,40}"),
    )
        .prop_map(
            |(
                name,
                app,
                l,
                (quorum, max_replicas, lease_ms, audit_rate_ppm),
                (created_at_ms, engine),
            )| {
                ProjectManifest {
                    name,
                    app,
                    engine,
                    limits: Limits {
                        fuel_per_unit: l[0],
                        memory_bytes: l[1],
                        max_output_bytes: l[2],
                        wall_clock_ms: l[3],
                    },
                    policy: Policy {
                        quorum,
                        max_replicas,
                        lease_ms,
                        audit_rate_ppm,
                    },
                    created_at_ms,
                }
            },
        )
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        content_id(),
        any::<u32>(),
        any::<[u8; 32]>(),
        proptest::collection::vec((any::<u64>(), data()), 0..8),
    )
        .prop_map(|(project, seq, seed, units)| Batch {
            project,
            seq,
            seed,
            units: units
                .into_iter()
                .map(|(index, input)| UnitSpec { index, input })
                .collect(),
        })
}

fn announce() -> impl Strategy<Value = Announce> {
    (
        content_id(),
        blob_ref(),
        blob_ref(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(project, manifest, batch, batch_seq, units)| Announce {
            project,
            manifest,
            batch,
            batch_seq,
            units,
        })
}

fn claim() -> impl Strategy<Value = Claim> {
    (unit_ref(), any::<u16>(), any::<u64>()).prop_map(|(unit, slot, lease_until_ms)| Claim {
        unit,
        slot,
        lease_until_ms,
    })
}

fn commit() -> impl Strategy<Value = Commit> {
    (unit_ref(), content_id()).prop_map(|(unit, seal)| Commit { unit, seal })
}

fn reveal() -> impl Strategy<Value = Reveal> {
    (
        unit_ref(),
        content_id(),
        data(),
        any::<u64>(),
        "[a-z0-9.-]{0,20}",
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(unit, result_hash, output, fuel_used, engine, salt)| Reveal {
                unit,
                result_hash,
                output,
                fuel_used,
                engine,
                salt,
            },
        )
}

fn spot_check_key() -> impl Strategy<Value = SpotCheckKey> {
    (
        content_id(),
        any::<u32>(),
        proptest::collection::vec((any::<u64>(), content_id()), 0..8),
    )
        .prop_map(|(project, batch_seq, answers)| SpotCheckKey {
            project,
            batch_seq,
            answers,
        })
}

/// Signs with a fixed key derived from a seed, so cases are reproducible.
fn keypair(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).expect("32 bytes is a valid ed25519 secret")
}

/// The signed payload bytes of a gossip record.
fn payload_of(g: &Gossip) -> Vec<u8> {
    match g {
        Gossip::Announce(s) => s.payload_bytes().to_vec(),
        Gossip::Claim(s) => s.payload_bytes().to_vec(),
        Gossip::Commit(s) => s.payload_bytes().to_vec(),
        Gossip::Reveal(s) => s.payload_bytes().to_vec(),
        Gossip::SpotCheckKey(s) => s.payload_bytes().to_vec(),
    }
}

fn round_trip_signed<T>(value: T, seed: u8) -> Result<(), TestCaseError>
where
    T: SignedPayload + PartialEq + std::fmt::Debug,
{
    let signed = Signed::sign(&keypair(seed), &value).expect("sign");
    let bytes = signed.to_bytes().expect("encode");
    let back = Signed::<T>::from_bytes(&bytes).expect("decode");
    prop_assert_eq!(&back, &signed);
    prop_assert_eq!(back.id(), ContentId::of(&bytes));
    prop_assert_eq!(back.verify().expect("verify"), value);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn records_round_trip_unsigned(m in manifest(), b in batch(), a in announce(), c in claim(),
                                   k in commit(), r in reveal(), s in spot_check_key()) {
        fn rt<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) -> Result<(), TestCaseError> {
            let bytes = codec::encode_versioned(v, usize::MAX).expect("encode");
            prop_assert_eq!(&codec::decode_versioned::<T>(&bytes, usize::MAX).expect("decode"), v);
            Ok(())
        }
        rt(&m)?; rt(&b)?; rt(&a)?; rt(&c)?; rt(&k)?; rt(&r)?; rt(&s)?;
    }

    #[test]
    fn signed_records_round_trip(m in manifest(), b in batch(), a in announce(), c in claim(),
                                 k in commit(), r in reveal(), s in spot_check_key(), seed in any::<u8>()) {
        round_trip_signed(m, seed)?;
        round_trip_signed(b, seed)?;
        round_trip_signed(a, seed)?;
        round_trip_signed(c, seed)?;
        round_trip_signed(k, seed)?;
        round_trip_signed(r, seed)?;
        round_trip_signed(s, seed)?;
    }

    #[test]
    fn gossip_round_trips(c in commit(), r in reveal(), seed in any::<u8>()) {
        let kp = keypair(seed);
        for g in [Gossip::Commit(Signed::sign(&kp, &c).expect("sign")),
                  Gossip::Reveal(Signed::sign(&kp, &r).expect("sign"))] {
            let bytes = g.to_bytes().expect("encode");
            prop_assert!(bytes.len() <= MAX_GOSSIP_BYTES);
            let back = Gossip::from_bytes(&bytes).expect("decode");
            prop_assert_eq!(&back, &g);
            prop_assert!(back.verify().is_ok());
        }
    }

    /// A bundle carries its records' own bytes: they come back unchanged,
    /// the bundle is told apart from a one-record message by its first
    /// bytes, and a one-record message never looks like a bundle.
    #[test]
    fn bundles_round_trip_and_are_told_apart(commits in proptest::collection::vec(commit(), 1..20), seed in any::<u8>()) {
        let kp = keypair(seed);
        let records: Vec<Vec<u8>> = commits
            .iter()
            .map(|c| Gossip::Commit(Signed::sign(&kp, c).expect("sign")).to_bytes().expect("encode"))
            .collect();
        for r in &records {
            prop_assert!(!GossipBundle::is_bundle(r));
        }
        let bundle = GossipBundle { bundle: records.iter().cloned().map(serde_bytes::ByteBuf::from).collect() };
        let bytes = bundle.to_bytes().expect("encode");
        prop_assert!(GossipBundle::is_bundle(&bytes));
        let payload: usize = records.iter().map(Vec::len).sum();
        prop_assert!(bytes.len() <= payload + GossipBundle::overhead(records.len()));
        let back = GossipBundle::from_bytes(&bytes).expect("decode");
        prop_assert_eq!(&back, &bundle);
        for (b, r) in back.bundle.iter().zip(&records) {
            prop_assert_eq!(b.as_slice(), r.as_slice());
            prop_assert!(Gossip::from_bytes(b).expect("record decodes").verify().is_ok());
        }
    }

    /// Records signed as one batch: each verifies alone, from its own bytes,
    /// with or without the cache of checked roots; the payloads are what
    /// was signed before; and a record signed alone still encodes with no
    /// batch field at all (the encoding older peers know).
    #[test]
    fn batch_signed_records_each_verify_alone(claims in proptest::collection::vec(claim(), 0..8),
                                               commits in proptest::collection::vec(commit(), 0..8),
                                               reveals in proptest::collection::vec(reveal(), 0..8),
                                               seed in any::<u8>()) {
        let kp = keypair(seed);
        let mut records: Vec<Gossip> = claims.iter().map(|c| Gossip::Claim(Signed::sign(&kp, c).expect("sign")))
            .chain(commits.iter().map(|c| Gossip::Commit(Signed::sign(&kp, c).expect("sign"))))
            .chain(reveals.iter().map(|r| Gossip::Reveal(Signed::sign(&kp, r).expect("sign"))))
            .collect();
        for c in &commits {
            // [version, {payload, signer, signature}]: three fields.
            let alone = Signed::sign(&kp, c).expect("sign").to_bytes().expect("encode");
            prop_assert_eq!(&alone[..3], &[0x82, 0x02, 0xa3]);
        }
        let before: Vec<Vec<u8>> = records.iter().map(payload_of).collect();
        Gossip::sign_batch(&kp, &mut records).expect("batch");
        let mut roots = VerifiedRoots::default();
        for (g, payload) in records.iter().zip(&before) {
            prop_assert_eq!(&payload_of(g), payload);
            let back = Gossip::from_bytes(&g.to_bytes().expect("encode")).expect("decode");
            prop_assert_eq!(&back, g);
            prop_assert!(back.verify().is_ok());
            let again = Gossip::from_bytes(&g.to_bytes().expect("encode")).expect("decode");
            prop_assert!(again.verify_in(&mut roots).is_ok());
        }
    }

    /// Any change to a batch-signed record, to its payload or to its proof,
    /// fails verification, also with the batch's root already checked.
    #[test]
    fn altered_batch_signed_records_are_rejected(commits in proptest::collection::vec(commit(), 2..12),
                                                 pick in any::<prop::sample::Index>(),
                                                 pos in any::<prop::sample::Index>(),
                                                 delta in 1u8..=255, what in 0u8..4) {
        let kp = keypair(4);
        // Distinct records: two equal ones could trade places legitimately.
        let mut signed: Vec<Signed<Commit>> = commits
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.clone();
                c.unit.index = i as u64;
                Signed::sign(&kp, &c).expect("sign")
            })
            .collect();
        {
            let mut batch: Vec<&mut dyn formic_protocol::signed::BatchSignable> =
                signed.iter_mut().map(|s| s as &mut dyn formic_protocol::signed::BatchSignable).collect();
            formic_protocol::signed::sign_batch(&kp, &mut batch).expect("batch");
        }
        let mut roots = VerifiedRoots::default();
        for s in &signed {
            // Four fields now: the proof too.
            prop_assert_eq!(&s.to_bytes().expect("encode")[..3], &[0x82, 0x02, 0xa4]);
            let fresh = Signed::<Commit>::from_bytes(&s.to_bytes().expect("encode")).expect("decode");
            prop_assert!(fresh.verify_in(&mut roots).is_ok());
        }
        let i = pick.index(signed.len());
        let mut bad = Signed::<Commit>::from_bytes(&signed[i].to_bytes().expect("encode")).expect("decode");
        let proof = bad.batch_proof_mut().expect("batch-signed");
        match what {
            0 if !proof.path.is_empty() => {
                let j = pos.index(proof.path.len());
                let mut b = *proof.path[j].as_bytes();
                b[0] = b[0].wrapping_add(delta);
                proof.path[j] = ContentId::from_bytes(b);
            }
            // Any other index, in range or one past the end.
            1 => proof.index = (proof.index + 1 + u32::from(delta) % proof.count) % (proof.count + 1),
            2 => { proof.path.push(ContentId::of(b"extra")); }
            _ => {
                // A byte of the payload, changed inside the envelope's
                // encoding so the proof stays as it was.
                let mut bytes = signed[i].to_bytes().expect("encode");
                let original = signed[i].payload_bytes();
                let j = pos.index(original.len());
                let at = bytes.windows(original.len()).position(|w| w == original).expect("payload inside");
                bytes[at + j] = bytes[at + j].wrapping_add(delta);
                match Signed::<Commit>::from_bytes(&bytes) {
                    Err(_) => return Ok(()),
                    Ok(b) => bad = b,
                }
            }
        }
        prop_assert!(bad.verify_in(&mut roots).is_err(), "an altered batch record verified");
        prop_assert!(bad.verify().is_err());
    }

    /// Any single-byte change to a signed manifest's payload is caught by the
    /// signature check, which names the cause.
    #[test]
    fn altered_manifest_payload_is_rejected(m in manifest(), pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let (mut payload, signer, sig) = Signed::sign(&keypair(1), &m).expect("sign").into_parts();
        let i = pos.index(payload.len());
        payload[i] = payload[i].wrapping_add(delta);
        let err = Signed::<ProjectManifest>::from_parts(payload, signer, sig).verify().unwrap_err();
        prop_assert!(matches!(err, VerifyError::BadSignature { .. }), "got {err:?}");
        prop_assert!(err.to_string().contains("signature does not match"));
    }

    /// Any single-byte change to the signature is caught too.
    #[test]
    fn altered_manifest_signature_is_rejected(m in manifest(), pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let (payload, signer, mut sig) = Signed::sign(&keypair(2), &m).expect("sign").into_parts();
        let i = pos.index(sig.len());
        sig[i] = sig[i].wrapping_add(delta);
        let err = Signed::<ProjectManifest>::from_parts(payload, signer, sig).verify().unwrap_err();
        prop_assert!(matches!(err, VerifyError::BadSignature { .. }), "got {err:?}");
    }

    /// A one-byte change anywhere in the stored envelope bytes never yields
    /// the original manifest: it fails to decode, or fails verification, or
    /// (if it hit the signer key) names another signer.
    #[test]
    fn altered_envelope_bytes_never_verify_as_original(m in manifest(), pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let signed = Signed::sign(&keypair(3), &m).expect("sign");
        let mut bytes = signed.to_bytes().expect("encode");
        let i = pos.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        match Signed::<ProjectManifest>::from_bytes(&bytes) {
            Err(_) => {}
            Ok(env) => prop_assert!(env.verify().is_err(), "a tampered envelope verified"),
        }
    }
}

proptest! {
    // The bar for every decoder of untrusted bytes: 10,000 random byte
    // strings each.
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn random_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Gossip::from_bytes(&bytes);
        let _ = GossipBundle::from_bytes(&bytes);
        let _ = Signed::<ProjectManifest>::from_bytes(&bytes);
        let _ = Signed::<Batch>::from_bytes(&bytes);
        let _ = Signed::<Announce>::from_bytes(&bytes);
        let _ = Signed::<Claim>::from_bytes(&bytes);
        let _ = Signed::<Commit>::from_bytes(&bytes);
        let _ = Signed::<Reveal>::from_bytes(&bytes);
        let _ = Signed::<SpotCheckKey>::from_bytes(&bytes);
        let _ = codec::decode_versioned::<ProjectManifest>(&bytes, usize::MAX);
        let _ = codec::decode_versioned::<Batch>(&bytes, usize::MAX);
        let _ = codec::decode::<ContentId>(&bytes, usize::MAX);
    }

    /// Random bytes behind a valid header reach the body decoders, which
    /// plain random bytes rarely do.
    #[test]
    fn random_bodies_behind_valid_header_give_errors(body in proptest::collection::vec(any::<u8>(), 0..512), tag in 0u8..5) {
        let mut bytes = vec![0x82, 0x02, 0xa1];
        let name: &[u8] = match tag { 0 => b"Announce", 1 => b"Claim", 2 => b"Commit", 3 => b"Reveal", _ => b"SpotCheckKey" };
        bytes.push(0x60 + name.len() as u8);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&body);
        if let Ok(g) = Gossip::from_bytes(&bytes) {
            // Astronomically unlikely, but then it must at least be canonical.
            prop_assert_eq!(g.to_bytes().expect("encode"), bytes);
        }
    }
}

#[test]
fn a_valid_gossip_message_with_flipped_bits_is_an_error_not_a_panic() {
    let kp = keypair(9);
    let r = Reveal {
        unit: UnitRef {
            project: ContentId::of(b"p"),
            index: 3,
        },
        result_hash: ContentId::of(b"out"),
        output: Data::Inline(b"out".to_vec()),
        fuel_used: 12345,
        engine: "wasmtime-48.0.8".into(),
        salt: [3; 32],
    };
    let bytes = Gossip::Reveal(Signed::sign(&kp, &r).expect("sign"))
        .to_bytes()
        .expect("encode");
    let mut rejected = 0;
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            match Gossip::from_bytes(&b) {
                Err(_) => rejected += 1,
                Ok(g) => {
                    assert!(g.verify().is_err() || g != Gossip::from_bytes(&bytes).expect("orig"))
                }
            }
        }
    }
    assert!(rejected > 0);
}

#[test]
fn a_bundle_holds_one_record_at_least() {
    let empty = GossipBundle { bundle: Vec::new() }
        .to_bytes()
        .expect("encode");
    assert!(GossipBundle::is_bundle(&empty));
    let err = GossipBundle::from_bytes(&empty).unwrap_err();
    assert!(err.to_string().contains("1 to"), "{err}");
    let too_many = GossipBundle {
        bundle: vec![serde_bytes::ByteBuf::new(); MAX_BUNDLE_RECORDS + 1],
    }
    .to_bytes()
    .expect("encode");
    assert!(GossipBundle::from_bytes(&too_many).is_err());
}

#[test]
fn oversized_gossip_is_refused_before_parsing() {
    let bytes = vec![0u8; MAX_GOSSIP_BYTES + 1];
    assert_eq!(
        Gossip::from_bytes(&bytes),
        Err(DecodeError::TooLarge {
            len: MAX_GOSSIP_BYTES + 1,
            max: MAX_GOSSIP_BYTES
        })
    );
}

#[test]
fn signatures_are_domain_separated() {
    // The same payload bytes signed as a Commit do not verify as a Claim.
    let kp = keypair(5);
    let c = Commit {
        unit: UnitRef {
            project: ContentId::of(b"p"),
            index: 0,
        },
        seal: ContentId::of(b"s"),
    };
    let (payload, signer, sig) = Signed::sign(&kp, &c).expect("sign").into_parts();
    let as_claim = Signed::<Claim>::from_parts(payload, signer, sig);
    assert!(matches!(
        as_claim.verify(),
        Err(VerifyError::BadSignature { .. })
    ));
}
