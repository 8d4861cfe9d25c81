//! Prints criterion results as the markdown tables of `docs/BENCHMARKS.md`,
//! so the figures there are generated, not retyped.
//!
//! ```text
//! bench_table grid <criterion-dir>...
//!     one table per benchmark group: a row per function id, a column per
//!     parameter, each cell the median of the runs' medians
//! bench_table compare <before-dir>[,<before-dir>...] <after-dir>[,<after-dir>...]
//!     a row per benchmark: the before and after medians and after/before
//! bench_table throughput <before-file>[,...] <after-file>[,...]
//!     from the throughput benches' printed tables (one file per run): a
//!     row per cell (N, C) with the median over runs of each ratio column
//!     (`foreman/floor`, …) before and after
//! bench_table pools <before-file>[,...] <after-file>[,...] <pool> <peer>
//!     from the throughput benches' output with `FOREMAN_BENCH_POOLS` set
//!     (each row lists `name 512k p99 …` per pool): a row per cell with
//!     the median over runs of `pool`'s throughput over `peer`'s, before
//!     and after, and the median and range of after/before of `pool`'s
//!     throughput in runs paired in order (before 1 with after 1, …)
//! ```
//!
//! A `<criterion-dir>` is a `target/criterion` directory or any directory
//! below it (a group's folder copied elsewhere works too): every
//! `new/estimates.json` under it is read, with the ids from the
//! `new/benchmark.json` beside it. Several directories of one side are
//! separate runs of the same benches; a cell is the median of their
//! medians.
//!
//! Run: `cargo run -p foreman-support --bin bench_table -- grid target/criterion`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["grid", dirs @ ..] if !dirs.is_empty() => {
            load_runs(&dirs.iter().map(PathBuf::from).collect::<Vec<_>>()).map(|runs| grid(&runs))
        }
        ["compare", before, after] => split_dirs(before).and_then(|before| {
            let before = load_runs(&before)?;
            let after = load_runs(&split_dirs(after)?)?;
            Ok(compare(&before, &after))
        }),
        ["throughput", before, after] => split_dirs(before).and_then(|before| {
            let before = load_throughput(&before)?;
            let after = load_throughput(&split_dirs(after)?)?;
            Ok(compare_throughput(&before, &after))
        }),
        ["pools", before, after, pool, peer] => split_dirs(before).and_then(|before| {
            let before = load_pools(&before)?;
            let after = load_pools(&split_dirs(after)?)?;
            Ok(compare_pools(&before, &after, pool, peer))
        }),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("bench_table: {message}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: bench_table grid <criterion-dir>... | \
     bench_table compare <before-dir>[,<dir>...] <after-dir>[,<dir>...] | \
     bench_table throughput <before-file>[,<file>...] <after-file>[,<file>...] | \
     bench_table pools <before-file>[,<file>...] <after-file>[,<file>...] <pool> <peer>";

/// One benchmark's identity: criterion's group, function id and parameter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Id {
    group: String,
    function: String,
    parameter: String,
}

impl Id {
    fn full(&self) -> String {
        [&self.group, &self.function, &self.parameter]
            .iter()
            .filter(|part| !part.is_empty())
            .map(|part| part.as_str())
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// The median estimate (nanoseconds) of every benchmark of every run.
type Runs = BTreeMap<Id, Vec<f64>>;

fn split_dirs(list: &str) -> Result<Vec<PathBuf>, String> {
    let dirs: Vec<PathBuf> = list
        .split(',')
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .collect();
    if dirs.is_empty() {
        return Err(USAGE.to_string());
    }
    Ok(dirs)
}

fn load_runs(dirs: &[PathBuf]) -> Result<Runs, String> {
    let mut runs = Runs::new();
    for dir in dirs {
        let mut found = Vec::new();
        collect(dir, &mut found)?;
        if found.is_empty() {
            return Err(format!(
                "no criterion results (new/estimates.json) under {}",
                dir.display()
            ));
        }
        for (id, median) in found {
            runs.entry(id).or_default().push(median);
        }
    }
    Ok(runs)
}

fn collect(dir: &Path, found: &mut Vec<(Id, f64)>) -> Result<(), String> {
    let new = dir.join("new");
    if new.join("estimates.json").is_file() {
        found.push(read_result(&new)?);
        return Ok(());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|error| format!("cannot read {}: {error}", dir.display()))?;
    let mut children: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir() && !path.ends_with("report"))
        .collect();
    children.sort();
    for child in children {
        collect(&child, found)?;
    }
    Ok(())
}

fn read_result(new: &Path) -> Result<(Id, f64), String> {
    let benchmark = read_json(&new.join("benchmark.json"))?;
    let estimates = read_json(&new.join("estimates.json"))?;
    let text = |key: &str| {
        benchmark
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let id = Id {
        group: text("group_id"),
        function: text("function_id"),
        parameter: text("value_str"),
    };
    let median = estimates
        .pointer("/median/point_estimate")
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("{} has no median estimate", new.display()))?;
    Ok((id, median))
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    serde_json::from_str(&text).map_err(|error| format!("{} is not JSON: {error}", path.display()))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match (sorted.len() % 2, sorted.get(middle), middle.checked_sub(1)) {
        (1, Some(value), _) => *value,
        (_, Some(high), Some(low)) => sorted.get(low).map_or(f64::NAN, |low| (low + high) / 2.0),
        _ => f64::NAN,
    }
}

/// Nanoseconds as criterion prints them: ns, µs, ms or s, four digits.
fn duration(nanos: f64) -> String {
    let (value, unit) = if nanos < 1e3 {
        (nanos, "ns")
    } else if nanos < 1e6 {
        (nanos / 1e3, "µs")
    } else if nanos < 1e9 {
        (nanos / 1e6, "ms")
    } else {
        (nanos / 1e9, "s")
    };
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$} {unit}")
}

