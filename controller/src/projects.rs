//! Templates and projects in the store (docs/api.md §3, §4.1, §4.2).
//!
//! A project is a journal root `projects/<id>` (storage.md) whose
//! `meta.json` the controller extends with the name. Listing all projects
//! must not list every journal object, so the controller also keeps one
//! empty marker per project under `controller/projects/`.

use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use bytes::Bytes;
use cove_sync::format::keys;
use cove_sync::journal::Journal;
use cove_sync::store::DynStore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;

const INDEX: &str = "controller/projects/";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Template {
    /// The directory's name; not in template.json.
    #[serde(default)]
    pub name: String,
    pub description: String,
    pub language: String,
    /// How to run the app, shown in the template's README; not served.
    #[serde(default, skip_serializing)]
    pub run: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub template: Option<String>,
    pub forked_from: Option<String>,
    pub created_ms: u64,
    #[serde(default)]
    pub last_opened_ms: Option<u64>,
}

/// Store ids (storage.md §1); the rule lives with the store's keys.
pub use cove_sync::format::keys::valid_id;

/// §3.2: trimmed, 1–100 scalar values, no control or bidi characters.
pub fn check_name(raw: &str) -> ApiResult<String> {
    let name = raw.trim();
    let bad = |m: &str| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", m.to_string())
            .with(json!({"field": "name"}))
    };
    let n = name.chars().count();
    if n == 0 {
        return Err(bad("name must not be empty"));
    }
    if n > 100 {
        return Err(bad("name must have at most 100 characters"));
    }
    if name.chars().any(|c| {
        c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    }) {
        return Err(bad("name must not contain control characters"));
    }
    Ok(name.to_string())
}

/// §3.1: a slug of the name, then `-` and six random characters.
pub fn new_id(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let mut slug: String = slug.trim_matches('-').chars().take(40).collect();
    slug = slug.trim_matches('-').to_string();
    if slug.is_empty() {
        slug = "project".into();
    }
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..6)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{slug}-{suffix}")
}

/// Reads `templates/<name>/template.json` and imports `files/` of each
/// into the store, replacing what was there.
pub async fn import_templates(store: &DynStore, dir: &Path) -> anyhow::Result<Vec<Template>> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = e.path().join("template.json");
        if !meta.is_file() {
            continue;
        }
        anyhow::ensure!(
            valid_id(&name),
            "template directory {name:?} is not a valid template name"
        );
        let mut t: Template = serde_json::from_slice(&std::fs::read(&meta)?)
            .map_err(|err| anyhow::anyhow!("{}: {err}", meta.display()))?;
        t.name = name.clone();
        let files = e.path().join("files");
        let tree = cove_sync::snapshot::tree_of_dir(store, &files).await?;
        let j = Journal::new(store.clone(), keys::template_root(&name));
        j.delete_all().await?;
        j.create_from_tree(&tree).await?;
        tracing::info!(template = %name, entries = tree.len(), "template imported");
        out.push(t);
    }
    Ok(out)
}

pub struct Projects {
    store: DynStore,
}

