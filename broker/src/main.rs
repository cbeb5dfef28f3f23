//! The `midge` binary: parses arguments, loads config, installs logging and
//! signal handling, then runs the library's server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use midge::{Config, Server};
use tracing_subscriber::EnvFilter;

/// Midge: an MQTT 3.1.1 / 5.0 broker.
#[derive(Debug, Parser)]
#[command(name = "midge", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker. Without --config: MQTT on 0.0.0.0:1883, MQTT over
    /// WebSocket on 0.0.0.0:8083 at path /mqtt.
    Serve {
        /// TOML configuration file (see examples/midge.toml for every key).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// MQTT/TCP listen address, overriding the config (e.g. 127.0.0.1:1883; port 0 picks one).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// MQTT/WebSocket listen address, overriding the config (e.g. 127.0.0.1:8083).
        #[arg(long, value_name = "ADDR")]
        ws_listen: Option<SocketAddr>,
        /// Disable the WebSocket listener.
        #[arg(long, conflicts_with = "ws_listen")]
        no_ws: bool,
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
    },
    /// Validate a configuration file and exit (non-zero with the errors).
    Check {
        /// TOML configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            listen,
            ws_listen,
            no_ws,
            log_json,
        } => {
            let mut cfg = match config {
                Some(path) => match Config::load(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => Config::default(),
            };
            if let Some(a) = listen {
                cfg.listeners.mqtt = Some(a);
            }
            if let Some(a) = ws_listen {
                cfg.listeners.ws = Some(a);
            }
            if no_ws {
                cfg.listeners.ws = None;
            }
            if log_json {
                cfg.log.json = true;
            }
            init_logging(&cfg);
            match serve(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if cfg.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = Server::bind(cfg).await?;
        // Printed for scripts that pass port 0.
        if let Some(a) = server.mqtt_addr() {
            println!("midge: mqtt listening on {a}");
        }
        if let Some(a) = server.ws_addr() {
            println!("midge: websocket listening on {a}");
        }
        server.run(shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
