//! `midge check --config FILE`: every problem of a configuration file, not
//! only the first: each TOML-level error (syntax, unknown key, wrong type,
//! missing field; see [`crate::config_errors`]), then on what remains the
//! values `Config::problems` refuses, the rules (the file's, placed at their
//! line in it, and the admin API's rules file), the TLS files, the Kafka
//! settings and each plugin file (loaded as `serve` would: instantiated and
//! its `init` run with its config, sandboxed).

use std::path::Path;

/// Every problem of the file at `path`, one message each (empty: fine).
pub fn problems(path: &Path) -> Vec<String> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![format!("{shown}: cannot read: {e}")],
    };
    let (cfg, toml_errors) = crate::config_errors::every_error(&text);
    let mut errors: Vec<String> = toml_errors.iter().map(|e| e.show(&shown)).collect();
    let Some(mut cfg) = cfg else {
        return errors;
    };
    errors.extend(cfg.resolve_builtins(&shown).iter().map(|e| e.to_string()));
    errors.extend(
        crate::config::place_rule_errors(cfg.problems(&shown), &text)
            .iter()
            .map(|e| e.to_string()),
    );
    // The admin API's rules file (as `serve` would read it, without flags):
    // its rules checked on their own, so the config's errors are not repeated.
    let api_rules = cfg.api_rules_path();
    match crate::rules::overlay::Overlay::read(&api_rules) {
        Ok(o) => {
            let origin = api_rules.display().to_string();
            errors.extend(
                cfg.rule_problems(&o.rules, &origin)
                    .iter()
                    .map(|e| e.to_string()),
            );
        }
        Err(e) => errors.push(e.to_string()),
    }
    if let Some(e) = crate::server::check_tls(&cfg) {
        errors.push(format!("{shown}: {e}"));
    }
    if let Some(k) = &cfg.plugins.kafka {
        if let Err(e) = crate::services::kafka::KafkaProducer::check(k) {
            errors.push(format!("{shown}: {e}"));
        }
    }
    if !cfg.plugins.plugins.is_empty() {
        let plugin_errors = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(midge_plugin::PluginHost::check(&cfg.plugins)));
        match plugin_errors {
            Ok(list) => errors.extend(list.iter().map(|e| format!("{shown}: [plugins] {e}"))),
            Err(e) => errors.push(format!("runtime: {e}")),
        }
    }
    errors
}
