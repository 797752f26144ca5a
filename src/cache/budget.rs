//! Parsing of byte budgets as users write them (`20%`, `2GiB`, `512MiB`, `1.5GB`, `1000000`),
//! shared by the engine's `--budget` and the simulator's `--budgets`.

use crate::{Error, Result};

/// Binary and decimal unit suffixes, longest first so that `GiB` wins over `B`.
const UNITS: &[(&str, f64)] = &[
    ("tib", 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("gib", 1024.0 * 1024.0 * 1024.0),
    ("mib", 1024.0 * 1024.0),
    ("kib", 1024.0),
    ("tb", 1e12),
    ("gb", 1e9),
    ("mb", 1e6),
    ("kb", 1e3),
    ("t", 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("g", 1024.0 * 1024.0 * 1024.0),
    ("m", 1024.0 * 1024.0),
    ("k", 1024.0),
    ("b", 1.0),
];

/// Parses a budget: a percentage of `total_bytes` (`"20%"`, `"12.5%"`), a size with a binary
/// (`KiB`, `MiB`, `GiB`, `TiB`; bare `K`/`M`/`G`/`T` are binary too) or decimal (`kB`, `MB`,
/// `GB`, `TB`) unit, case-insensitive, or plain bytes. Fractions are rounded down to whole bytes.
///
/// ```
/// use moe_offload::cache::parse_budget;
/// assert_eq!(parse_budget("25%", 1000).unwrap(), 250);
/// assert_eq!(parse_budget("2GiB", 0).unwrap(), 2 << 30);
/// assert_eq!(parse_budget("1.5GB", 0).unwrap(), 1_500_000_000);
/// assert!(parse_budget("lots", 0).is_err());
/// ```
pub fn parse_budget(s: &str, total_bytes: u64) -> Result<u64> {
    let bad = |why: &str| {
        Error::InvalidOption(format!(
            "budget {s:?}: {why} (write e.g. 20%, 2GiB, 512MiB, 1.5GB or a number of bytes)"
        ))
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(pct) = t.strip_suffix('%') {
        let p: f64 = pct.trim().parse().map_err(|_| bad("not a number before %"))?;
        if !p.is_finite() || !(0.0..=100.0).contains(&p) {
            return Err(bad("a percentage must lie between 0% and 100%"));
        }
        return Ok((total_bytes as f64 * p / 100.0).floor() as u64);
    }
    let lower = t.to_ascii_lowercase();
    let (num, mult) = UNITS
        .iter()
        .find_map(|(u, m)| lower.strip_suffix(u).map(|n| (n.trim(), *m)))
        .unwrap_or((lower.as_str(), 1.0));
    let v: f64 = num.parse().map_err(|_| bad("not a number with a known unit"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad("must be a non-negative size"));
    }
    let bytes = v * mult;
    if bytes >= u64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(bytes.floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_budget("20%", 1000).unwrap(), 200);
        assert_eq!(parse_budget(" 100% ", 777).unwrap(), 777);
        assert_eq!(parse_budget("2GiB", 0).unwrap(), 2 * 1024 * 1024 * 1024);
        assert_eq!(parse_budget("512MiB", 0).unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_budget("512 mib", 0).unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_budget("1.5GB", 0).unwrap(), 1_500_000_000);
        assert_eq!(parse_budget("4k", 0).unwrap(), 4096);
        assert_eq!(parse_budget("123456", 0).unwrap(), 123_456);
        assert_eq!(parse_budget("10B", 0).unwrap(), 10);
    }

    #[test]
    fn rejects_nonsense_with_the_value_in_the_message() {
        for s in ["", "abc", "-1", "150%", "x%", "1.5XB", "NaN", "inf"] {
            let e = parse_budget(s, 100).unwrap_err().to_string();
            assert!(e.contains("budget"), "{s}: {e}");
        }
    }
}
