//! Embeds the eBPF object built by `cargo xtask build-ebpf`, so `tcptrace` is one file.
//!
//! Without the object (a clone built with stable Rust alone), an empty placeholder is
//! embedded instead, as aya-template does: everything builds, replay, exports and every
//! unit test work, and live tracing says at run time what to build first.
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=TCPTRACE_EBPF_OBJECT");
    let object = std::env::var_os("TCPTRACE_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release/tcptrace")
    });
    // Watched even while missing, so that building it later rebuilds tcptrace.
    println!("cargo::rerun-if-changed={}", object.display());
    let embedded = if object.exists() {
        object
    } else {
        println!(
            "cargo::warning=the eBPF object {} is missing: this tcptrace can replay and export \
             but not trace; run `cargo xtask build-ebpf` (or set TCPTRACE_EBPF_OBJECT) to embed it",
            object.display()
        );
        let placeholder = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
            .join("tcptrace-ebpf-missing");
        std::fs::write(&placeholder, b"").expect("write the placeholder object");
        placeholder
    };
    println!("cargo::rustc-env=TCPTRACE_EBPF_OBJECT={}", embedded.display());
}
