//! `key=value` arguments, bucardo-style. Each key may be given once; keys
//! nobody took are an error that lists the keys the command knows.

use crate::error::{Error, Result};

#[derive(Debug, Default)]
pub struct Params {
    /// Arguments without `=`, in order.
    pub names: Vec<String>,
    pairs: Vec<(String, String)>,
    taken: Vec<String>,
}

impl Params {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut params = Params::default();
        for arg in args {
            match arg.split_once('=') {
                Some((key, value)) => {
                    let key = key.trim().to_ascii_lowercase();
                    if key.is_empty() {
                        return Err(Error::usage(format!("bad argument {arg:?}: write key=value")));
                    }
                    if params.pairs.iter().any(|(k, _)| *k == key) {
                        return Err(Error::usage(format!("{key} is given twice")));
                    }
                    params.pairs.push((key, value.to_string()));
                }
                None => params.names.push(arg.clone()),
            }
        }
        Ok(params)
    }

    /// Parses and refuses bare names: every argument must be key=value.
    pub fn parse_pairs_only(args: &[String]) -> Result<Self> {
        let params = Self::parse(args)?;
        if let Some(name) = params.names.first() {
            return Err(Error::usage(format!("unexpected argument {name:?}: write key=value")));
        }
        Ok(params)
    }

    pub fn take(&mut self, key: &str) -> Option<String> {
        self.taken.push(key.to_string());
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    /// Takes the first of several spellings of a key (e.g. pass/password).
    pub fn take_any(&mut self, keys: &[&str]) -> Option<String> {
        let mut found = None;
        for key in keys {
            if let Some(v) = self.take(key) {
                found.get_or_insert(v);
            }
        }
        found
    }

    pub fn require(&mut self, key: &str, example: &str) -> Result<String> {
        match self.take(key) {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(Error::usage(format!("{key} is empty: e.g. {example}"))),
            None => Err(Error::usage(format!("{key} is required: e.g. {example}"))),
        }
    }

    /// The pairs nobody took, in the order given.
    pub fn remaining(&self) -> Vec<(String, String)> {
        self.pairs.iter().filter(|(k, _)| !self.taken.contains(k)).cloned().collect()
    }

    /// Errors on any key nobody took.
    pub fn finish(&self, known: &[&str]) -> Result<()> {
        if let Some((key, _)) = self.remaining().first() {
            return Err(Error::usage(format!("unknown key {key:?}: use {}", known.join(", "))));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_names_and_pairs() {
        let mut p = Params::parse(&args(&["a", "b", "db=x", "herd=h=1"])).unwrap();
        assert_eq!(p.names, vec!["a", "b"]);
        assert_eq!(p.take("herd").as_deref(), Some("h=1"));
        assert!(p.finish(&["herd"]).is_err());
        assert_eq!(p.take("db").as_deref(), Some("x"));
        assert!(p.finish(&["db", "herd"]).is_ok());
    }

    #[test]
    fn refuses_repeated_keys() {
        assert!(Params::parse(&args(&["db=x", "db=y"])).is_err());
    }
}
