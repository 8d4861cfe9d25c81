//! Replays every committed corpus file through the harness of its target, so
//! a plain `cargo test` (stable, no cargo-fuzz) covers the corpus.
//!
//! `cargo test -- --ignored generate_seeds` regenerates the byte-encoded seeds
//! of `config` and `core_ops` (see `generate_seeds`).

use std::collections::BTreeSet;
use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use foreman_tests::rng::Rng;

type Harness = fn(&[u8]);

const TARGETS: [(&str, Harness); 3] = [
    ("protocol", foreman_fuzz::protocol),
    ("config", foreman_fuzz::config),
    ("core_ops", foreman_fuzz::core_ops),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus/{target}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_passes_its_harness() {
    let mut failed = Vec::new();
    for (target, harness) in TARGETS {
        let files = corpus_files(target);
        assert!(!files.is_empty(), "corpus/{target} is empty");
        for file in files {
            let data = fs::read(&file).expect("readable corpus file");
            if panic::catch_unwind(|| harness(&data)).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "corpus files that fail: {failed:#?}");
}

#[test]
fn serde_json_refuses_deep_nesting_with_an_error() {
    // At and far past the recursion limit (serde_json allows 127 levels):
    // an error, not a stack overflow.
    for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
        for depth in [128, 1_000, 100_000] {
            let text = format!("{}null{}", open.repeat(depth), close.repeat(depth));
            let error = serde_json::from_str::<serde_json::Value>(&text).unwrap_err();
            assert!(
                error.to_string().contains("recursion limit exceeded"),
                "{error}"
            );
            foreman_fuzz::protocol(text.as_bytes());
        }
    }
    // Just below the limit it parses.
    let text = format!("{}{}", "[".repeat(127), "]".repeat(127));
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
    assert_eq!(foreman_fuzz::json_depth(text.as_bytes()), 127);
    // Inside a request the request and its operation count too.
    let request = |depth: usize| {
        format!(
            r#"{{"request_id":"r","workflow_name":"w","node_id":"n","timeout_ms":null,"operation":{{"kind":"tool","tool":"t","input":{}{},"scoped_input":null}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    let error = serde_json::from_str::<foreman_core::WorkerRequest>(&request(200)).unwrap_err();
    assert!(
        error.to_string().contains("recursion limit exceeded"),
        "{error}"
    );
    assert!(serde_json::from_str::<foreman_core::WorkerRequest>(&request(100)).is_ok());
}

#[test]
fn oversized_input_is_skipped_not_parsed() {
    let mut huge = vec![b'['; foreman_fuzz::MAX_PROTOCOL_INPUT + 1];
    huge[0] = b'"';
    foreman_fuzz::protocol(&huge);
}

/// `len` bytes from the shared seeded generator.
fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn bucket(n: u64) -> u32 {
    64 - n.leading_zeros()
}

/// Writes seeds for the byte-encoded targets: random inputs from a fixed
/// seed, of which the first to reach each distinct outcome (each config
/// error; accepted/started/answered/refused counts by powers of two) is kept.
/// Run after changing how `config` or `core_ops` decode their bytes:
/// `cargo test --test replay -- --ignored generate_seeds`.
#[test]
#[ignore = "rewrites corpus files; run by hand"]
fn generate_seeds() {
    let mut rng = Rng::new(0x666f_7265_6d61_6e21);
    for (target, limit, len) in [("config", 24, 96usize), ("core_ops", 24, 512)] {
        let dir = corpus_dir(target);
        for old in fs::read_dir(&dir).expect("corpus dir") {
            let old = old.expect("entry").path();
            if old
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gen-"))
            {
                fs::remove_file(old).expect("remove old seed");
            }
        }
        let mut seen = BTreeSet::new();
        for _ in 0..20_000 {
            if seen.len() >= limit {
                break;
            }
            let size = 1 + (rng.below(len as u64) as usize);
            let data = random_bytes(&mut rng, size);
            let signature = match target {
                "config" => match foreman_fuzz::config_outcome(&data) {
                    Err(error) => format!("{error:?}")
                        .split([' ', '{'])
                        .next()
                        .unwrap_or("")
                        .to_string(),
                    Ok(o) => format!(
                        "ok-a{}-s{}-n{}-r{}-w{}",
                        bucket(o.accepted).min(2),
                        bucket(o.started).min(2),
                        bucket(o.answered).min(2),
                        bucket(o.refused).min(1),
                        o.workers.min(2)
                    ),
                },
                _ => {
                    let o = foreman_fuzz::core_ops_outcome(&data);
                    format!(
                        "a{}-s{}-n{}-r{}-w{}",
                        bucket(o.accepted),
                        bucket(o.started),
                        bucket(o.answered),
                        bucket(o.refused).min(2),
                        bucket(o.workers)
                    )
                }
            };
            if seen.insert(signature.clone()) {
                fs::write(dir.join(format!("gen-{signature}")), &data).expect("write seed");
            }
        }
    }
}

/// Regression for the core bug the `config` target found (see
/// `foreman_fuzz::END_OF_TIME`): `handle_timeout(Time::MAX)` on a pool with a
/// worker used to never return, because the probe timeout saturated to `now`
/// and probe / timeout / re-probe fired in a loop, each pushing an action.
/// Fuzz input (21 bytes, minimised with `cargo fuzz tmin`):
/// `corpus/config/end-of-time-probe-livelock`.
#[test]
fn core_survives_the_end_of_time() {
    use foreman_core::{Pool, PoolConfig, Time};
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut pool: Pool<u64> = Pool::new(PoolConfig::default(), Time::ZERO).expect("valid");
        pool.add_worker(Time::ZERO).expect("worker");
        pool.handle_timeout(Time::MAX);
        let mut actions = 0usize;
        while pool.poll_action().is_some() {
            actions += 1;
        }
        let _ = done_tx.send(actions);
    });
    let actions = done_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("handle_timeout(Time::MAX) did not return within 5 s");
    assert!(actions < 10, "{actions} actions from one handle_timeout");
}
