//! The `taskmesh` binary: parse the command line, then run a node or a client command.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use taskmesh::cli::{Cli, Command, LogFormat, RunArgs};
use taskmesh::{Config, run};
use tokio_util::sync::CancellationToken;

/// The node's own story at info; openraft's and libp2p's internals only when they fail, so the
/// login link is not lost among them (`TASKMESH_LOG=info` shows everything at info). openraft's
/// replication reports every peer it cannot reach yet while a node joins: those go unless asked
/// for.
const DEFAULT_LOG: &str =
    "info,openraft=error,openraft::replication=off,libp2p=error,libp2p_swarm=error";

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TASKMESH_LOG")
        .unwrap_or_else(|_| DEFAULT_LOG.into());
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => log
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match taskmesh::cli::write_docs(&cli.command, &mut std::io::stdout().lock()) {
        Ok(true) => return ExitCode::SUCCESS,
        Ok(false) => {}
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            return ExitCode::FAILURE;
        }
    }
    init_logging(cli.log_format);
    let runtime = match taskmesh::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run_node(args).await.map(|()| 0),
            other => taskmesh::cli::run_command(other)
                .await
                .map_err(anyhow::Error::from),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_node(args: RunArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if args.name.is_some() {
        config.name = args.name;
    }
    if let Some(addr) = args.p2p_listen {
        config.p2p_listen = addr;
    }
    if args.cluster_key.is_some() {
        anyhow::bail!(
            "--cluster-key is no longer taken: every user of this machine could read the key in \
             /proc/PID/cmdline. Put the key in a file only you can read and pass \
             --cluster-key-file FILE, or set TASKMESH_CLUSTER_KEY"
        );
    }
    if let Some(path) = args.cluster_key_file {
        config.cluster_key_file = Some(path);
    }
    // The key itself, from the environment (never from argv); tasks do not inherit it.
    if let Some(key) = std::env::var("TASKMESH_CLUSTER_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
    {
        config.cluster_key = Some(key);
    }
    if args.no_mdns {
        config.mdns = Some(false);
    }
    config.peers.extend(args.peers);
    config.allowed_hosts.extend(args.allowed_hosts);
    if args.tls {
        config.tls = Some(taskmesh::config::TlsConfig::default());
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(taskmesh::config::TlsConfig {
            cert: Some(cert),
            key: Some(key),
        });
    }
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("signal received; shutting down");
        signals.cancel();
    });
    run(config, shutdown).await.context("running the node")
}
