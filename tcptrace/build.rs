//! Embeds the eBPF object built by `cargo xtask build-ebpf`, so `tcptrace` is one file.
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=TCPTRACE_EBPF_OBJECT");
    let object = std::env::var_os("TCPTRACE_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release/tcptrace")
    });
    if !object.exists() {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build-ebpf` first \
             (or set TCPTRACE_EBPF_OBJECT)",
            object.display()
        );
    }
    println!("cargo::rerun-if-changed={}", object.display());
    println!("cargo::rustc-env=TCPTRACE_EBPF_OBJECT={}", object.display());
}