fn grid(runs: &Runs) -> String {
    let mut groups: BTreeMap<&str, Vec<(&Id, f64)>> = BTreeMap::new();
    for (id, medians) in runs {
        groups
            .entry(id.group.as_str())
            .or_default()
            .push((id, median(medians)));
    }
    let mut out = String::new();
    for (group, cells) in groups {
        let mut columns: Vec<&str> = cells.iter().map(|(id, _)| id.parameter.as_str()).collect();
        columns.sort_by(|a, b| natural(a, b));
        columns.dedup();
        let mut rows: Vec<&str> = cells.iter().map(|(id, _)| id.function.as_str()).collect();
        rows.sort_by(|a, b| natural(a, b));
        rows.dedup();
        let _ = writeln!(out, "{group} (median of {} run(s))\n", run_count(runs));
        let _ = writeln!(out, "| | {} |", columns.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(columns.len()));
        for row in rows {
            let row_cells: Vec<String> = columns
                .iter()
                .map(|column| {
                    cells
                        .iter()
                        .find(|(id, _)| id.function == row && id.parameter == *column)
                        .map_or_else(String::new, |(_, nanos)| duration(*nanos))
                })
                .collect();
            let _ = writeln!(out, "| {row} | {} |", row_cells.join(" | "));
        }
        let _ = writeln!(out);
    }
    out
}

fn compare(before: &Runs, after: &Runs) -> String {
    let mut out = format!(
        "(before: median of {} run(s); after: median of {} run(s))\n\n",
        run_count(before),
        run_count(after)
    );
    out.push_str("| benchmark | before | after | after / before |\n|---|---:|---:|---:|\n");
    let mut ratios = Vec::new();
    let mut ids: Vec<&Id> = after.keys().collect();
    ids.sort_by(|a, b| {
        natural(&a.function, &b.function).then_with(|| natural(&a.parameter, &b.parameter))
    });
    for id in ids {
        let Some(after_medians) = after.get(id) else {
            continue;
        };
        let Some(before_medians) = before.get(id) else {
            continue;
        };
        let (was, is) = (median(before_medians), median(after_medians));
        ratios.push(is / was);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} |",
            id.full(),
            duration(was),
            duration(is),
            is / was
        );
    }
    if !ratios.is_empty() {
        let _ = writeln!(
            out,
            "\nafter / before over {} benchmarks: median {:.2}, range {:.2}–{:.2}",
            ratios.len(),
            median(&ratios),
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        );
    }
    out
}

/// Every ratio column (`a/b` in its header) of every cell, per run:
/// `(N, C)` → column → one value per run.
type Throughput = BTreeMap<(u64, u64), BTreeMap<String, Vec<f64>>>;

fn load_throughput(files: &[PathBuf]) -> Result<Throughput, String> {
    let mut cells = Throughput::new();
    for file in files {
        let text = read_text(file)?;
        let mut header: Vec<String> = Vec::new();
        let mut rows = 0;
        for line in text.lines() {
            let fields = table_fields(line);
            if fields.first() == Some(&"N") {
                header = fields.iter().map(|field| field.to_string()).collect();
                continue;
            }
            let Some((n, c)) = cell_of(&fields) else {
                continue;
            };
            rows += 1;
            for (name, value) in header.iter().zip(&fields) {
                if name.contains('/') && !name.starts_with("p99") {
                    if let Ok(value) = value.parse::<f64>() {
                        cells
                            .entry((n, c))
                            .or_default()
                            .entry(name.clone())
                            .or_default()
                            .push(value);
                    }
                }
            }
        }
        if rows == 0 {
            return Err(format!("no throughput table in {}", file.display()));
        }
    }
    Ok(cells)
}

