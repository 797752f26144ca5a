//! Presenting simulation results: the stdout table and the `--json` document.

use std::fmt::Write as _;
use std::path::Path;

use super::SimReport;
use crate::{Error, Result};

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

impl SimReport {
    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} steps, {} tokens, {} block executions, {} expert accesses, {} of experts",
            self.model.as_deref().unwrap_or("trace"),
            self.steps,
            self.tokens,
            self.records,
            self.accesses,
            human_bytes(self.total_expert_bytes as f64)
        );
        let _ = writeln!(
            s,
            "{:<8} {:>8} {:>7} {:>12} {:>12} {:>8} {:>9} {:>11} {:>10} {:>11}",
            "policy",
            "budget",
            "slots",
            "hits",
            "misses",
            "hit rate",
            "vs belady",
            "moved",
            "stall s",
            "tokens/s"
        );
        for r in &self.results {
            let vs = r.hit_rate_vs_belady.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
            let _ = writeln!(
                s,
                "{:<8} {:>8} {:>7} {:>12} {:>12} {:>7.1}% {:>9} {:>11} {:>10.3} {:>11.1}",
                r.policy,
                r.budget,
                r.slots,
                r.hits,
                r.misses,
                r.hit_rate * 100.0,
                vs,
                human_bytes(r.bytes_transferred as f64),
                r.stall_seconds,
                r.tokens_per_second
            );
        }
        s
    }

    /// Writes `{"results": [...], ...}` to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::input(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }
}
