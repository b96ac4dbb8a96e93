//! Fetches the PostgreSQL server binaries of every major the harness can
//! start (10..=18) into target/pg-versions/, so test runs need not download
//! them (run by scripts/install-deps.sh). Prints one `major<TAB>bin dir` line
//! per major; fails if any major cannot be fetched.

use anyhow::Result;
use ibex_tests::versions::{MAJORS, cached_version, pg_bin_dir_for};

fn main() -> Result<()> {
    let mut failed = Vec::new();
    for major in MAJORS {
        match pg_bin_dir_for(major) {
            Ok(dir) => println!("{major}\t{}\t{}", cached_version(major).unwrap_or_default(), dir.display()),
            Err(err) => {
                eprintln!("PostgreSQL {major}: {err:#}");
                failed.push(major);
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("could not fetch PostgreSQL {failed:?}");
    }
    Ok(())
}
