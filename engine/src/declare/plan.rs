//! The difference between the catalog and a file: per object, add, change
//! (field: old → new) or remove, in a stable order (by kind of object, then
//! name). Secrets are never shown, only that they change.

use std::collections::BTreeMap;

use serde::Serialize;

use super::state::{DbState, PluginState, RelationState, State, SyncState};
use crate::catalog::manifest::Manifest;
use crate::catalog::sync::format_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Add,
    Change,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub old: String,
    pub new: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// setting, db, plugin, table, sequence, herd, dbgroup or sync.
    pub object: &'static str,
    pub name: String,
    pub action: Action,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
}

impl Step {
    pub fn is(&self, object: &str, action: Action) -> bool {
        self.object == object && self.action == action
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
}

/// The order objects are listed in.
const ORDER: [&str; 8] = ["setting", "db", "plugin", "table", "sequence", "herd", "dbgroup", "sync"];

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn count(&self, action: Action) -> usize {
        self.steps.iter().filter(|s| s.action == action).count()
    }

    /// The steps of one kind and action, by name.
    pub fn of<'a>(&'a self, object: &'a str, action: Action) -> impl Iterator<Item = &'a Step> + 'a {
        self.steps.iter().filter(move |s| s.is(object, action))
    }

    pub fn summary(&self) -> String {
        format!(
            "{} to add, {} to change, {} to remove",
            self.count(Action::Add),
            self.count(Action::Change),
            self.count(Action::Remove)
        )
    }

    /// One line per object, one more per changed field.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for step in &self.steps {
            let sign = match step.action {
                Action::Add => '+',
                Action::Change => '~',
                Action::Remove => '-',
            };
            lines.push(format!("{sign} {} {}", step.object, step.name));
            for c in &step.changes {
                lines.push(format!("    {}: {} → {}", c.field, c.old, c.new));
            }
        }
        lines
    }
}

/// What it takes to make `current` look like `desired`.
pub fn diff(current: &State, desired: &State) -> Plan {
    let mut steps = Vec::new();
    for (key, value) in &desired.settings {
        match current.settings.get(key) {
            None => steps.push(Step {
                object: "setting",
                name: key.clone(),
                action: Action::Add,
                changes: vec![change("value", "(default)", value)],
            }),
            Some(old) if old != value => steps.push(Step {
                object: "setting",
                name: key.clone(),
                action: Action::Change,
                changes: vec![change("value", old, value)],
            }),
            Some(_) => {}
        }
    }
    compare(&mut steps, |_| "db", &current.dbs, &desired.dbs, db_changes);
    compare(
        &mut steps,
        |_| "plugin",
        &current.plugins,
        &desired.plugins,
        |c, d| listed_changes(&plugin_fields(c), &plugin_fields(d)),
    );
    compare(&mut steps, |r| r.kind.as_str(), &current.relations, &desired.relations, relation_changes);
    compare(
        &mut steps,
        |_| "herd",
        &current.herds,
        &desired.herds,
        |c, d| {
            let show = |s: &std::collections::BTreeSet<String>| join(s.iter(), ", ");
            if c == d { Vec::new() } else { vec![change("members", &show(c), &show(d))] }
        },
    );
    compare(
        &mut steps,
        |_| "dbgroup",
        &current.dbgroups,
        &desired.dbgroups,
        |c, d| {
            let show = |m: &[crate::catalog::DbGroupMember]| join(m.iter().map(|m| m.spec()), " ");
            if c == d { Vec::new() } else { vec![change("members", &show(c), &show(d))] }
        },
    );
    compare(
        &mut steps,
        |_| "sync",
        &current.syncs,
        &desired.syncs,
        |c, d| listed_changes(&sync_fields(c), &sync_fields(d)),
    );
    let rank = |object: &str| ORDER.iter().position(|o| *o == object).unwrap_or(ORDER.len());
    steps.sort_by(|a, b| (rank(a.object), &a.name).cmp(&(rank(b.object), &b.name)));
    Plan { steps }
}

/// Adds, changes and removals between two maps of one kind of object.
fn compare<T>(
    steps: &mut Vec<Step>,
    object: impl Fn(&T) -> &'static str,
    current: &BTreeMap<String, T>,
    desired: &BTreeMap<String, T>,
    changes: impl Fn(&T, &T) -> Vec<FieldChange>,
) {
    for (name, d) in desired {
        match current.get(name) {
            None => {
                steps.push(Step { object: object(d), name: name.clone(), action: Action::Add, changes: Vec::new() })
            }
            Some(c) => {
                let changes = changes(c, d);
                if !changes.is_empty() {
                    steps.push(Step { object: object(d), name: name.clone(), action: Action::Change, changes });
                }
            }
        }
    }
    for (name, c) in current {
        if !desired.contains_key(name) {
            steps.push(Step { object: object(c), name: name.clone(), action: Action::Remove, changes: Vec::new() });
        }
    }
}

fn change(field: &str, old: &str, new: &str) -> FieldChange {
    FieldChange { field: field.to_string(), old: old.to_string(), new: new.to_string() }
}

