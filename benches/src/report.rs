//! The report: sections of rows, each a measurement with its baseline and
//! the ratio between them, rendered as markdown.

use std::fmt::Write as _;

use crate::Sizes;

/// One scenario's results.
#[derive(Debug)]
pub(crate) struct Section {
    pub(crate) title: String,
    /// What is measured and against what.
    pub(crate) about: String,
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<String>>,
    /// Goals met or missed, and why, in plain words.
    pub(crate) verdict: String,
}

impl Section {
    pub(crate) fn new(title: &str, about: &str, columns: &[&str]) -> Self {
        Section {
            title: title.to_owned(),
            about: about.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            verdict: String::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }
}

/// The whole run.
#[derive(Debug)]
pub(crate) struct Report {
    sizes: Sizes,
    server: String,
    sections: Vec<Section>,
}

impl Report {
    pub(crate) fn new(sizes: Sizes, server: &str) -> Self {
        Report {
            sizes,
            server: server.to_owned(),
            sections: Vec::new(),
        }
    }

    pub(crate) fn section(&mut self, section: Section) {
        eprintln!("{}", render(&section));
        self.sections.push(section);
    }

    pub(crate) fn markdown(&self) -> String {
        let mut out = String::from("# Benchmarks\n\n");
        if self.sizes.quick {
            out.push_str("**Quick mode: these numbers only show that the harness runs.**\n\n");
        }
        let _ = writeln!(
            out,
            "Every table below was measured by one run of `scripts/bench` \
             (`cargo run --profile speed -p outbox-bench -- --out BENCHMARKS.md`), each next to \
             its baseline in the same process, so the ratios are the result; absolute \
             numbers depend on the machine.\n\n\
             Machine: {}, {} CPUs; PostgreSQL at `{}` (local, trust auth); \
             the runner built with opt-level {}{}.\n",
            machine(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.server,
            env!("OUTBOX_BENCH_OPT_LEVEL"),
            if cfg!(debug_assertions) {
                " and debug assertions"
            } else {
                ""
            },
        );
        // Numbered order, whatever order they ran in.
        let mut sections: Vec<&Section> = self.sections.iter().collect();
        sections.sort_by_key(|section| number(&section.title));
        for section in sections {
            out.push_str(&render(section));
            out.push('\n');
        }
        out
    }
}

/// The number a section's title starts with ("2. Relay drain" and "2b. …"
/// are 2).
fn number(title: &str) -> u32 {
    let digits = title.len() - title.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    title[..digits].parse().unwrap_or(u32::MAX)
}

fn render(section: &Section) -> String {
    let mut out = format!("## {}\n\n{}\n\n", section.title, section.about);
    let _ = writeln!(out, "| {} |", section.columns.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        section.columns.iter().map(|_| "---|").collect::<String>()
    );
    for row in &section.rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    if !section.verdict.is_empty() {
        let _ = write!(out, "\n{}\n", section.verdict);
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    format!("{} ({})", cpu, std::env::consts::OS)
}

/// `n` with thousands separators.
pub(crate) fn count(n: f64) -> String {
    let n = n.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio, to two decimals, with an `×`.
pub(crate) fn ratio(x: f64) -> String {
    format!("{x:.2}×")
}

/// Milliseconds, to two decimals.
pub(crate) fn ms(d: std::time::Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The `q` quantile (0 to 1) of sorted samples.
pub(crate) fn quantile(sorted: &[std::time::Duration], q: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The median of a few samples.
pub(crate) fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}
