//! Exact decimal arithmetic for numeric columns: a mantissa and a scale
//! (digits after the point). Enough for sums of money; NaN and the
//! infinities are refused, so the caller falls back to the newest change.

#[derive(Clone, Debug, PartialEq)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

impl Decimal {
    pub fn parse(text: &str) -> Option<Decimal> {
        let text = text.trim();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && fraction.is_empty() || !whole.chars().chain(fraction.chars()).all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let mantissa: i128 = format!("{whole}{fraction}").parse().ok()?;
        Some(Decimal { mantissa: if negative { -mantissa } else { mantissa }, scale: fraction.len() as u32 })
    }

    fn rescale(&self, scale: u32) -> Option<i128> {
        self.mantissa.checked_mul(10i128.checked_pow(scale - self.scale)?)
    }

    pub fn add(&self, other: &Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        Some(Decimal { mantissa: self.rescale(scale)?.checked_add(other.rescale(scale)?)?, scale })
    }

    pub fn sub(&self, other: &Decimal) -> Option<Decimal> {
        self.add(&Decimal { mantissa: other.mantissa.checked_neg()?, scale: other.scale })
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        if self.scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let scale = self.scale as usize;
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (whole, fraction) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{whole}.{fraction}")
    }
}

#[cfg(test)]
mod tests {
    use super::Decimal;

    #[test]
    fn adds_exactly() {
        let d = |s| Decimal::parse(s).unwrap();
        assert_eq!(d("10.50").add(&d("0.005")).unwrap().to_string(), "10.505");
        assert_eq!(d("-1.5").sub(&d("0.25")).unwrap().to_string(), "-1.75");
        assert_eq!(d("0.01").sub(&d("0.02")).unwrap().to_string(), "-0.01");
        assert!(Decimal::parse("NaN").is_none());
    }
}
