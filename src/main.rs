//! `wrn`: parse the command line, set up logging, dispatch the subcommand.

use std::process::ExitCode;

use clap::Parser;
use wrn::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    wrn::telemetry::init(cli.log_format, &cli.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Classify(args) => wrn::client::run(args).await,
            Command::Bench(args) => wrn::bench::run(args).await,
            Command::Train(args) => wrn::train::run(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: wrn::cli::ServeArgs) -> anyhow::Result<()> {
    let rt = wrn::runtime::load(args.ort_lib.as_deref())?;
    let grpc = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} for gRPC: {e}", args.addr))?;
    let metrics = if args.no_metrics {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(args.metrics_addr)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot listen on {} for metrics: {e}", args.metrics_addr)
                })?,
        )
    };
    wrn::server::run(args, rt, grpc, metrics, wrn::shutdown::signal()).await
}
