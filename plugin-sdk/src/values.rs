//! Typed accessors on values, rows and the sync's description.

use crate::{Row, SyncInfo, TableInfo, Value};

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            Value::Text(t) => match t.as_str() {
                "t" | "true" => Some(true),
                "f" | "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// Integers, and text that is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Text(t) => t.parse().ok(),
            _ => None,
        }
    }

    /// Floats, integers, and text that is a number (numeric columns).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::Text(t) => t.parse().ok(),
            _ => None,
        }
    }

    /// The text form of text-like values.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

impl TableInfo {
    /// The position of a column in rows of this table.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// A row's value of the named column.
    pub fn value<'r>(&self, row: &'r Row, name: &str) -> Option<&'r Value> {
        self.column_index(name).and_then(|i| row.get(i))
    }

    /// Sets a row's value of the named column; false if there is no such column.
    pub fn set(&self, row: &mut Row, name: &str, value: Value) -> bool {
        match self.column_index(name).and_then(|i| row.get_mut(i)) {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        }
    }
}

impl SyncInfo {
    /// A setting given with `config.KEY=VALUE` at `ibex add plugin`.
    pub fn config(&self, key: &str) -> Option<&str> {
        self.config.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The index of the db named `name`, as versions and winners use it.
    pub fn db_index(&self, name: &str) -> Option<u32> {
        self.dbs.iter().position(|d| d.name == name).map(|i| i as u32)
    }
}
