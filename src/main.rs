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
    // A client command is one trace (its calls carry the context, see
    // `client::Bearer`, so tokend's spans are its children); a server's
    // traces are its calls'.
    let (service, client_command) = match &cli.command {
        Command::Serve(_) => ("tokend", None),
        Command::Accounts { .. } => ("tokend-cli", Some("tokend accounts")),
        Command::Tokens { .. } => ("tokend-cli", Some("tokend tokens")),
        Command::Snapshot { .. } | Command::Compact { .. } => ("tokend-cli", None),
    };
    let json = cli.log_format == LogFormat::Json;
    let endpoint = traces::configured_endpoint(cli.otlp_endpoint.clone());
    let otlp = |endpoint| Otlp {
        endpoint,
        default_service: service,
    };
    let flush_traces = match (
        traces::init(json, endpoint.as_ref().map(|(e, _)| otlp(e))),
        endpoint,
    ) {
        (Ok(flush), _) => flush,
        // The environment often names a collector for a whole pod; one
        // tokend cannot use must not keep it from starting.
        (Err(e), Some((_, true))) => {
            eprintln!("tokend: OTEL_EXPORTER_OTLP_ENDPOINT ignored, traces off: {e}");
            traces::init(json, None).unwrap_or_else(|e| exit_with(&e))
        }
        (Err(e), _) => exit_with(&e),
    };
    // Test builds only: crash points named in $FAILPOINTS (tests/crash.rs).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let client_span = client_command.map_or_else(tracing::Span::none, |name| {
        tracing::info_span!("cli", otel.name = name, otel.kind = "internal")
    });
    let code = match cli.command {
        Command::Serve(args) => match serve(args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tokend: {e}");
                1
            }
        },
        Command::Accounts { client, command } => {
            console::run_accounts(client, command)
                .instrument(client_span)
                .await
        }
        Command::Tokens { client, command } => {
            console::run_tokens(client, command)
                .instrument(client_span)
                .await
        }
        Command::Snapshot { command } => console::run_snapshot(command).await,
        Command::Compact { data_dir } => console::run_compact(data_dir).await,
    };
    // `exit` runs no destructors: flush the spans not yet exported first.
    drop(flush_traces);
    std::process::exit(code);
}

/// A start-up refusal: one line, exit status 2.
fn exit_with(e: &tokend::error::Error) -> ! {
    eprintln!("tokend: {e}");
    std::process::exit(2);
}

async fn serve(args: tokend::cli::ServeArgs) -> Result<(), tokend::error::Error> {
    // Connections are limited by --max-connections, not by the kernel's
    // default of 1,024 open files per process.
    match tokend::listener::raise_file_limit() {
        Ok(limit) => tracing::info!(limit, "open files allowed"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    // The handlers go in before the server binds: a supervisor (or a test)
    // that sees the port open and sends SIGTERM at once must get a clean
    // stop, not the default action of a signal nobody handles yet.
    let stop = tokend::cli::stop_signal().expect("installing the SIGINT and SIGTERM handlers");
    let running = tokend::server::start(args.config()?).await?;
    release_freed_memory();
    stop.await;
    running.stop().await
}

/// Gives the system back the memory start-up used and freed. Opening a
/// store reads every record through sled, whose pages are let go once the
/// state is built (`store/sled/open.rs`); mimalloc returns freed pages only as
/// later allocations pass by them, which an idle server may not do for
/// hours. Measured on 200,000 live tokens: 270 MB resident after this,
/// 400 MB in some starts without it.
fn release_freed_memory() {
    // SAFETY: no arguments to uphold; mimalloc's collection is safe to
    // run on any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
