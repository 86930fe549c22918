//! The `smtptap` binary: parse flags, set up logging, run, map errors to exit codes.

use clap::Parser;
use smtptap::cli::{CaCmd, Cli, Cmd};
use smtptap::tls::ca::LocalCa;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "smtptap=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match runtime_for(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smtptap: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Cmd::Show(args) => return report_exit(smtptap::show::run(&args)),
        Cmd::Check(args) => return report_exit(smtptap::check::run(&args)),
        Cmd::Replay(args) => return ExitCode::from(runtime.block_on(smtptap::replay::run(args))),
        Cmd::Serve(args) => match runtime.block_on(async { smtptap::shutdown::signal() }) {
            Ok(shutdown) => return ExitCode::from(runtime.block_on(smtptap::serve::run(args, shutdown))),
            Err(e) => Err(format!("cannot handle SIGINT and SIGTERM: {e}")),
        },
        Cmd::Sink(args) => return ExitCode::from(runtime.block_on(smtptap::server::sink::run(args))),
        Cmd::Proxy(args) => {
            let live_check = args.check.then(|| smtptap::check::live::LiveCheck::spawn(args.record_dir.clone()));
            let result = match runtime.block_on(async { smtptap::shutdown::signal() }) {
                Ok(shutdown) => {
                    runtime.block_on(smtptap::relay::run(args.resolve(), shutdown)).map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("cannot handle SIGINT and SIGTERM: {e}")),
            };
            if let Some(live_check) = live_check {
                live_check.finish();
            }
            result
        }
        Cmd::Ca(CaCmd::Init(args)) => LocalCa::load_or_create(&args.ca_dir)
            .map(|(ca, created)| {
                let verb = if created { "created" } else { "already exists:" };
                println!("{verb} {} (SHA-256 {})", ca.cert_path().display(), ca.fingerprint());
            })
            .map_err(|e| e.to_string()),
        Cmd::Ca(CaCmd::Show(args)) => LocalCa::load_or_create(&args.ca_dir)
            .map(|(ca, _)| print!("{}", smtptap::tls::instructions::describe(&ca)))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("smtptap: {message}");
            ExitCode::from(2)
        }
    }
}

/// The async runtime. `replay` runs on one thread, as a load generator
/// should: measured against smtp-source (scripts/bench-replay) it made more
/// sessions/s with less CPU than on the multi-threaded runtime, whose
/// cross-thread wake-ups cost more than a second core gains a client. The
/// proxy and the servers use every core.
fn runtime_for(command: &Cmd) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        Cmd::Replay(_) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Runtime::new(),
    }
}

/// The exit code of a command that reports on standard output: its own, or
/// 0 when the reader went away (`| head`), or 2 when output failed.
fn report_exit(result: std::io::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtptap: cannot write the output: {e}");
            ExitCode::from(2)
        }
    }
}
