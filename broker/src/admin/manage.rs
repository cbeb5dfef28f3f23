//! Rules, plugins and config reload.
//!
//! Rule edits change the admin API's rules file (the overlay over the
//! config's `[[rules]]`, see [`crate::rules::overlay`]), one edit at a time:
//! the config's rules with the changed overlay are compiled, the file is
//! written atomically, and only then the new set runs. A set that does not
//! compile is refused (400) and a file that cannot be read or written is a
//! 500 naming it; either way the running rules and the file stay as they
//! were. A reload from the config file (SIGHUP, file change, `POST
//! /config/reload`) and a restart apply the file's rules with the overlay
//! again, so API edits survive both.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use midge_plugin::{PluginError, PluginMetrics};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiResult, Shared};
use crate::rules::overlay::{Overlay, OverlayError};
use crate::rules::sample::{self, Sample, SampleError};
use crate::rules::{ActionConfig, RuleConfig, RuleStats};

/// A rule as the API shows it; `source`: `"api"` when its running version
/// was set through the API (kept in the rules file), else `"config"`.
fn rule_json(c: &RuleConfig, stats: Option<&RuleStats>, source: &str) -> Value {
    let mut v = json!({
        "id": c.id,
        "sql": c.sql,
        "actions": c.actions,
        "enabled": c.enabled,
        "description": c.description,
        "source": source,
    });
    if let (Some(m), Some(o)) = (stats, v.as_object_mut()) {
        o.insert("metrics".into(), metrics_json(m));
    }
    v
}

fn metrics_json(m: &RuleStats) -> Value {
    json!({
        "matched": m.matched,
        "passed": m.passed,
        "no_result": m.no_result,
        "failed": m.failed,
        "actions_success": m.actions_success,
        "actions_failed": m.actions_failed,
        "eval_seconds_total": m.eval_nanos as f64 / 1e9,
        "action_seconds_total": m.action_nanos as f64 / 1e9,
        "action_runs": m.action_runs,
        "eval_seconds_avg": average(m.eval_nanos, m.matched),
        "action_seconds_avg": average(m.action_nanos, m.action_runs),
    })
}

/// Mean seconds per run from total nanoseconds (`null` before any run).
fn average(nanos: u64, runs: u64) -> Option<f64> {
    (runs > 0).then(|| nanos as f64 / 1e9 / runs as f64)
}

fn no_rule(id: &str) -> ApiError {
    ApiError::not_found(format!("no rule `{id}`"))
}

/// Running rules in order, with their metrics and source; `meta` names the
/// rules file and the config rules the API deleted.
pub async fn list_rules(State(s): State<Shared>) -> Json<Value> {
    let configs = s.broker.rules.configs();
    let stats = s.broker.rules.stats();
    let overlay = s.broker.rules.overlay();
    let data: Vec<Value> = configs
        .iter()
        .map(|c| {
            rule_json(
                c,
                stats.iter().find(|m| m.id == c.id),
                overlay.source(&c.id),
            )
        })
        .collect();
    let count = data.len();
    Json(json!({
        "data": data,
        "meta": {
            "count": count,
            "api_rules_file": s.rules_file.display().to_string(),
            "deleted": overlay.deleted,
        },
    }))
}

pub async fn get_rule(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id?;
    let configs = s.broker.rules.configs();
    let c = configs
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| no_rule(&id))?;
    let stats = s.broker.rules.stats();
    let source = s.broker.rules.overlay().source(&id);
    Ok(Json(rule_json(
        c,
        stats.iter().find(|m| m.id == id),
        source,
    )))
}

pub async fn rule_metrics(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id?;
    let stats = s.broker.rules.stats();
    let m = stats
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| no_rule(&id))?;
    let mut v = metrics_json(m);
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), id.into());
        o.insert("enabled".into(), m.enabled.into());
    }
    Ok(Json(v))
}

/// Checks one rule on its own, so a bad one is answered with its position.
fn check_rule(s: &Shared, c: &RuleConfig) -> Result<(), ApiError> {
    if c.id.trim().is_empty() || c.id != c.id.trim() {
        return Err(ApiError::bad_request(
            "rule id must not be empty nor start or end with spaces",
        ));
    }
    if c.id == "test" {
        return Err(ApiError::bad_request(
            "rule id `test` is reserved: POST /api/v1/rules/test runs a sample",
        ));
    }
    if let Err(e) = s.broker.rules.compile(&c.id, &c.sql) {
        return Err(ApiError::bad_request(e.to_string()).with(json!({
            "rule_id": e.rule_id,
            "line": e.line,
            "column": e.column,
        })));
    }
    for (i, a) in c.actions.iter().enumerate() {
        if let Some((bridge, _)) = a.as_bridge() {
            if s.bridges.get(bridge).is_none() {
                return Err(ApiError::bad_request(format!(
                    "rule `{}`: actions[{i}]: bridge `{bridge}` is not a running bridge",
                    c.id
                )));
            }
        }
        if let ActionConfig::Plugin { plugin } = a {
            let loaded = s
                .broker
                .plugins()
                .and_then(|h| h.is_enabled(plugin))
                .is_some();
            if !loaded {
                return Err(ApiError::bad_request(format!(
                    "rule `{}`: actions[{i}]: plugin `{plugin}` is not a loaded plugin",
                    c.id
                )));
            }
        }
    }
    Ok(())
}

