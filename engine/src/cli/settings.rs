//! `ibex set key=value ...`, `ibex show [key ... | all]`

use super::{Context, KeyValues, Params, ShowArgs};
use crate::catalog::setting;
use crate::error::{Error, Result};

pub async fn set(ctx: &Context, args: KeyValues) -> Result<()> {
    let params = Params::parse_pairs_only(&args.pairs)?;
    let pairs = params.remaining();
    // Check every value before writing any.
    for (key, value) in &pairs {
        setting::normalize(key, value)?;
    }
    let mut cat = ctx.catalog().await?;
    let stored = cat
        .change(async |tx| {
            let mut stored = Vec::new();
            for (key, value) in &pairs {
                stored.push((key.clone(), setting::set(tx, key, value).await?));
            }
            Ok(stored)
        })
        .await?;
    for (key, value) in stored {
        ctx.out.done(format!("Set {key}={value}"));
    }
    Ok(())
}

pub async fn show(ctx: &Context, args: ShowArgs) -> Result<()> {
    let cat = ctx.catalog().await?;
    let settings = if args.keys.is_empty() || args.keys.iter().any(|k| k == "all") {
        if args.keys.len() > 1 {
            return Err(Error::usage("`all` shows every setting: give it alone"));
        }
        setting::all(cat.client()).await?
    } else {
        let mut out = Vec::new();
        for key in &args.keys {
            out.push(setting::get(cat.client(), key).await?);
        }
        out
    };
    if ctx.out.json {
        ctx.out.print_json(&settings);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = settings
        .iter()
        .map(|s| {
            vec![
                s.key.clone(),
                s.value.clone(),
                if s.is_default { "(default)".into() } else { format!("(default {})", s.default) },
                s.about.clone(),
            ]
        })
        .collect();
    ctx.out.table(&["Key", "Value", "", "About"], &rows);
    Ok(())
}
