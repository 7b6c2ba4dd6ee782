/work/main/bench/target/release/deps/flowpack_bench-c56328a0257885d0.d: src/main.rs src/corpus.rs src/load.rs src/report.rs Cargo.toml

/work/main/bench/target/release/deps/libflowpack_bench-c56328a0257885d0.rmeta: src/main.rs src/corpus.rs src/load.rs src/report.rs Cargo.toml

src/main.rs:
src/corpus.rs:
src/load.rs:
src/report.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# env-dep:CLIPPY_CONF_DIR
