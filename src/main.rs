//! The `tokend` binary: parse the command line, run it, exit with a status a
//! supervisor can trust (0 on a clean stop, 1 with a one-line reason otherwise).

use clap::Parser;
use tokend::cli::{Cli, Command, init_logging};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
    };
    if let Err(e) = result {
        eprintln!("tokend: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: tokend::cli::ServeArgs) -> Result<(), tokend::error::Error> {
    let running = tokend::server::start(args.config()).await?;
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
