//! What the `midge` binary's subcommands do beyond parsing their arguments:
//! `midge plugin ...` ([`plugin`]) and `midge rule test --config`
//! ([`rule_test`]).

pub mod plugin;

use std::path::Path;
use std::sync::Arc;

use crate::rules::sample::{self, Sample};

/// `midge rule test`: the rows `sql` outputs for `sample`. With `config`,
/// its plugins are loaded first (sandboxed: a temporary kv store, nothing
/// published) so the rule can call their functions, as the running broker's
/// rules do.
pub fn rule_test(
    sql: &str,
    sample: &Sample,
    config: Option<&Path>,
) -> Result<Vec<midge_rules::Row>, String> {
    let Some(path) = config else {
        return sample::run(sql, sample, None).map_err(|e| e.to_string());
    };
    let cfg = crate::Config::load(path).map_err(|e| e.to_string())?;
    if cfg.plugins.plugins.iter().all(|p| !p.enabled) {
        return sample::run(sql, sample, None).map_err(|e| e.to_string());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let (sql, sample) = (sql.to_string(), sample.clone());
    let shown = path.display().to_string();
    rt.block_on(async move {
        let services = midge_plugin::Services {
            limits: crate::app::output_limits(&cfg.mqtt),
            ..midge_plugin::Services::default()
        };
        let host = midge_plugin::PluginHost::load_sandboxed(&cfg.plugins, services)
            .await
            .map_err(|e| format!("{shown}: [plugins] {e}"))?;
        let functions: Arc<dyn midge_rules::ExternalFunctions> =
            Arc::new(crate::plugins::PluginFunctions(host));
        // Plugin functions run with `block_in_place`: on a worker thread.
        tokio::spawn(async move {
            sample::run(&sql, &sample, Some(&functions)).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("rule test: {e}"))?
    })
}
