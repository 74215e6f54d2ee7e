//! Collected results: `results.json` (stable dotted keys, in messages per second,
//! microseconds and KiB), a Markdown table per section, and SVG plots.

use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One Markdown table.
#[derive(Debug, Clone)]
pub struct Table {
    /// Heading above the table.
    pub title: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
    /// Notes printed under the table (method, caveats).
    pub notes: Vec<String>,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    values: Map<String, Value>,
    tables: Vec<Table>,
    plots: Vec<PathBuf>,
}

impl Report {
    /// Sets a value under a dotted key such as `relay.peergroup.msgs_per_sec`.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let mut parts = key.split('.').peekable();
        let mut map = &mut self.values;
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                map.insert(part.to_string(), value.into());
                return;
            }
            let entry = map
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            map = entry.as_object_mut().expect("made an object above");
        }
    }

    /// Reads a value back by dotted key.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Value> {
        let mut value: Option<&Value> = None;
        let mut map = &self.values;
        for part in key.split('.') {
            value = map.get(part);
            if let Some(Value::Object(inner)) = value {
                map = inner;
            }
        }
        value
    }

    /// Adds a table.
    pub fn table(&mut self, table: Table) {
        self.tables.push(table);
    }

    /// Records a plot written to `path`.
    pub fn plot(&mut self, path: PathBuf) {
        self.plots.push(path);
    }

    /// Writes `results.json` and `results.md` into `dir`.
    pub fn write(&self, dir: &Path, header: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(&Value::Object(self.values.clone()))
            .map_err(std::io::Error::other)?;
        std::fs::write(dir.join("results.json"), json + "\n")?;
        std::fs::write(dir.join("results.md"), self.markdown(header))?;
        Ok(())
    }

    /// The Markdown report.
    pub fn markdown(&self, header: &str) -> String {
        let mut out = format!("{header}\n");
        for table in &self.tables {
            let _ = writeln!(out, "\n### {}\n", table.title);
            let _ = writeln!(out, "| {} |", table.columns.join(" | "));
            let _ = writeln!(
                out,
                "|{}",
                table.columns.iter().map(|_| " --- |").collect::<String>()
            );
            for row in &table.rows {
                let _ = writeln!(out, "| {} |", row.join(" | "));
            }
            for note in &table.notes {
                let _ = writeln!(out, "\n{note}");
            }
        }
        for plot in &self.plots {
            let name = plot.file_name().and_then(|n| n.to_str()).unwrap_or("plot");
            let _ = writeln!(out, "\n![{name}]({name})");
        }
        out
    }
}

/// Formats a number of messages per second for a table.
pub fn rate(msgs_per_sec: f64) -> String {
    if msgs_per_sec >= 1000.0 {
        format!("{:.1}k", msgs_per_sec / 1000.0)
    } else {
        format!("{msgs_per_sec:.0}")
    }
}

/// `value` rounded to `places` decimal places, for the JSON results (`round(0.456, 2)` is
/// 0.46).
pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// Formats a ratio for a table.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_keeps_the_places_asked_for() {
        assert_eq!(round(0.456, 2), 0.46);
        assert_eq!(round(24.84, 1), 24.8);
        assert_eq!(round(1.5, 0), 2.0);
    }

    #[test]
    fn dotted_keys_nest_and_read_back() {
        let mut report = Report::default();
        report.set("relay.peergroup.msgs_per_sec", 10.5);
        report.set("relay.coturn.msgs_per_sec", 3);
        report.set("direct.rtt_p50_us.udp", 40);
        assert_eq!(
            report.get("relay.peergroup.msgs_per_sec"),
            Some(&Value::from(10.5))
        );
        assert_eq!(
            report.get("relay.coturn.msgs_per_sec"),
            Some(&Value::from(3))
        );
        assert_eq!(report.get("direct.rtt_p50_us.udp"), Some(&Value::from(40)));
        assert_eq!(report.get("nothing.here"), None);
    }

    #[test]
    fn markdown_has_one_row_per_result() {
        let mut report = Report::default();
        report.table(Table {
            title: "Relay".into(),
            columns: vec!["relay".into(), "msgs/s".into()],
            rows: vec![vec!["a".into(), "1".into()], vec!["b".into(), "2".into()]],
            notes: vec!["note".into()],
        });
        let md = report.markdown("# x");
        assert!(md.contains("| relay | msgs/s |"));
        assert!(md.contains("| a | 1 |\n| b | 2 |"));
        assert_eq!(ratio(3.0, 2.0), "1.50");
        assert_eq!(rate(1500.0), "1.5k");
    }
}
