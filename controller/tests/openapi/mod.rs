//! Checks answers against docs/openapi.yaml (the same check as
//! local_mode.rs, shared by the in-process tests).

use serde_json::{json, Value};
use std::sync::Arc;

/// docs/openapi.yaml, parsed once.
pub fn spec() -> &'static Value {
    static SPEC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
        serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    })
}

pub fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => spec
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling {r}")),
        None => v,
    }
}

/// Checks one response against the OpenAPI file: the path and method must
/// be there, the status must be documented for them, and a JSON body must
/// match its schema. Every API call of these tests goes through it.
pub fn conforms(method: &str, path: &str, status: u16, body: &Value) {
    let spec = spec();
    let path_only = path.split('?').next().unwrap();
    let segs: Vec<&str> = path_only.split('/').collect();
    let Some((_, item)) = spec["paths"].as_object().unwrap().iter().find(|(tpl, _)| {
        let t: Vec<&str> = tpl.split('/').collect();
        t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(a, b)| a.starts_with('{') || a == b)
    }) else {
        // Unknown routes are documented as the generic 404.
        assert_eq!(status, 404, "{method} {path} is not in openapi.yaml");
        return;
    };
    let Some(op) = item.get(method.to_lowercase()) else {
        assert_eq!(status, 405, "{method} {path}: method not in openapi.yaml");
        return;
    };
    let resp = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {path}: status {status} is not documented"));
    let resp = resolve(spec, resp);
    let Some(schema) = resp.pointer("/content/application~1json/schema") else {
        return;
    };
    // Building a validator over the whole spec is the slow part: once per
    // schema.
    type Cache = std::sync::Mutex<std::collections::HashMap<String, Arc<jsonschema::Validator>>>;
    static VALIDATORS: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let key = schema.to_string();
    let cached = VALIDATORS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .get(&key)
        .cloned();
    let v = cached.unwrap_or_else(|| {
        let mut root = spec.clone();
        root["x-check"] = schema.clone();
        root["$ref"] = json!("#/x-check");
        let v = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("schema for {method} {path} {status}: {e}"));
        let v = Arc::new(v);
        let mut cache = VALIDATORS.get().unwrap().lock().unwrap();
        cache.insert(key, v.clone());
        v
    });
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match openapi.yaml: {errors:?}\nbody: {body}"
    );
}
