//! Names of catalog objects (dbs, herds, dbgroups, syncs). They end up in
//! NOTIFY channel names (`ibex_kick_<sync>`, 63 bytes at most) and in
//! command lines, so they are kept plain.

use crate::error::{Error, Result};

pub const MAX_NAME_LEN: usize = 48;

pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if starts_well && rest_ok && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "bad {kind} name {name:?}: use up to {MAX_NAME_LEN} letters, digits, '_', '-' or '.', starting with a letter or '_'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn accepts_plain_and_refuses_odd_names() {
        assert!(check_name("db", "t1").is_ok());
        assert!(check_name("db", "eu-west.main_2").is_ok());
        for bad in ["", "1abc", "a b", "x\";drop", "é", &"a".repeat(49)] {
            assert!(check_name("db", bad).is_err(), "{bad:?} accepted");
        }
    }
}
