//! Records the git revision for `ekilibri --version`, and links the
//! `ekilibri` binary with `--wrap=__sys_io_uring_setup` so glommio's rings
//! get the setup flags of `src/uring.rs` (GNU ld and lld both support it).

fn main() {
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EKILIBRI_GIT_REV={rev}");
    // Only the balancer binary: it defines the wrapper (src/main.rs). The
    // test backend and the load generator create plain rings.
    println!("cargo:rustc-link-arg-bin=ekilibri=-Wl,--wrap=__sys_io_uring_setup");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
}