fn join(items: impl Iterator<Item = impl AsRef<str>>, sep: &str) -> String {
    let parts: Vec<String> = items.map(|s| s.as_ref().to_string()).collect();
    if parts.is_empty() { "(none)".into() } else { parts.join(sep) }
}

fn listed_changes(old: &[(&'static str, String)], new: &[(&'static str, String)]) -> Vec<FieldChange> {
    old.iter().zip(new).filter(|((_, a), (_, b))| a != b).map(|((field, a), (_, b))| change(field, a, b)).collect()
}

/// A db's connection keys as text, the password left out.
fn conn_fields(d: &DbState) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&d.conn) {
        for (key, value) in map {
            let text = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            if key != "password" {
                fields.insert(key, text);
            }
        }
    }
    fields.insert("status".into(), d.status.clone());
    fields.insert("type".into(), d.target.as_ref().map_or("postgres", |t| t.type_name()).to_string());
    fields
}

fn db_changes(c: &DbState, d: &DbState) -> Vec<FieldChange> {
    let (old, new) = (conn_fields(c), conn_fields(d));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let unset = String::from("(unset)");
    let mut changes: Vec<FieldChange> = keys
        .into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| change(k, old.get(k).unwrap_or(&unset), new.get(k).unwrap_or(&unset)))
        .collect();
    if c.target != d.target && changes.is_empty() {
        // Only what the listing hides changed: a foreign target's password.
        let new = d.password_env.as_ref().map_or("(set)".to_string(), |v| format!("(from ${v})"));
        changes.push(change("password", "(stored)", &new));
    }
    if c.capture != d.capture {
        changes.push(change("capture", c.capture.as_str(), d.capture.as_str()));
    }
    if c.conn.password != d.conn.password {
        let new = match (&d.conn.password, &d.password_env) {
            (None, _) => "(none)".to_string(),
            (Some(_), Some(var)) => format!("(from ${var})"),
            (Some(_), None) => "(set)".to_string(),
        };
        let old = if c.conn.password.is_some() { "(stored)" } else { "(none)" };
        changes.push(change("password", old, &new));
    }
    changes
}

fn relation_changes(c: &RelationState, d: &RelationState) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    if c.kind != d.kind {
        changes.push(change("kind", c.kind.as_str(), d.kind.as_str()));
    }
    if let Some(key) = &d.key
        && Some(key) != c.key.as_ref()
    {
        let old = c.key.as_ref().map(|k| k.join(",")).unwrap_or_default();
        changes.push(change("pkey", &old, &key.join(",")));
    }
    if c.capture_old != d.capture_old {
        changes.push(change("capture_old", &c.capture_old.to_string(), &d.capture_old.to_string()));
    }
    if c.makedelta != d.makedelta {
        changes.push(change("makedelta", &c.makedelta.to_string(), &d.makedelta.to_string()));
    }
    changes
}

fn sync_fields(s: &SyncState) -> Vec<(&'static str, String)> {
    let r = &s.record;
    let p = &r.params;
    let uses = |kind: &str| join(s.uses.iter().filter(|u| u.kind == kind).map(|u| u.to_string()), "; ");
    vec![
        ("herd", r.herd.clone()),
        ("dbgroup", r.dbgroup.clone()),
        ("status", p.status.clone()),
        ("conflict_strategy", p.conflict_strategy.to_string()),
        ("autokick", p.autokick.to_string()),
        ("checktime", format_duration(p.checktime)),
        ("onetimecopy", p.onetimecopy.to_string()),
        ("kidsalive", p.kidsalive.to_string()),
        ("lock_timeout", format_duration(p.lock_timeout)),
        ("isolation_level", p.isolation_level.as_sql().to_string()),
        ("makedelta", p.makedelta.to_string()),
        ("ddl", p.ddl.as_str().to_string()),
        ("transforms", uses("transform")),
        ("hooks", uses("hook")),
    ]
}

pub fn manifest_fields(m: &Manifest) -> Vec<(&'static str, String)> {
    let mut config: Vec<String> = m.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
    config.sort();
    vec![
        ("kind", m.kind.to_string()),
        ("fuel", m.fuel.to_string()),
        ("run_fuel", m.run_fuel.to_string()),
        ("memory", m.memory.to_string()),
        ("table_elements", m.table_elements.to_string()),
        ("timeout", format_duration(Some(m.timeout))),
        ("grants", join(m.grants.iter(), ",")),
        ("write_grants", join(m.write_grants.iter(), ",")),
        ("tables", join(m.tables.iter(), ",")),
        ("write_tables", join(m.write_tables.iter(), ",")),
        ("on_error", m.on_error.to_string()),
        ("query_rows", m.query_row_cap.to_string()),
        ("max_statements", m.max_statements.to_string()),
        ("log_bytes", m.log_bytes.to_string()),
        ("rows", m.rows.to_string()),
        ("config", join(config.iter(), ", ")),
    ]
}

fn plugin_fields(p: &PluginState) -> Vec<(&'static str, String)> {
    let mut fields = vec![("sha256", p.sha256.clone())];
    fields.extend(manifest_fields(&p.manifest));
    fields
}
