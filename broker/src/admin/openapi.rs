//! `GET /api/v1/openapi.json`: the hand-written OpenAPI 3.0 description of
//! every route. A test keeps it and the route table ([`super::routes`]) equal.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as served.
pub const SPEC: &str = include_str!("openapi.json");

pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], SPEC)
}

/// (METHOD, path) of every operation the document describes, sorted.
pub fn described() -> Result<Vec<(String, String)>, String> {
    let doc: serde_json::Value = serde_json::from_str(SPEC).map_err(|e| e.to_string())?;
    let paths = doc["paths"].as_object().ok_or("no `paths` object")?;
    let mut out = Vec::new();
    for (path, ops) in paths {
        let ops = ops.as_object().ok_or("a path that is not an object")?;
        for method in ops.keys() {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_describes_exactly_the_routes() {
        let mut served: Vec<(String, String)> = super::super::route_table()
            .into_iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        let described = described().unwrap_or_else(|e| panic!("openapi.json: {e}"));
        let missing: Vec<_> = served.iter().filter(|r| !described.contains(r)).collect();
        let extra: Vec<_> = described.iter().filter(|r| !served.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "routes not in openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "openapi.json operations without a route: {extra:?}"
        );
    }

    /// `POST /config/reload` answers a `ReloadReport`: its fields are the
    /// schema's properties, and a refusal's fields those of the item schema.
    #[test]
    fn reload_report_schema_names_exactly_its_fields() {
        use crate::reload::{PluginChanges, PluginRefusal, ReloadReport};
        let doc: serde_json::Value = serde_json::from_str(SPEC).unwrap();
        let schema = &doc["components"]["schemas"]["ReloadReport"]["properties"];
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let report = ReloadReport {
            rules: 0,
            plugins: PluginChanges {
                plugins_refused: vec![PluginRefusal {
                    plugin: "p".into(),
                    error: "e".into(),
                }],
                ..PluginChanges::default()
            },
            restart_needed: Vec::new(),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(keys(&json), keys(schema));
        assert_eq!(
            keys(&json["plugins_refused"][0]),
            keys(&schema["plugins_refused"]["items"]["properties"])
        );
    }
}
