//! Replays every committed fuzz input (`fuzz/corpus/TARGET/`: seeds, inputs the fuzzer
//! found interesting, and crashes turned regression tests) through the loaders: none
//! may panic. The seeds that are valid inputs must still be accepted.

use std::path::Path;

use approx_models::untrusted::TARGETS;

#[test]
fn every_corpus_input_is_handled_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: empty corpus");
        let mut accepted_seeds = 0;
        for path in &inputs {
            let bytes = std::fs::read(path).unwrap();
            let ok = target(&bytes);
            let file = path.file_name().unwrap().to_string_lossy();
            if file.starts_with("seed-") && ok {
                accepted_seeds += 1;
            }
        }
        let must_accept = !matches!(name, "lut_table" | "safetensors_model");
        assert!(
            !must_accept || accepted_seeds > 0,
            "{name}: no seed input is accepted any more"
        );
    }
}
