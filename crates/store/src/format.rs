//! Rendering query results as a table, CSV or JSON.

use gatehouse_model::escape_control;
use serde_json::Value;

/// Columns and rows of a read-only query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

const MAX_CELL: usize = 80;

/// A cell as a person sees it: control characters escaped (the stored
/// text is evidence; a terminal must not act on it).
fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => escape_control(s).into_owned(),
        other => escape_control(&other.to_string()).into_owned(),
    }
}

impl QueryResult {
    /// An aligned table with a header, like psql.
    pub fn to_table(&self) -> String {
        if self.columns.is_empty() {
            return "(0 rows)\n".to_string();
        }
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|v| {
                        let t = cell_text(v);
                        if t.chars().count() > MAX_CELL {
                            let mut s: String = t.chars().take(MAX_CELL - 1).collect();
                            s.push('…');
                            s
                        } else {
                            t
                        }
                    })
                    .collect()
            })
            .collect();
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        for r in &cells {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let line = |vals: &[String]| -> String {
            vals.iter()
                .enumerate()
                .map(|(i, v)| {
                    let w = widths.get(i).copied().unwrap_or(0);
                    format!("{v}{}", " ".repeat(w.saturating_sub(v.chars().count())))
                })
                .collect::<Vec<_>>()
                .join(" | ")
                .trim_end()
                .to_string()
        };
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| escape_control(c).into_owned())
            .collect();
        let mut out = line(&columns);
        out.push('\n');
        out.push_str(
            &widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("-+-"),
        );
        out.push('\n');
        for r in &cells {
            out.push_str(&line(r));
            out.push('\n');
        }
        let n = self.rows.len();
        out.push_str(&format!("({n} row{})\n", if n == 1 { "" } else { "s" }));
        out
    }

    /// RFC 4180 CSV with a header line. Control characters in cells are
    /// escaped as in the table (so no cell spans lines); `--format json`
    /// has the exact text.
    pub fn to_csv(&self) -> String {
        let esc = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = self
            .columns
            .iter()
            .map(|c| esc(&escape_control(c)))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
        for r in &self.rows {
            out.push_str(
                &r.iter()
                    .map(|v| esc(&cell_text(v)))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            out.push('\n');
        }
        out
    }

    /// A JSON array of objects, one per row.
    pub fn to_json(&self) -> String {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                Value::Object(
                    self.columns
                        .iter()
                        .cloned()
                        .zip(r.iter().cloned())
                        .collect(),
                )
            })
            .collect();
        Value::Array(rows).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> QueryResult {
        QueryResult {
            columns: vec!["type".into(), "n".into()],
            rows: vec![
                vec![json!("a,b"), json!(3)],
                vec![json!("say \"hi\""), Value::Null],
            ],
        }
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(
            sample().to_csv(),
            "type,n\n\"a,b\",3\n\"say \"\"hi\"\"\",\n"
        );
    }

    #[test]
    fn json_is_an_array_of_objects() {
        let v: Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(v[0]["type"], "a,b");
        assert_eq!(v[0]["n"], 3);
        assert!(v[1]["n"].is_null());
    }

    #[test]
    fn table_and_csv_escape_control_characters_json_keeps_them() {
        let raw = "true; \x1b[2K\r\x1b[1Aecho harmless\u{202e}\n\x07\0";
        let r = QueryResult {
            columns: vec!["command".into()],
            rows: vec![vec![json!(raw)]],
        };
        let shown = "true; \\e[2K\\r\\e[1Aecho harmless\\u{202e}\\n\\x07\\x00";
        for out in [r.to_table(), r.to_csv()] {
            assert!(out.contains(shown), "{out}");
            assert!(
                !out.trim_end_matches('\n')
                    .chars()
                    .any(|c| c != '\n' && gatehouse_model::text::is_unsafe_char(c)),
                "{out:?}"
            );
            assert_eq!(out.lines().filter(|l| l.contains("harmless")).count(), 1);
        }
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v[0]["command"], raw);
    }

    #[test]
    fn table_aligns_columns_and_counts_rows() {
        let t = sample().to_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "type     | n");
        assert_eq!(lines[2], "a,b      | 3");
        assert_eq!(lines.last(), Some(&"(2 rows)"));
    }
}
