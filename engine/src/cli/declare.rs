//! `ibex plan FILE`, `ibex apply FILE [--yes]`, `ibex dump [FILE]`: the
//! catalog as a TOML file (see `crate::declare`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::Context;
use super::capture::Affected;
use crate::declare::{self, dump, plan::Plan, state::State};
use crate::error::{Error, Result};

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The configuration file
    #[arg(value_name = "FILE.toml")]
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The configuration file
    #[arg(value_name = "FILE.toml")]
    pub file: PathBuf,
    /// Apply without asking (needed when stdin is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Write here instead of stdout
    #[arg(value_name = "FILE.toml")]
    pub file: Option<PathBuf>,
}

/// What `plan` and `apply` print with --json.
#[derive(Serialize)]
struct PlanReport<'a> {
    file: String,
    add: usize,
    change: usize,
    remove: usize,
    steps: &'a [declare::plan::Step],
    applied: bool,
}

fn report<'a>(file: &Path, plan: &'a Plan, applied: bool) -> PlanReport<'a> {
    use declare::plan::Action;
    PlanReport {
        file: file.display().to_string(),
        add: plan.count(Action::Add),
        change: plan.count(Action::Change),
        remove: plan.count(Action::Remove),
        steps: &plan.steps,
        applied,
    }
}

fn print_plan(ctx: &Context, file: &Path, plan: &Plan) {
    if plan.is_empty() {
        ctx.out.line(format!("No changes: the catalog matches {}", file.display()));
        return;
    }
    ctx.out.line(format!("Plan for {}: {}", file.display(), plan.summary()));
    for line in plan.lines() {
        ctx.out.line(format!("  {line}"));
    }
}

pub async fn plan(ctx: &Context, args: PlanArgs) -> Result<()> {
    let cat = ctx.catalog().await?;
    let planned = declare::plan_file(cat.client(), &args.file).await?;
    if ctx.out.json {
        ctx.out.print_json(&report(&args.file, &planned.plan, false));
    } else {
        print_plan(ctx, &args.file, &planned.plan);
    }
    Ok(())
}

/// Asks on the terminal; without one, refuses (scripts say --yes).
fn confirm(plan: &Plan) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Refused(
            "not applied: stdin is not a terminal, so nobody can confirm the plan; review it with `ibex plan FILE` and run `ibex apply FILE --yes`".into(),
        ));
    }
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "Apply these changes ({})? [y/N] ", plan.summary());
    let _ = stderr.flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| Error::usage(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Error::Refused("not applied: the plan was not confirmed; nothing changed".into()))
    }
}

pub async fn apply(ctx: &Context, args: ApplyArgs) -> Result<()> {
    let mut cat = ctx.catalog().await?;
    let planned = declare::plan_file(cat.client(), &args.file).await?;
    if !ctx.out.json {
        print_plan(ctx, &args.file, &planned.plan);
    }
    if planned.plan.is_empty() {
        if ctx.out.json {
            ctx.out.print_json(&report(&args.file, &planned.plan, false));
        }
        return Ok(());
    }
    if !args.yes {
        confirm(&planned.plan)?;
    }
    let shown = planned.plan.lines();
    let slots = declare::apply::prepare_wal_slots(cat.client(), &planned.current, &planned.desired).await?;
    let changed = cat
        .change(async |tx| {
            // The plan was made outside this transaction: apply only what was shown.
            let now = State::read(tx).await?;
            let replanned = declare::plan::diff(&now, &planned.desired);
            if replanned.lines() != shown {
                return Err(Error::Refused(
                    "not applied: the catalog changed since the plan was made; run `ibex apply` again".into(),
                ));
            }
            let applied = declare::apply::apply(tx, &planned.plan, &planned.current, &planned.desired).await?;
            let mut lines = applied.lines;
            let checked = Affected { syncs: applied.syncs, dbs: applied.dbs };
            lines.extend(checked.apply(tx, &ctx.out, true).await?);
            let leaving = Affected { syncs: Default::default(), dbs: applied.leaving_dbs };
            lines.extend(leaving.apply(tx, &ctx.out, false).await?);
            Ok((lines, applied.warnings))
        })
        .await;
    let (lines, warnings) = match changed {
        Ok(done) => done,
        Err(err) => {
            declare::apply::drop_wal_slots(cat.client(), &slots.made).await;
            return Err(err);
        }
    };
    for warning in warnings.into_iter().chain(slots.warnings) {
        ctx.out.warn(warning);
    }
    if ctx.out.json {
        ctx.out.print_json(&report(&args.file, &planned.plan, true));
        return Ok(());
    }
    for line in lines {
        ctx.out.line(line);
    }
    ctx.out.done(format!("Applied {} ({})", args.file.display(), planned.plan.summary()));
    Ok(())
}

pub async fn dump(ctx: &Context, args: DumpArgs) -> Result<()> {
    let cat = ctx.catalog().await?;
    let state = State::read(cat.client()).await?;
    if ctx.out.json && args.file.is_none() {
        ctx.out.print_json(&dump::to_config(&state));
        return Ok(());
    }
    let text = dump::to_toml(&state)?;
    match &args.file {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))?;
            ctx.out.done(format!("Wrote the catalog to {}", path.display()));
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(text.as_bytes());
        }
    }
    Ok(())
}