/// The rules file cannot be read or written: a 500 naming it.
fn file_error(e: OverlayError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).with(json!({
        "file": e.path.display().to_string(),
        "kept": "the running rules and the rules file are unchanged",
    }))
}

/// Runs `change` on the running rules and the rules file's overlay (read
/// now), then compiles the config's rules with the changed overlay, writes
/// the file and only then runs the new set. Edits and reloads take turns.
fn edit<T>(
    s: &Shared,
    change: impl FnOnce(&[RuleConfig], &mut Overlay) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let rules = &s.broker.rules;
    let _one_at_a_time = rules.edit_lock();
    let mut overlay = Overlay::read(&s.rules_file).map_err(file_error)?;
    let out = change(&rules.configs(), &mut overlay)?;
    let prepared = rules
        .prepare((*rules.base()).clone(), overlay.clone())
        .map_err(|errors| {
            ApiError::bad_request(errors.join("; ")).with(json!({ "errors": errors }))
        })?;
    overlay.write(&s.rules_file).map_err(file_error)?;
    rules.install(prepared);
    Ok(out)
}

fn running(configs: &[RuleConfig], id: &str) -> Result<RuleConfig, ApiError> {
    configs
        .iter()
        .find(|x| x.id == id)
        .cloned()
        .ok_or_else(|| no_rule(id))
}

pub async fn create_rule(
    State(s): State<Shared>,
    body: Result<Json<RuleConfig>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(c) = body?;
    check_rule(&s, &c)?;
    edit(&s, |configs, overlay| {
        if configs.iter().any(|x| x.id == c.id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("rule `{}` already exists", c.id),
            ));
        }
        overlay.set(c.clone());
        Ok(())
    })?;
    tracing::info!(rule = %c.id, file = %s.rules_file.display(), "rule created through the admin API");
    Ok((StatusCode::CREATED, Json(rule_json(&c, None, "api"))))
}

/// `PUT /rules/{id}` body: a rule; `id`, when given, must be the path's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleUpdate {
    id: Option<String>,
    sql: String,
    #[serde(default)]
    actions: Vec<ActionConfig>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    description: String,
}

fn yes() -> bool {
    true
}

pub async fn update_rule(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<RuleUpdate>, JsonRejection>,
) -> ApiResult {
    let Path(id) = id?;
    let Json(u) = body?;
    if u.id.as_deref().is_some_and(|b| b != id) {
        return Err(ApiError::bad_request(
            "the body's `id` differs from the path's (a rule cannot be renamed)",
        ));
    }
    let c = RuleConfig {
        id: id.clone(),
        sql: u.sql,
        actions: u.actions,
        enabled: u.enabled,
        description: u.description,
    };
    check_rule(&s, &c)?;
    edit(&s, |configs, overlay| {
        running(configs, &id)?;
        overlay.set(c.clone());
        Ok(())
    })?;
    tracing::info!(rule = %id, file = %s.rules_file.display(), "rule updated through the admin API");
    Ok(Json(rule_json(&c, None, "api")))
}

/// Deletes a running rule; the deletion is kept in the rules file, so a
/// rule of the config file stays deleted across reloads and restarts
/// (`DELETE /rules/{id}/override` brings it back).
pub async fn delete_rule(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    edit(&s, |configs, overlay| {
        running(configs, &id)?;
        overlay.delete(&id);
        Ok(())
    })?;
    tracing::info!(rule = %id, file = %s.rules_file.display(), "rule deleted through the admin API");
    Ok(StatusCode::NO_CONTENT)
}

async fn switch_rule(s: &Shared, id: &str, enabled: bool) -> ApiResult {
    let c = edit(s, |configs, overlay| {
        let mut c = running(configs, id)?;
        c.enabled = enabled;
        overlay.set(c.clone());
        Ok(c)
    })?;
    Ok(Json(rule_json(&c, None, "api")))
}

pub async fn enable_rule(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id?;
    switch_rule(&s, &id, true).await
}

