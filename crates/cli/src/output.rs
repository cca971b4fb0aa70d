//! Output for people (aligned tables) and for scripts (`--json`).

use serde::Serialize;

/// Prints `rows` under `headers`, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `value` as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `line` for people; under `--json` (`json`) a command that has no object to show
/// prints nothing.
pub fn note(json: bool, line: std::fmt::Arguments<'_>) {
    if !json {
        println!("{line}");
    }
}

/// Prints `key: value` lines, aligned.
pub fn fields(pairs: &[(&str, String)]) {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        println!("{:<w$}  {v}", format!("{k}:"), w = w + 1);
    }
}

/// Prints `items` as a JSON array when `json`, else as a table of `row(item)` under `headers`.
pub fn list<T: Serialize>(
    json: bool,
    items: &[T],
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        return self::json(&items);
    }
    table(headers, &items.iter().map(row).collect::<Vec<_>>());
    Ok(())
}

/// Prints `item` as a JSON object when `json`, else as a one-row table of `row(item)` under
/// `headers`.
pub fn item<T: Serialize>(
    json: bool,
    item: &T,
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        return self::json(item);
    }
    table(headers, &[row(item)]);
    Ok(())
}