fn compare_throughput(before: &Throughput, after: &Throughput) -> String {
    let mut columns: Vec<&String> = after.values().flat_map(BTreeMap::keys).collect();
    columns.sort();
    columns.dedup();
    columns.retain(|column| before.values().any(|cell| cell.contains_key(*column)));
    let runs = |cells: &Throughput| {
        cells
            .values()
            .flat_map(BTreeMap::values)
            .map(Vec::len)
            .max()
            .unwrap_or(0)
    };
    let mut out = format!(
        "(medians over runs of each within-run ratio; before: {} run(s), after: {} run(s))\n\n",
        runs(before),
        runs(after)
    );
    let heads: Vec<String> = columns
        .iter()
        .map(|column| format!("{column} before | {column} after"))
        .collect();
    let _ = writeln!(out, "| N | C | {} |", heads.join(" | "));
    let _ = writeln!(out, "|---:|---:|{}", "---:|".repeat(2 * columns.len()));
    for (&(n, c), cell) in after {
        let values: Vec<String> = columns
            .iter()
            .map(|column| {
                let side = |cells: Option<&BTreeMap<String, Vec<f64>>>| {
                    cells
                        .and_then(|cell| cell.get(*column))
                        .map_or_else(String::new, |values| format!("{:.2}", median(values)))
                };
                format!("{} | {}", side(before.get(&(n, c))), side(Some(cell)))
            })
            .collect();
        let _ = writeln!(out, "| {n} | {c} | {} |", values.join(" | "));
    }
    out
}

/// Each run's throughput (requests per second) of each pool in each cell:
/// one map per file, `(N, C)` → pool → requests per second.
type PoolRuns = Vec<BTreeMap<(u64, u64), BTreeMap<String, f64>>>;

fn load_pools(files: &[PathBuf]) -> Result<PoolRuns, String> {
    let mut runs = PoolRuns::new();
    for file in files {
        let text = read_text(file)?;
        let mut cells = BTreeMap::new();
        for line in text.lines() {
            let fields = table_fields(line);
            let Some((n, c)) = cell_of(&fields) else {
                continue;
            };
            let mut pools = BTreeMap::new();
            for field in fields.iter().skip(2) {
                let mut words = field.split_whitespace();
                if let (Some(name), Some(rate)) = (words.next(), words.next()) {
                    if let Some(thousands) =
                        rate.strip_suffix('k').and_then(|k| k.parse::<f64>().ok())
                    {
                        pools.insert(name.to_string(), thousands * 1e3);
                    }
                }
            }
            if !pools.is_empty() {
                cells.insert((n, c), pools);
            }
        }
        if cells.is_empty() {
            return Err(format!(
                "no per-pool rows (`name 512k p99 …`) in {}",
                file.display()
            ));
        }
        runs.push(cells);
    }
    Ok(runs)
}

fn compare_pools(before: &PoolRuns, after: &PoolRuns, pool: &str, peer: &str) -> String {
    let rate =
        |run: &BTreeMap<(u64, u64), BTreeMap<String, f64>>, cell: &(u64, u64), name: &str| {
            run.get(cell).and_then(|pools| pools.get(name)).copied()
        };
    let ratios = |runs: &PoolRuns, cell: &(u64, u64)| -> Vec<f64> {
        runs.iter()
            .filter_map(|run| Some(rate(run, cell, pool)? / rate(run, cell, peer)?))
            .collect()
    };
    let mut cells: Vec<(u64, u64)> = after.iter().flat_map(|run| run.keys().copied()).collect();
    cells.sort_unstable();
    cells.dedup();
    let mut out = format!(
        "(before: {} run(s), after: {} run(s); runs paired in order)\n\n\
         | N | C | {pool}/{peer} before | {pool}/{peer} after | after / before | {pool} after / before, paired runs: median | range |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
        before.len(),
        after.len()
    );
    for cell in cells {
        let (was, is) = (
            median(&ratios(before, &cell)),
            median(&ratios(after, &cell)),
        );
        let paired: Vec<f64> = before
            .iter()
            .zip(after)
            .filter_map(|(b, a)| Some(rate(a, &cell, pool)? / rate(b, &cell, pool)?))
            .collect();
        let low = paired.iter().copied().fold(f64::INFINITY, f64::min);
        let high = paired.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            out,
            "| {} | {} | {was:.2} | {is:.2} | {:.2} | {:.2} | {low:.2}–{high:.2} |",
            cell.0,
            cell.1,
            is / was,
            median(&paired)
        );
    }
    out
}

/// The text of a benches' output file.
fn read_text(file: &Path) -> Result<String, String> {
    std::fs::read_to_string(file)
        .map_err(|error| format!("cannot read {}: {error}", file.display()))
}