pub async fn disable_rule(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id?;
    switch_rule(&s, &id, false).await
}

/// Drops the API's word on rule `id` from the rules file: the config
/// file's rule of that id (as last loaded) runs again, or, when the config
/// has none, the rule is gone. 404 when the API has no change on it.
pub async fn drop_rule_override(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id?;
    edit(&s, |_, overlay| {
        if overlay.forget(&id) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "rule `{id}` has no change made through the admin API (nothing to drop)"
            )))
        }
    })?;
    tracing::info!(rule = %id, file = %s.rules_file.display(), "admin API change dropped; the config's rule applies");
    let configs = s.broker.rules.configs();
    let rule = configs.iter().find(|c| c.id == id).map(|c| {
        let stats = s.broker.rules.stats();
        rule_json(c, stats.iter().find(|m| m.id == id), "config")
    });
    Ok(Json(json!({ "id": id, "rule": rule })))
}

/// `POST /rules/test` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestReq {
    sql: String,
    #[serde(default)]
    sample: Sample,
    /// Actions to show the outputs of, per row (none are run).
    #[serde(default)]
    actions: Vec<ActionConfig>,
}

/// Runs the SQL on the sample with the running plugins' functions (a call
/// runs the plugin, as a running rule's would).
pub async fn test_rule(
    State(s): State<Shared>,
    body: Result<Json<TestReq>, JsonRejection>,
) -> ApiResult {
    let Json(t) = body?;
    let functions = s.broker.rules.functions();
    match sample::run(&t.sql, &t.sample, functions.as_ref()) {
        Ok(rows) => {
            let outputs: Vec<Vec<Value>> = rows
                .iter()
                .map(|row| crate::rules::preview::actions(&t.actions, row))
                .collect();
            Ok(Json(json!({
                "matched": !rows.is_empty(),
                "rows": rows,
                "outputs": outputs,
            })))
        }
        Err(SampleError::Compile(e)) => Err(ApiError::bad_request(e.to_string()).with(json!({
            "rule_id": e.rule_id,
            "line": e.line,
            "column": e.column,
        }))),
        Err(e @ SampleError::Eval(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

fn plugin_json(h: &midge_plugin::PluginHost, m: &PluginMetrics) -> Value {
    let state = m.state();
    let manifest = h.manifest(&m.name).map(|x| manifest_json(&x));
    let config = h.plugin_config(&m.name);
    json!({
        "name": m.name,
        "state": state,
        "loaded": true,
        "manifest": manifest,
        "path": config.as_ref().map(|c| c.path.display().to_string()),
        "grants": config.as_ref().map(|c| grants_json(&c.grants)),
        "limits": config.as_ref().map(|c| limits_json(&c.limits)),
        "metrics": {
            "calls": m.calls,
            "failures": m.failures,
            "traps": m.traps,
            "timeouts": m.timeouts,
            "out_of_memory": m.out_of_memory,
            "busy": m.busy,
            "invalid_outputs": m.invalid_outputs,
            "suspended_calls": m.suspended_calls,
            "suspensions": m.suspensions,
            "instances_created": m.instances_created,
            "idle_instances": m.idle_instances,
            "call_seconds_total": m.call_nanos as f64 / 1e9,
            "reloads": m.reloads,
            "reload_failures": m.reload_failures,
        },
    })
}

/// The plugin's own name and version, the hooks it implements, the topic
/// filters of its `on-publish`, the events it wants and the functions it
/// offers to rules.
fn manifest_json(x: &midge_plugin::types::Manifest) -> Value {
    use midge_plugin::types::{EventSet as E, HookSet as H};
    let hooks: Vec<&str> = [
        (H::AUTHENTICATE, "authenticate"),
        (H::AUTHORIZE, "authorize"),
        (H::ON_PUBLISH, "on-publish"),
        (H::ON_EVENT, "on-event"),
        (H::ON_RULE_OUTPUT, "on-rule-output"),
        (H::RULE_FUNCTIONS, "rule-functions"),
    ]
    .into_iter()
    .filter(|(f, _)| x.hooks.contains(*f))
    .map(|(_, n)| n)
    .collect();
    let events: Vec<&str> = [
        (E::CONNECTED, "connected"),
        (E::DISCONNECTED, "disconnected"),
        (E::SUBSCRIBED, "subscribed"),
        (E::UNSUBSCRIBED, "unsubscribed"),
        (E::DELIVERED, "delivered"),
        (E::ACKED, "acked"),
        (E::DROPPED, "dropped"),
    ]
    .into_iter()
    .filter(|(f, _)| x.events.contains(*f))
    .map(|(_, n)| n)
    .collect();
    let functions: Vec<&str> = x.functions.iter().map(|f| f.name.as_str()).collect();
    json!({
        "name": x.name,
        "version": x.version,
        "hooks": hooks,
        "publish_filters": x.publish_filters,
        "events": events,
        "functions": functions,
    })
}

/// The capabilities granted in the config (`grants`).
fn grants_json(g: &midge_plugin::Grants) -> Value {
    let dirs: Vec<Value> = g
        .dirs
        .iter()
        .map(|d| json!({ "host": d.host.display().to_string(), "guest": d.guest }))
        .collect();
    json!({
        "log": g.log,
        "kv": g.kv,
        "publish": g.publish,
        "sql": g.sql,
        "kafka": g.kafka,
        "dirs": dirs,
    })
}

fn limits_json(l: &midge_plugin::Limits) -> Value {
    json!({
        "memory_mib": l.memory_mib,
        "deadline_ms": l.deadline_ms,
        "init_deadline_ms": l.init_deadline_ms,
        "max_instances": l.max_instances,
        "queue_timeout_ms": l.queue_timeout_ms,
        "suspend_after": l.suspend_after,
        "suspend_secs": l.suspend_secs,
    })
}

/// Loaded plugins in chain order, then those the config disables (not
/// loaded), as of the last load or reload.
pub async fn list_plugins(State(s): State<Shared>) -> Json<Value> {
    let mut data = Vec::new();
    if let Some(h) = s.broker.plugins() {
        for m in h.metrics() {
            data.push(plugin_json(h, &m));
        }
    }
    for name in disabled_in_config(&s) {
        data.push(json!({ "name": name, "state": "disabled", "loaded": false }));
    }
    let count = data.len();
    Json(json!({ "data": data, "meta": { "count": count } }))
}

/// Names the config lists with `enabled = false`: the host's view (it
/// follows reloads), or the start-up file's without a host.
fn disabled_in_config(s: &Shared) -> Vec<String> {
    match s.broker.plugins() {
        Some(h) => h.disabled_in_config(),
        None => s
            .running
            .plugins
            .plugins
            .iter()
            .filter(|p| !p.enabled)
            .map(|p| p.name.clone())
            .collect(),
    }
}

fn plugin_error(s: &Shared, name: &str, e: PluginError) -> ApiError {
    match e {
        PluginError::UnknownPlugin(_) if disabled_in_config(s).iter().any(|p| p == name) => {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("plugin `{name}` is disabled in the config and not loaded: enable it there and reload the config"),
            )
        }
        PluginError::UnknownPlugin(_) => ApiError::not_found(format!("no plugin `{name}`")),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            .with(json!({ "kept": "the previous version keeps running" })),
    }
}

fn host(s: &Shared, name: &str) -> Result<midge_plugin::PluginHost, ApiError> {
    match s.broker.plugins() {
        Some(h) => Ok(h.clone()),
        None => Err(plugin_error(
            s,
            name,
            PluginError::UnknownPlugin(name.to_string()),
        )),
    }
}

fn one_plugin(h: &midge_plugin::PluginHost, name: &str) -> Value {
    match h.plugin_metrics(name) {
        Some(m) => plugin_json(h, &m),
        None => json!({ "name": name }),
    }
}

/// Reloads the plugin from its file (even if unchanged); a failed load
/// keeps the running version.
pub async fn reload_plugin(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(name) = name?;
    let h = host(&s, &name)?;
    h.reload(&name)
        .await
        .map_err(|e| plugin_error(&s, &name, e))?;
    Ok(Json(one_plugin(&h, &name)))
}

async fn switch_plugin(s: &Shared, name: &str, enabled: bool) -> ApiResult {
    let h = host(s, name)?;
    h.set_enabled(name, enabled)
        .map_err(|e| plugin_error(s, name, e))?;
    Ok(Json(one_plugin(&h, name)))
}

pub async fn enable_plugin(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(name) = name?;
    switch_plugin(&s, &name, true).await
}

pub async fn disable_plugin(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(name) = name?;
    switch_plugin(&s, &name, false).await
}

/// What SIGHUP does: the file's plugin entries (and changed `.wasm` files),
/// then its rules.
pub async fn reload_config(State(s): State<Shared>) -> ApiResult {
    let Some(path) = s.config_path.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the broker was started without a config file (--config): nothing to reload",
        ));
    };
    let report = crate::reload::reload_all(&s.broker, &path, &s.running)
        .await
        .map_err(|e| {
            ApiError::bad_request(format!("reload refused, the running rules stay: {e}"))
                .with(json!(e.plugins))
        })?;
    report.plugins.log("admin API");
    tracing::info!(rules = report.rules, file = %path.display(), "reloaded through the admin API");
    Ok(Json(json!(report)))
}
