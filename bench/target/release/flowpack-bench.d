/work/main/bench/target/release/flowpack-bench: /work/main/bench/src/corpus.rs /work/main/bench/src/load.rs /work/main/bench/src/main.rs /work/main/bench/src/report.rs
