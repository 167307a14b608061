//! The `ekilibri` binary: command line, logging, configuration, runtime.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

/// A thread-per-core io_uring HTTP/1.1 load balancer.
#[derive(Debug, Parser)]
#[command(name = "ekilibri", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("EKILIBRI_GIT_REV"), ")"))]
struct Args {
    /// Configuration file.
    #[arg(short = 'f', long = "file", default_value = "ekilibri.toml")]
    file: PathBuf,
    /// Validate the configuration and check the host (kernel, io_uring,
    /// limits, CPUs), print a one-line summary and exit (status 0 when
    /// valid, 2 when not).
    #[arg(long)]
    check: bool,
    /// Number of request workers (overrides `workers` in the file).
    #[arg(long)]
    workers: Option<usize>,
    /// Print the completion script for SHELL and exit (packaging installs
    /// what this very parser generates; kept out of --help).
    #[arg(long, value_name = "SHELL", hide = true)]
    completions: Option<clap_complete::Shell>,
}

/// The log filter: `RUST_LOG` when set and valid, else `info`, with the
/// reason it was not used (a typo must not silently change what is logged).
fn log_filter() -> (EnvFilter, Option<String>) {
    let Some(raw) = std::env::var_os("RUST_LOG") else {
        return (EnvFilter::new("info"), None);
    };
    let why = match raw.to_str().map(EnvFilter::try_new) {
        Some(Ok(filter)) => return (filter, None),
        Some(Err(e)) => format!("RUST_LOG `{}` does not parse ({e})", raw.to_string_lossy()),
        None => format!("RUST_LOG `{}` is not UTF-8", raw.to_string_lossy()),
    };
    (EnvFilter::new("info"), Some(why))
}

unsafe extern "C" {
    /// liburing's own `__sys_io_uring_setup` (GNU ld `--wrap`, see build.rs).
    fn __real___sys_io_uring_setup(entries: u32, params: *mut std::ffi::c_void) -> i32;
}

/// Where glommio's ring setup lands (`--wrap=__sys_io_uring_setup`): adds
/// the configured setup flags ([`ekilibri::uring`]).
///
/// # Safety
/// Called by liburing with its own valid arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __wrap___sys_io_uring_setup(
    entries: u32,
    params: *mut std::ffi::c_void,
) -> i32 {
    // SAFETY: liburing's arguments, passed on; the real call is liburing's.
    unsafe { ekilibri::uring::setup(entries, params, __real___sys_io_uring_setup) }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(shell) = args.completions {
        clap_complete::generate(
            shell,
            &mut Args::command(),
            "ekilibri",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    ekilibri::runtime::install_panic_hook();
    let (filter, bad_filter) = log_filter();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some(why) = bad_filter {
        tracing::warn!("{why}; logging at `info` instead");
    }

    let mut config = match ekilibri::config::load(&args.file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ekilibri: error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(n) = args.workers {
        if n == 0 || n > 1024 {
            eprintln!("ekilibri: error: --workers {n} is out of range 1..=1024");
            return ExitCode::from(2);
        }
        config.workers = n;
    }
    // Host checks (kernel, io_uring, rlimits, CPUs): errors refuse to start.
    let env = ekilibri::envcheck::check(&config);
    for w in &env.warnings {
        if args.check {
            eprintln!("ekilibri: warning: {w}");
        } else {
            tracing::warn!("{w}");
        }
    }
    for e in &env.errors {
        eprintln!("ekilibri: error: {e}");
    }
    if !env.is_ok() {
        return ExitCode::from(2);
    }
    // io_uring setup flags the kernel refuses are dropped ring by ring at
    // start; say so up front.
    let ring_flags = ekilibri::uring::supported(config.ring_setup_flags);
    if ring_flags != config.ring_setup_flags {
        let msg = format!(
            "this kernel does not accept io_uring setup flag(s) {}: rings are created without them",
            ekilibri::uring::describe(config.ring_setup_flags & !ring_flags)
        );
        if args.check {
            eprintln!("ekilibri: warning: {msg}");
        } else {
            tracing::warn!("{msg}");
        }
    }
    if args.check {
        println!(
            "ekilibri: {}: ok: {}; io_uring setup flags {}",
            args.file.display(),
            config.summary(),
            ekilibri::uring::describe(ring_flags)
        );
        return ExitCode::SUCCESS;
    }
    match ekilibri::runtime::run(config, &args.file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ekilibri: error: {e}");
            ExitCode::from(1)
        }
    }
}
