//! `ibex completions SHELL` and `ibex man [SUBCOMMAND ...] [--all DIR]`:
//! generated from the clap grammar alone, so they need no ibex.toml and no
//! control database (packagers run them at build time).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory};

use super::{Cli, Output};
use crate::error::{Error, Result};

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// The subcommand whose page to print, e.g. `add db` (default: ibex itself)
    #[arg(value_name = "SUBCOMMAND", conflicts_with = "all")]
    pub command: Vec<String>,
    /// Write every page (ibex.1, ibex-add.1, ibex-add-db.1 ...) into DIR instead
    #[arg(long, value_name = "DIR")]
    pub all: Option<PathBuf>,
}

/// The full grammar with bin names and display names filled in (`ibex add
/// db`, `ibex-add-db`), as the generators expect.
fn grammar() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

pub fn completions(args: &CompletionsArgs) -> Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut grammar(), "ibex", &mut script);
    print_bytes(&script)
}

pub fn man(out: &Output, args: &ManArgs) -> Result<ExitCode> {
    let root = grammar();
    if let Some(dir) = &args.all {
        let written = write_all(&root, dir)?;
        out.done(format!("Wrote {written} man pages to {}", dir.display()));
        return Ok(ExitCode::SUCCESS);
    }
    let mut cmd = &root;
    for name in &args.command {
        let parent = cmd.get_bin_name().unwrap_or("ibex");
        cmd = cmd
            .find_subcommand(name)
            .ok_or_else(|| Error::Usage(format!("`{parent}` has no subcommand {name:?}: see `{parent} --help`")))?;
    }
    print_bytes(&render(cmd)?)
}

fn render(cmd: &clap::Command) -> Result<Vec<u8>> {
    let mut page = Vec::new();
    // Every page is from the ibex package, not from a package named after the subcommand.
    clap_mangen::Man::new(cmd.clone())
        .source(format!("ibex {}", env!("CARGO_PKG_VERSION")))
        .manual("ibex manual")
        .render(&mut page)
        .map_err(|e| Error::Config(format!("cannot render the man page of {}: {e}", cmd.get_name())))?;
    Ok(page)
}

/// One page per command, named after its display name (ibex-add-db.1), as
/// `man ibex-add-db` looks them up. Returns how many were written.
fn write_all(cmd: &clap::Command, dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}; choose a DIR you can write", dir.display())))?;
    let mut written = 0;
    let mut pending = vec![cmd];
    while let Some(cmd) = pending.pop() {
        pending.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()));
        let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, render(cmd)?)
            .map_err(|e| Error::Config(format!("cannot write {}: {e}; choose a DIR you can write", path.display())))?;
        written += 1;
    }
    Ok(written)
}

/// Writes to stdout; a closed pipe (`ibex man | head`) is not an error.
fn print_bytes(bytes: &[u8]) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Error::Config(format!("cannot write to stdout: {e}"))),
    }
}
