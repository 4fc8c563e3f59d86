//! The `tokend` binary: parse the command line, run it, exit with a status a
//! supervisor or script can trust (see `console::exit` for the client codes;
//! `serve` exits 0 on a clean stop, 1 with a one-line reason otherwise).

use clap::Parser;
use tracing::Instrument;

use tokend::cli::{Cli, Command, LogFormat};
use tokend::console;
use tokend::traces::{self, Otlp};

/// mimalloc rather than glibc's malloc: see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (service, cli_span) = match &cli.command {
        Command::Serve(_) => ("tokend", "tokend serve"),
        Command::Accounts { .. } => ("tokend-cli", "tokend accounts"),
        Command::Tokens { .. } => ("tokend-cli", "tokend tokens"),
        Command::Snapshot { .. } => ("tokend-cli", "tokend snapshot"),
    };
    let otlp = cli.otlp_endpoint.as_deref().map(|endpoint| Otlp {
        endpoint,
        default_service: service,
    });
    let tracing = match traces::init(cli.log_format == LogFormat::Json, otlp) {
        Ok(tracing) => tracing,
        Err(e) => {
            eprintln!("tokend: {e}");
            std::process::exit(2);
        }
    };
    // Test builds only: crash points named in $FAILPOINTS (tests/crash.rs).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let code = match cli.command {
        Command::Serve(args) => match serve(args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tokend: {e}");
                1
            }
        },
        // A client command is one trace: its calls carry the context
        // (`client::Bearer`), so tokend's spans are its children.
        Command::Accounts { client, command } => {
            console::run_accounts(client, command)
                .instrument(tracing::info_span!(
                    "cli",
                    otel.name = cli_span,
                    otel.kind = "client"
                ))
                .await
        }
        Command::Tokens { client, command } => {
            console::run_tokens(client, command)
                .instrument(tracing::info_span!(
                    "cli",
                    otel.name = cli_span,
                    otel.kind = "client"
                ))
                .await
        }
        Command::Snapshot { command } => console::run_snapshot(command).await,
    };
    // `exit` runs no destructors: flush the spans not yet exported first.
    drop(tracing);
    std::process::exit(code);
}

async fn serve(args: tokend::cli::ServeArgs) -> Result<(), tokend::error::Error> {
    // Connections are limited by --max-connections, not by the kernel's
    // default of 1,024 open files per process.
    match tokend::listener::raise_file_limit() {
        Ok(limit) => tracing::info!(limit, "open files allowed"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let running = tokend::server::start(args.config()?).await?;
    let stop = running_shutdown_signal();
    tokio::pin!(stop);
    stop.await;
    running.stop().await
}

/// Resolves on SIGINT or SIGTERM.
async fn running_shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
