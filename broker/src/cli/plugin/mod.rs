//! `midge plugin`: the plugin author's tools, no broker needed.
//!
//! - `new NAME`: a project that builds as written, outside this repository
//!   ([`template`]);
//! - `run WASM INPUT`: one hook call (a PUBLISH, a CONNECT, an authorize, a
//!   rule's rows, a function call) with a config; prints the manifest, the
//!   plugin's log records, what it published, its answer and the time
//!   ([`harness`]);
//! - `test [FILE]`: the cases of a test file ([`cases`]).

pub mod cases;
pub mod harness;
pub mod template;

use std::path::PathBuf;
use std::process::ExitCode;

use midge_plugin::{Grants, Limits, OutputLimits, PluginConfig};

use harness::{
    level_name, AuthorizeInput, ConnectInput, FunctionInput, Harness, Input, PublishInput,
    RuleOutputInput,
};

/// `midge plugin ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write a new plugin project (Cargo.toml, src/lib.rs, test cases,
    /// README) into ./NAME or --dir.
    ///
    /// Example: midge plugin new my-filter && cd my-filter && cargo build --release && midge plugin test
    New {
        /// The plugin's (crate's) name.
        name: String,
        /// Directory to create (default ./NAME).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Depend on the SDK at this path (e.g. a checkout's sdk/) instead
        /// of writing the SDK built into this binary into the project
        /// (./NAME/midge-sdk, the default).
        #[arg(long, value_name = "DIR", conflicts_with = "sdk_version")]
        sdk_path: Option<PathBuf>,
        /// Depend on this crates.io release of midge-sdk (e.g. 0.1) instead
        /// of the bundled SDK.
        #[arg(long, value_name = "VERSION")]
        sdk_version: Option<String>,
    },
    /// Hand a plugin one input and print what it does: its answer, log
    /// records, messages it published, and the time taken.
    ///
    /// Example: midge plugin run shout.wasm --config '{"filter":"text/#"}' publish text/a --payload hi
    Run(RunArgs),
    /// Run the cases of a test file (default ./midge-test.toml); exit 1 if
    /// any fails.
    Test {
        /// The test file.
        #[arg(default_value = "midge-test.toml")]
        file: PathBuf,
    },
}

/// `midge plugin run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The plugin component (.wasm).
    wasm: PathBuf,
    /// The plugin's config, as JSON (its `config` table in the broker's TOML).
    #[arg(long, default_value = "{}")]
    config: String,
    /// Topic filters the plugin may publish to (its `grants.publish`); repeatable.
    #[arg(long = "grant-publish", value_name = "FILTER")]
    grant_publish: Vec<String>,
    /// A kv namespace to grant (a temporary store).
    #[arg(long = "grant-kv", value_name = "NAMESPACE")]
    grant_kv: Option<String>,
    /// Deadline per call, in milliseconds.
    #[arg(long, default_value_t = Limits::default().deadline_ms)]
    deadline_ms: u64,
    /// The broker's max_packet_size to check output against.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_packet_size: u32,
    #[command(subcommand)]
    input: RunInput,
}

/// What `midge plugin run` hands the plugin.
#[derive(Debug, clap::Subcommand)]
pub enum RunInput {
    /// A PUBLISH, through on-publish.
    Publish {
        topic: String,
        #[arg(long, default_value = "")]
        payload: String,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long)]
        retain: bool,
        #[arg(long, default_value = "c_test")]
        client_id: String,
        #[arg(long)]
        username: Option<String>,
        /// MQTT 5.0 content type.
        #[arg(long)]
        content_type: Option<String>,
    },
    /// A CONNECT, through authenticate.
    Connect {
        #[arg(long, default_value = "c_test")]
        client_id: String,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        password: Option<String>,
        /// MQTT 5.0 authentication method (enhanced authentication).
        #[arg(long)]
        auth_method: Option<String>,
        #[arg(long)]
        auth_data: Option<String>,
    },
    /// A publish or subscribe, through authorize.
    Authorize {
        /// publish or subscribe.
        action: String,
        topic: String,
        #[arg(long, default_value = "c_test")]
        client_id: String,
        #[arg(long)]
        username: Option<String>,
    },
    /// A rule's rows (a JSON array of objects), through on-rule-output.
    RuleOutput { rule: String, rows: String },
    /// A rule function call; each argument is JSON.
    Function { name: String, args: Vec<String> },
}

