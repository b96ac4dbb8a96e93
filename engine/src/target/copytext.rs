//! PostgreSQL's COPY text format, read back into field values: rows end at
//! a newline, fields at a tab, `\N` is NULL, and a backslash escapes the
//! rest (`\n`, `\t`, `\\`, octal `\123`, hex `\x7f`, any other character
//! standing for itself), as the COPY reference page describes.

/// One row: each field's text, None for NULL.
pub type TextRow = Vec<Option<String>>;

/// Splits `line` (without its newline) into fields and decodes each.
pub fn parse_line(line: &[u8]) -> Result<TextRow, String> {
    line.split(|&b| b == b'\t').map(parse_field).collect()
}

fn parse_field(field: &[u8]) -> Result<Option<String>, String> {
    if field == b"\\N" {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&next) = field.get(i) else {
            return Err("a COPY field ends with a lone backslash".into());
        };
        i += 1;
        match next {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u8;
                for _ in 0..2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d as u8;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(value);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).map(Some).map_err(|e| format!("a COPY field is not UTF-8: {e}"))
}

/// Collects whole rows out of COPY data arriving in pieces of any size.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Adds a piece; returns the rows it completed.
    pub fn push(&mut self, piece: &[u8]) -> Result<Vec<TextRow>, String> {
        self.pending.extend_from_slice(piece);
        let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let rest = self.pending.split_off(last + 1);
        let complete = std::mem::replace(&mut self.pending, rest);
        complete[..complete.len() - 1].split(|&b| b == b'\n').map(parse_line).collect()
    }

    /// Rows must end with a newline: anything left over is a broken stream.
    pub fn finish(self) -> Result<(), String> {
        if self.pending.is_empty() { Ok(()) } else { Err("COPY data ended in the middle of a row".into()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_nulls() {
        let row = parse_line(b"1\t\\N\ta\\tb\\nc\\\\d\t\\101\\x42\\q\t").unwrap();
        assert_eq!(
            row,
            vec![Some("1".into()), None, Some("a\tb\nc\\d".into()), Some("ABq".into()), Some(String::new())]
        );
    }

    #[test]
    fn rows_split_across_pieces() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"1\tx").unwrap().is_empty());
        let rows = s.push(b"y\n2\t\\N\n3").unwrap();
        assert_eq!(rows, vec![vec![Some("1".into()), Some("xy".into())], vec![Some("2".into()), None]]);
        assert_eq!(s.push(b"\tz\n").unwrap(), vec![vec![Some("3".into()), Some("z".into())]]);
        s.finish().unwrap();
    }
}