/// The fields of a markdown table row, trimmed.
fn table_fields(line: &str) -> Vec<&str> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

/// The cell `(N, C)` a throughput row names in its first two fields.
fn cell_of(fields: &[&str]) -> Option<(u64, u64)> {
    Some((fields.first()?.parse().ok()?, fields.get(1)?.parse().ok()?))
}

fn run_count(runs: &Runs) -> usize {
    runs.values().map(Vec::len).max().unwrap_or(0)
}

/// Orders `queued=10000` after `queued=100` (numbers by value).
fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |text: &str| {
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        let prefix: String = text.chars().filter(|c| !c.is_ascii_digit()).collect();
        (prefix, digits.parse::<u64>().unwrap_or(0))
    };
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn durations_print_in_criterion_units() {
        assert_eq!(duration(189.4), "189 ns");
        assert_eq!(duration(70_700.0), "70.7 µs");
        assert_eq!(duration(1_500_000.0), "1.50 ms");
        assert_eq!(duration(2.5e9), "2.50 s");
    }

    #[test]
    fn numbers_in_ids_sort_by_value() {
        let mut ids = vec!["workers=10000", "workers=64", "workers=1", "workers=1024"];
        ids.sort_by(|a, b| natural(a, b));
        assert_eq!(
            ids,
            ["workers=1", "workers=64", "workers=1024", "workers=10000"]
        );
    }

    #[test]
    fn grid_and_compare_tables_from_result_folders() {
        let root = std::env::temp_dir().join(format!("bench_table_test_{}", std::process::id()));
        let write = |run: &str, workers: u32, median: f64| {
            let new = root
                .join(run)
                .join("cycle")
                .join("queued=0")
                .join(format!("workers={workers}"))
                .join("new");
            std::fs::create_dir_all(&new).unwrap();
            let benchmark = serde_json::json!({
                "group_id": "cycle", "function_id": "queued=0", "value_str": format!("workers={workers}")
            });
            let estimates = serde_json::json!({ "median": { "point_estimate": median } });
            std::fs::write(new.join("benchmark.json"), benchmark.to_string()).unwrap();
            std::fs::write(new.join("estimates.json"), estimates.to_string()).unwrap();
        };
        write("before", 1, 200.0);
        write("before", 64, 100.0);
        write("after", 1, 100.0);
        write("after", 64, 100.0);

        let after = load_runs(&[root.join("after")]).unwrap();
        let table = grid(&after);
        assert!(table.contains("| | workers=1 | workers=64 |"), "{table}");
        assert!(table.contains("| queued=0 | 100 ns | 100 ns |"), "{table}");

        let before = load_runs(&[root.join("before")]).unwrap();
        let table = compare(&before, &after);
        assert!(
            table.contains("| cycle/queued=0/workers=1 | 200 ns | 100 ns | 0.50 |"),
            "{table}"
        );
        assert!(table.contains("median 0.75, range 0.50–1.00"), "{table}");

        assert!(load_runs(&[root.join("missing")]).is_err());

        let printed = "| N | C | foreman req/s | foreman/floor | p99 foreman/floor |\n\
                       |---:|---:|---:|---:|---:|\n\
                       | 1 | 16 | 700k | 0.50 | 2.00 |\n";
        std::fs::create_dir_all(&root).unwrap();
        let (was, is) = (root.join("was.txt"), root.join("is.txt"));
        std::fs::write(&was, printed).unwrap();
        std::fs::write(&is, printed.replace("0.50", "0.70")).unwrap();
        let table = compare_throughput(
            &load_throughput(std::slice::from_ref(&was)).unwrap(),
            &load_throughput(&[is]).unwrap(),
        );
        assert!(
            table.contains("| N | C | foreman/floor before | foreman/floor after |"),
            "{table}"
        );
        assert!(table.contains("| 1 | 16 | 0.50 | 0.70 |"), "{table}");
        let subset = "| 1 | 1 | foreman 500k p99 9µs | floor 1000k p99 7µs |\n";
        let (off, on) = (root.join("off.txt"), root.join("on.txt"));
        std::fs::write(&off, subset).unwrap();
        std::fs::write(&on, subset.replace("500k", "450k")).unwrap();
        let table = compare_pools(
            &load_pools(std::slice::from_ref(&off)).unwrap(),
            &load_pools(std::slice::from_ref(&on)).unwrap(),
            "foreman",
            "floor",
        );
        assert!(
            table.contains("| 1 | 1 | 0.50 | 0.45 | 0.90 | 0.90 | 0.90–0.90 |"),
            "{table}"
        );
        std::fs::write(&was, "no table here").unwrap();
        assert!(load_throughput(&[was]).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
