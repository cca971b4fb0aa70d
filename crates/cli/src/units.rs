//! Human units on the command line: `4GiB`, `512MiB`, `1.5` cores, `24h`; and back for tables.

/// Parses a byte size: a plain number of bytes, or a number with `K`/`M`/`G`/`T`/`P` (powers of
/// 1000, also `KB`…) or `Ki`/`Mi`/`Gi`/`Ti`/`Pi` (powers of 1024, also `KiB`…).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit {
        "" | "B" => 1,
        "K" | "KB" | "k" | "kB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "P" | "PB" => 1_000_000_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        "Pi" | "PiB" => 1 << 50,
        other => {
            return Err(format!("unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, TiB, or KB, MB, GB)"))
        }
    };
    let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a size such as 512MiB or 4GiB"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("{s:?} is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// Parses CPU: cores (`1.5`, `2`) or thousandths (`500m`), into thousandths of a core.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let millis = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| format!("{s:?} is not a CPU amount such as 1.5 or 500m"))?
    } else {
        let cores: f64 = s.parse().map_err(|_| format!("{s:?} is not a CPU amount such as 1.5 or 500m"))?;
        let millis = cores * 1000.0;
        if !millis.is_finite() || !(0.0..=1e15).contains(&millis) || millis.fract() != 0.0 {
            return Err(format!("{s:?} must be a number of cores with at most three decimals"));
        }
        millis as u64
    };
    Ok(millis)
}

/// Parses a duration such as `24h`, `30d` or `90s` into seconds.
pub fn parse_seconds(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    humantime::parse_duration(s).map(|d| d.as_secs()).map_err(|e| format!("{s:?} is not a duration such as 24h: {e}"))
}

/// A byte size for people: `4GiB`, `1.5MiB`, `512B`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{}{}", value as u64, UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// CPU for people: `1.5`, `0.25`.
pub fn format_cpu(millis: u64) -> String {
    let s = format!("{:.3}", millis as f64 / 1000.0);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Seconds for people: `1day`, `2h 30m`.
pub fn format_seconds(s: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_bytes("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_bytes("123").unwrap(), 123);
        assert!(parse_bytes("4 parsecs").is_err());
        assert!(parse_bytes("-1GiB").is_err());
        assert!(parse_bytes("1e30PiB").is_err());
        assert!(parse_bytes("0.3B").is_err());
        assert_eq!(format_bytes(4 << 30), "4GiB");
        assert_eq!(format_bytes(1536), "1.5KiB");
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpu("1.5").unwrap(), 1500);
        assert_eq!(parse_cpu("500m").unwrap(), 500);
        assert_eq!(parse_cpu("2").unwrap(), 2000);
        assert!(parse_cpu("1.0005").is_err());
        assert!(parse_cpu("lots").is_err());
        assert_eq!(format_cpu(1500), "1.5");
        assert_eq!(format_cpu(2000), "2");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("24h").unwrap(), 86400);
        assert_eq!(parse_seconds("90").unwrap(), 90);
        assert!(parse_seconds("soon").is_err());
    }
}