impl RunInput {
    fn into_input(self) -> Result<Input, String> {
        Ok(match self {
            RunInput::Publish {
                topic,
                payload,
                qos,
                retain,
                client_id,
                username,
                content_type,
            } => Input::Publish(PublishInput {
                topic,
                payload,
                qos,
                retain,
                content_type,
                payload_is_utf8: false,
                user_properties: Vec::new(),
                client_id,
                username,
            }),
            RunInput::Connect {
                client_id,
                username,
                password,
                auth_method,
                auth_data,
            } => Input::Connect(ConnectInput {
                client_id,
                username,
                password,
                auth_method,
                auth_data,
                protocol: 5,
            }),
            RunInput::Authorize {
                action,
                topic,
                client_id,
                username,
            } => Input::Authorize(AuthorizeInput {
                action,
                topic,
                qos: 0,
                client_id,
                username,
            }),
            RunInput::RuleOutput { rule, rows } => Input::RuleOutput(RuleOutputInput {
                rule,
                rows: serde_json::from_str(&rows).map_err(|e| format!("rows: not JSON: {e}"))?,
            }),
            RunInput::Function { name, args } => Input::Function(FunctionInput {
                name,
                args: args
                    .iter()
                    .map(|a| {
                        serde_json::from_str(a).map_err(|e| {
                            format!("argument {a:?}: not JSON ({e}); quote strings: '\"text\"'")
                        })
                    })
                    .collect::<Result<_, _>>()?,
            }),
        })
    }
}

/// Runs `midge plugin ...`.
pub fn main(cmd: Command) -> ExitCode {
    match cmd {
        Command::New {
            name,
            dir,
            sdk_path,
            sdk_version,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = match (sdk_path, sdk_version) {
                (Some(p), _) => template::Sdk::Path(p),
                (None, Some(v)) => template::Sdk::Version(v),
                (None, None) => template::Sdk::Bundled,
            };
            match template::write(&name, &dir, &sdk) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    println!(
                        "next: cd {} && cargo build --release && midge plugin test",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => block_on(run(args)),
        Command::Test { file } => block_on(async move {
            let mut out = std::io::stdout();
            match cases::run(&file, &mut out).await {
                Ok((_, 0)) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

fn block_on(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let config: serde_json::Value = match serde_json::from_str(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --config: not JSON: {e}");
            return ExitCode::FAILURE;
        }
    };
    let input = match args.input.into_input() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = args
        .wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let mut plugin = PluginConfig::new(name, args.wasm.clone());
    plugin.config = config;
    plugin.grants = Grants {
        publish: args.grant_publish,
        kv: args.grant_kv,
        ..Grants::default()
    };
    plugin.limits.deadline_ms = args.deadline_ms;
    let limits = OutputLimits {
        max_packet_size: args.max_packet_size,
        max_function_result: args.max_packet_size as usize,
        ..OutputLimits::default()
    };
    let (h, init_log) = match Harness::load(plugin, limits).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(m) = h.manifest() {
        use midge_plugin::types::HookSet;
        let hooks: Vec<&str> = [
            (HookSet::AUTHENTICATE, "authenticate"),
            (HookSet::AUTHORIZE, "authorize"),
            (HookSet::ON_PUBLISH, "on-publish"),
            (HookSet::ON_EVENT, "on-event"),
            (HookSet::ON_RULE_OUTPUT, "on-rule-output"),
            (HookSet::RULE_FUNCTIONS, "rule-functions"),
        ]
        .into_iter()
        .filter(|(h, _)| m.hooks.contains(*h))
        .map(|(_, n)| n)
        .collect();
        println!(
            "plugin {} {}: hooks {}",
            m.name,
            m.version,
            hooks.join(", ")
        );
        if !m.publish_filters.is_empty() {
            println!("  on-publish filters: {}", m.publish_filters.join(", "));
        }
        for f in &m.functions {
            println!("  function {}: {}", f.name, f.description);
        }
    }
    for (level, m) in &init_log {
        println!("log {} (init): {m}", level_name(*level));
    }
    let out = h.call(&input).await;
    for (level, m) in &out.log {
        println!("log {}: {m}", level_name(*level));
    }
    for m in &out.published {
        println!(
            "published: topic {:?}, payload {}",
            m.topic,
            harness::shown_payload(&m.payload)
        );
    }
    println!("answer: {}", out.answer);
    println!("took {:.3} ms", out.took.as_secs_f64() * 1e3);
    if matches!(out.answer, harness::Answer::Failed(_)) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
