/work/main/bench/target/release/deps/flowpack_bench-fcf5d910a7281710.d: src/main.rs src/corpus.rs src/load.rs src/report.rs

/work/main/bench/target/release/deps/flowpack_bench-fcf5d910a7281710: src/main.rs src/corpus.rs src/load.rs src/report.rs

src/main.rs:
src/corpus.rs:
src/load.rs:
src/report.rs:
