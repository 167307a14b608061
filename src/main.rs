//! The `ekilibri` binary: command line, logging, configuration, runtime.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    ekilibri::runtime::install_panic_hook();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

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
    if args.check {
        println!(
            "ekilibri: {}: ok: {}",
            args.file.display(),
            config.summary()
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