impl Projects {
    pub fn new(store: DynStore) -> Self {
        Projects { store }
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub fn journal(&self, id: &str) -> Journal {
        Journal::new(self.store.clone(), keys::project_root(id))
    }

    async fn save(&self, p: &Project) -> ApiResult<()> {
        let body = serde_json::to_vec(p).map_err(ApiError::internal)?;
        self.store
            .put(&keys::meta(&keys::project_root(&p.id)), Bytes::from(body))
            .await
            .map_err(ApiError::store)
    }

    pub async fn get(&self, id: &str) -> ApiResult<Project> {
        if !valid_id(id) {
            return Err(ApiError::not_found());
        }
        let raw = self
            .store
            .get(&keys::meta(&keys::project_root(id)))
            .await
            .map_err(ApiError::store)?
            .ok_or_else(ApiError::not_found)?;
        let v: serde_json::Value = serde_json::from_slice(&raw).map_err(ApiError::internal)?;
        // Projects made with `cove-sync create` have no name yet.
        Ok(Project {
            id: id.to_string(),
            name: v["name"].as_str().unwrap_or(id).to_string(),
            template: v["template"].as_str().map(str::to_string),
            forked_from: v["forked_from"].as_str().map(str::to_string),
            created_ms: v["created_ms"].as_u64().unwrap_or(0),
            last_opened_ms: v["last_opened_ms"].as_u64(),
        })
    }

    pub async fn list(&self) -> ApiResult<Vec<Project>> {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(INDEX, after.as_deref())
                .await
                .map_err(ApiError::store)?;
            if page.is_empty() {
                break;
            }
            after = page.last().cloned();
            ids.extend(
                page.iter()
                    .filter_map(|k| k.strip_prefix(INDEX).map(str::to_string)),
            );
        }
        let mut out = Vec::new();
        for id in ids {
            match self.get(&id).await {
                Ok(p) => out.push(p),
                Err(e) if e.code == "not_found" => {} // a delete in progress
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn fresh_id(&self, name: &str) -> ApiResult<String> {
        for _ in 0..8 {
            let id = new_id(name);
            if !self.journal(&id).exists().await.map_err(ApiError::store)? {
                return Ok(id);
            }
        }
        Err(ApiError::internal("could not find a free project id"))
    }

    /// A new project from a template's checkpoint: O(1) in its files.
    pub async fn create(&self, name: &str, template: &Template) -> ApiResult<Project> {
        let name = check_name(name)?;
        let id = self.fresh_id(&name).await?;
        let src = Journal::new(self.store.clone(), keys::template_root(&template.name));
        self.journal(&id)
            .create_from(&src)
            .await
            .map_err(ApiError::store)?;
        self.finish_create(Project {
            id,
            name,
            template: Some(template.name.clone()),
            forked_from: None,
            created_ms: cove_sync::journal::now_ms(),
            last_opened_ms: None,
        })
        .await
    }

    pub async fn fork(&self, src: &Project, name: Option<&str>) -> ApiResult<Project> {
        let name = match name {
            Some(n) => check_name(n)?,
            None => {
                check_name(&format!("{} (fork)", src.name)).or_else(|_| check_name(&src.name))?
            }
        };
        let id = self.fresh_id(&name).await?;
        self.journal(&id)
            .create_from(&self.journal(&src.id))
            .await
            .map_err(ApiError::store)?;
        self.finish_create(Project {
            id,
            name,
            template: src.template.clone(),
            forked_from: Some(src.id.clone()),
            created_ms: cove_sync::journal::now_ms(),
            last_opened_ms: None,
        })
        .await
    }

    async fn finish_create(&self, p: Project) -> ApiResult<Project> {
        self.save(&p).await?;
        self.store
            .put(&format!("{INDEX}{}", p.id), Bytes::from_static(b"{}"))
            .await
            .map_err(ApiError::store)?;
        Ok(p)
    }

    pub async fn rename(&self, id: &str, name: &str) -> ApiResult<Project> {
        let name = check_name(name)?;
        let mut p = self.get(id).await?;
        p.name = name;
        self.save(&p).await?;
        Ok(p)
    }

    pub async fn touch_opened(&self, id: &str) -> ApiResult<()> {
        let mut p = self.get(id).await?;
        p.last_opened_ms = Some(cove_sync::journal::now_ms());
        self.save(&p).await
    }

    /// Deletes the journal first and the index marker last, so an
    /// interrupted delete is finished by repeating it.
    pub async fn delete(&self, id: &str) -> ApiResult<()> {
        self.get(id).await?;
        self.journal(id)
            .delete_all()
            .await
            .map_err(ApiError::store)?;
        self.store
            .delete(&format!("{INDEX}{id}"))
            .await
            .map_err(ApiError::store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dns_safe_slugs() {
        let id = new_id("My App!");
        assert!(id.starts_with("my-app-") && id.len() == 13, "{id}");
        assert!(valid_id(&id));
        let id = new_id("日本語 🎉");
        assert!(id.starts_with("project-"), "{id}");
        let long = new_id(&"a b ".repeat(50));
        assert!(long.len() <= 47 && !long.contains("--"), "{long}");
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("  My app  ").unwrap(), "My app");
        assert_eq!(check_name("🎉 party").unwrap(), "🎉 party");
        for bad in ["", "   ", "a\nb", "a\u{202E}b", &"x".repeat(101)] {
            assert_eq!(check_name(bad).unwrap_err().code, "invalid_name", "{bad:?}");
        }
    }
}
