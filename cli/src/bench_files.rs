//! The files a benchmark writes for people to compare: `<prefix>.json` (everything it
//! measured), `<prefix>.csv` (one line per measured row) and `<prefix>.svg` (its plot, drawn
//! with [`crate::chart`]). One place, so every benchmark names, creates and announces them the
//! same way.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cairn_cli::bench_files::BenchFiles;
//! #[derive(serde::Serialize)]
//! struct Row { round: u32, restore_ms: f64 }
//! let rows = vec![Row { round: 0, restore_ms: 812.5 }];
//! let files = BenchFiles::new("benches/rescale/rescale".as_ref())?;
//! files.write_json(&rows)?;
//! files.write_csv(&rows)?; // header `round,restore_ms` from the field names
//! cairn_cli::chart::grouped_bars(&files.svg(), "restore", &["0".into()], &[("ms", vec![812.5])])?;
//! files.announce();
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;

type BResult<T> = Result<T, Box<dyn std::error::Error>>;

/// `<prefix>.json`, `<prefix>.csv` and `<prefix>.svg` of one benchmark run.
#[derive(Clone, Debug)]
pub struct BenchFiles {
    prefix: PathBuf,
}

impl BenchFiles {
    /// The files below `prefix` (`benches/rescale/rescale` gives `benches/rescale/rescale.json`,
    /// ...); creates the directory they go into.
    pub fn new(prefix: &Path) -> BResult<Self> {
        if let Some(parent) = prefix.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        Ok(Self {
            prefix: prefix.to_path_buf(),
        })
    }

    /// `<prefix><ext>` (`ext` with its dot).
    pub fn path(&self, ext: &str) -> PathBuf {
        let mut p = self.prefix.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    }

    /// Where the plot goes.
    pub fn svg(&self) -> PathBuf {
        self.path(".svg")
    }

    /// Writes `value` as pretty JSON to `<prefix>.json`.
    pub fn write_json<T: Serialize + ?Sized>(&self, value: &T) -> BResult<()> {
        std::fs::write(
            self.path(".json"),
            serde_json::to_string_pretty(value)? + "\n",
        )?;
        Ok(())
    }

    /// Writes `rows` to `<prefix>.csv`: a header of the rows' field names, then one line per
    /// row (flat structs; `None` is an empty cell, text with commas is quoted).
    pub fn write_csv<R: Serialize>(&self, rows: &[R]) -> BResult<()> {
        let mut w = csv::Writer::from_path(self.path(".csv"))?;
        for r in rows {
            w.serialize(r)?;
        }
        w.flush()?;
        Ok(())
    }

    /// Writes all three files (`value` as JSON, `rows` as CSV, the plot `draw` makes at the
    /// SVG's path) and prints where they are: how a benchmark ends.
    pub fn write_all<T: Serialize + ?Sized, R: Serialize>(
        &self,
        value: &T,
        rows: &[R],
        draw: impl FnOnce(&Path) -> BResult<()>,
    ) -> BResult<()> {
        self.write_json(value)?;
        self.write_csv(rows)?;
        draw(&self.svg())?;
        self.announce();
        Ok(())
    }

    /// Prints where the three files are.
    pub fn announce(&self) {
        println!(
            "wrote {}, {}, {}",
            self.path(".json").display(),
            self.path(".csv").display(),
            self.svg().display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Row {
        name: String,
        round: u32,
        ms: f64,
        remote_ms: Option<f64>,
    }

    #[test]
    fn csv_has_a_header_and_quotes_what_needs_it() -> BResult<()> {
        let dir = tempfile::tempdir()?;
        let files = BenchFiles::new(&dir.path().join("sub").join("bench"))?;
        let rows = [
            Row {
                name: "a,b".into(),
                round: 0,
                ms: 1.5,
                remote_ms: None,
            },
            Row {
                name: "c".into(),
                round: 1,
                ms: 2.0,
                remote_ms: Some(3.25),
            },
        ];
        files.write_csv(&rows)?;
        files.write_json(&rows)?;
        let csv = std::fs::read_to_string(dir.path().join("sub/bench.csv"))?;
        assert_eq!(
            csv,
            "name,round,ms,remote_ms\n\"a,b\",0,1.5,\nc,1,2.0,3.25\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(files.path(".json"))?)?;
        assert_eq!(json[1]["remote_ms"], 3.25);
        Ok(())
    }
}
