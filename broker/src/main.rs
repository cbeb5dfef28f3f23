//! The `midge` binary: parses arguments, loads config, installs logging and
//! signal handling, then runs the library's server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use midge::{App, Config};

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
    /// WebSocket on 0.0.0.0:8083 at paths /mqtt and /.
    Serve {
        /// TOML configuration file (see examples/midge.toml for every key).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// MQTT/TCP listen address, overriding the config (e.g. 127.0.0.1:1883 or
        /// localhost:1883; port 0 picks one).
        #[arg(long, value_name = "ADDR", value_parser = midge::config::resolve_listen)]
        listen: Option<SocketAddr>,
        /// MQTT/WebSocket listen address, overriding the config (e.g. 127.0.0.1:8083).
        #[arg(long, value_name = "ADDR", value_parser = midge::config::resolve_listen)]
        ws_listen: Option<SocketAddr>,
        /// Disable the WebSocket listener.
        #[arg(long, conflicts_with = "ws_listen")]
        no_ws: bool,
        /// Admin HTTP API (and /metrics) listen address, overriding `[admin] listen`
        /// (default 127.0.0.1:18083; port 0 picks one).
        #[arg(long, value_name = "ADDR", value_parser = midge::config::resolve_listen)]
        admin_listen: Option<SocketAddr>,
        /// Disable the admin HTTP API.
        #[arg(long, conflicts_with = "admin_listen")]
        no_admin: bool,
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
        /// Turn persistence on (durable sessions and retained messages), as
        /// `[persistence] enabled = true` does.
        #[arg(long)]
        persist: bool,
        /// Directory of the embedded (sled) store, overriding `persistence.data_dir` (default ./data).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// This node's name in the cluster, overriding `[cluster] node`.
        #[arg(long, value_name = "NAME")]
        node_name: Option<String>,
        /// NATS servers of the cluster (comma-separated URLs); turns `[cluster]` on.
        #[arg(long, value_name = "URL,...", value_delimiter = ',')]
        cluster_nats: Option<Vec<String>>,
    },
    /// Rules: `midge rule test` runs a rule's SQL against a sample message or event.
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// Inspect the durable store without running the broker: `check` decodes
    /// every record (exit 1 if any is corrupt), `export` prints every record
    /// as a JSON line, `repair` deletes records that do not decode (the broker
    /// refuses to start over them). Stop the broker first.
    Store {
        #[arg(value_enum)]
        action: StoreAction,
        /// Configuration file whose [persistence] section names the store.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// sled store directory (overrides the config's persistence.data_dir).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Write or update a password file for the auth-password plugin, as
    /// Mosquitto's mosquitto_passwd does (-c create, -b batch, -D delete).
    Passwd(midge::passwd::Args),
    /// Plugin authors' tools, no broker needed: `new` writes a project,
    /// `run` hands a plugin one input, `test` runs a file of cases.
    Plugin {
        #[command(subcommand)]
        command: midge::cli::plugin::Command,
    },
    /// Validate a configuration file and exit (non-zero with the errors):
    /// its settings, rules, TLS files, and each plugin loaded with its
    /// `init` run on its config (sandboxed).
    Check {
        /// TOML configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StoreAction {
    Check,
    Export,
    Repair,
}

#[derive(Debug, Subcommand)]
enum RuleCommand {
    /// Print the rows a rule outputs for one sample message (or event), as
    /// JSON, or "no match".
    ///
    /// Example: midge rule test --sql 'SELECT payload.t AS t FROM "s/#" WHERE t > 3' --topic s/1 --payload '{"t":5}'
    Test {
        /// The rule's SQL.
        #[arg(long)]
        sql: String,
        /// Topic of the sample message.
        #[arg(long, default_value = "t/1")]
        topic: String,
        /// Payload of the sample message.
        #[arg(long, default_value = "")]
        payload: String,
        #[arg(long, default_value = "c_test")]
        clientid: String,
        #[arg(long)]
        username: Option<String>,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long)]
        retain: bool,
        #[arg(long, default_value = "127.0.0.1")]
        peerhost: String,
        /// Evaluate against this event instead of a message, e.g. client_connected.
        #[arg(long, value_name = "NAME")]
        event: Option<String>,
        /// Extra input field as key=JSON (e.g. reason='"normal"'); repeatable.
        #[arg(long = "field", value_name = "KEY=JSON")]
        fields: Vec<String>,
        /// Load this configuration's plugins (sandboxed) so the rule can
        /// call their functions, as the running broker's rules do.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn rule_test(cmd: RuleCommand) -> ExitCode {
    let RuleCommand::Test {
        sql,
        topic,
        payload,
        clientid,
        username,
        qos,
        retain,
        peerhost,
        event,
        fields,
        config,
    } = cmd;
    let mut extra = serde_json::Map::new();
    for f in &fields {
        let Some((k, v)) = f.split_once('=') else {
            eprintln!("error: --field `{f}`: expected KEY=JSON");
            return ExitCode::FAILURE;
        };
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        extra.insert(k.to_string(), value);
    }
    let sample = midge::rules::sample::Sample {
        topic,
        payload,
        clientid,
        username,
        qos,
        retain,
        peerhost,
        event,
        fields: extra,
    };
    match midge::cli::rule_test(&sql, &sample, config.as_deref()) {
        Ok(rows) if rows.is_empty() => {
            println!("no match");
            ExitCode::SUCCESS
        }
        Ok(rows) => {
            match serde_json::to_string_pretty(&rows) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Rule { command } => rule_test(command),
        Command::Plugin { command } => midge::cli::plugin::main(command),
        Command::Store {
            action,
            config,
            data_dir,
        } => {
            let mut p = match &config {
                Some(path) => match Config::load(path) {
                    Ok(c) => c.persistence,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => midge::store::PersistenceConfig::default(),
            };
            if let Some(d) = data_dir {
                p.data_dir = d;
            }
            use midge::store::tools::{self, Action};
            let action = match action {
                StoreAction::Check => Action::Check,
                StoreAction::Export => Action::Export,
                StoreAction::Repair => Action::Repair,
            };
            let out = &mut std::io::stdout().lock();
            match tools::run(&p, action, out, &mut std::io::stderr()) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(_) if action == Action::Repair => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => check(&config),
        Command::Passwd(args) => midge::passwd::run(args),
        Command::Serve {
            config,
            listen,
            ws_listen,
            no_ws,
            admin_listen,
            no_admin,
            log_json,
            persist,
            data_dir,
            node_name,
            cluster_nats,
        } => {
            let mut cfg = match &config {
                Some(path) => match Config::load(path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => Config::default(),
            };
            let overrides = midge::config::Overrides {
                listen,
                ws_listen,
                no_ws,
                admin_listen,
                no_admin,
                log_json,
                persist,
                data_dir,
                node_name,
                cluster_nats,
            };
            overrides.apply(&mut cfg);
            // The flags are checked as the file's fields are.
            if let Err(e) = cfg.validate("command line") {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            // Reloads of the file apply them again, so a flag is not
            // reported as a changed setting.
            overrides.install();
            init_logging(&cfg);
            match serve(cfg, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", midge::logging::chain(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `midge check`: every problem in the file, its rules and its plugins
/// (see `midge::check`).
fn check(path: &std::path::Path) -> ExitCode {
    let shown = path.display();
    let errors = midge::check::problems(path);
    if errors.is_empty() {
        println!("{shown}: ok");
        return ExitCode::SUCCESS;
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    eprintln!("{shown}: {} error(s)", errors.len());
    ExitCode::FAILURE
}

fn init_logging(cfg: &Config) {
    midge::logging::init(&cfg.log);
}

fn serve(cfg: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut server = App::bind(cfg.clone()).await.map_err(|e| match &path {
            // Errors about the file's settings name the file, as `check` does.
            Some(p) if e.is_config_error() => anyhow::anyhow!("{}: {e}", p.display()),
            _ => e.into(),
        })?;
        // Both signal handlers are installed before the "listening" lines:
        // a script that signals as soon as it reads them reaches the
        // handlers, not the default action (which ends the process).
        let shutdown = shutdown_signal();
        if let Some(path) = path {
            server = server.with_config_path(path.clone());
            tokio::spawn(midge::reload::watch(server.broker(), path, cfg));
        }
        // Printed for scripts that pass port 0.
        if let Some(a) = server.mqtt_addr() {
            println!("midge: mqtt listening on {a}");
        }
        if let Some(a) = server.ws_addr() {
            println!("midge: websocket listening on {a}");
        }
        if let Some(a) = server.mqtts_addr() {
            println!("midge: mqtts listening on {a}");
        }
        if let Some(a) = server.wss_addr() {
            println!("midge: wss listening on {a}");
        }
        if server.admin_token_generated() {
            if let Some(t) = server.admin_token() {
                // Neither [admin] token nor MIDGE_ADMIN_TOKEN: the only way to learn it.
                println!("midge: admin token {t}");
                tracing::warn!(
                    "the admin API token was generated for this run only (printed on stdout); \
                     set `[admin] token` in the config file or the MIDGE_ADMIN_TOKEN \
                     environment variable to keep one across restarts"
                );
            }
        }
        // Last: a script that reads up to this line has seen the token.
        if let Some(a) = server.admin_addr() {
            println!("midge: admin listening on {a}");
        }
        server.run(shutdown).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C. The SIGTERM handler is installed by this
/// call (see `serve`), not when the future first runs.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        match term {
            Some(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
