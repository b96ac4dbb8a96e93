//! `ibex install`

use super::Context;
use crate::catalog::Catalog;
use crate::error::Result;

pub async fn run(ctx: &Context) -> Result<()> {
    let report = Catalog::install(&ctx.control).await?;
    if ctx.out.json {
        ctx.out.print_json(&report);
        return Ok(());
    }
    let target = ctx.control.describe();
    if report.created_database {
        ctx.out.line(format!("Created control database {target}"));
    }
    if report.from_version == report.to_version {
        ctx.out.line(format!("Catalog in {target} is up to date (schema version {})", report.to_version));
    } else {
        ctx.out.line(format!(
            "Installed catalog in {target}: schema version {} -> {}",
            report.from_version, report.to_version
        ));
    }
    Ok(())
}
