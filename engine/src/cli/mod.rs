//! The `ibex` command line, bucardo-style: `ibex VERB NOUN NAME key=value ...`.
//! One file per command family; this one holds the grammar and dispatch.
//!
//! Long on purpose: the whole grammar (every command, its help and its
//! example) is one clap definition, from which `--help`, the man pages and
//! the shell completions are all generated.

mod capture;
mod compare;
mod daemon;
mod db;
mod dbgroup;
mod ddl;
mod declare;
mod docs;
mod herd;
mod install;
mod output;
mod params;
mod plugin;
mod run;
mod sequences;
mod settings;
mod status;
mod sync;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use output::Output;
pub use params::Params;

use crate::catalog::Catalog;
use crate::config::Loaded;
use crate::error::Result;
use crate::pg::ConnInfo;

#[derive(Parser, Debug)]
#[command(
    name = "ibex",
    version,
    about = "Trigger-based multi-master replication for PostgreSQL",
    long_about = "Trigger-based multi-master replication for PostgreSQL, in the lineage of Bucardo 5.\n\nCommands read and write the control catalog (database `ibex` by default); the daemon reads it.",
    after_help = "Examples:\n  ibex install\n  ibex add db t1 dbname=btest1 host=127.0.0.1\n  ibex add all tables db=t1 herd=therd\n  ibex add sync foobar herd=therd dbs=t1:source,t2:source,t3:target\n  ibex list syncs --json",
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Control database as a libpq string or URL (else IBEX_CONTROL, ibex.toml, local `ibex`)
    #[arg(long, global = true, value_name = "DSN")]
    pub control: Option<String>,
    /// ibex.toml to read (default ./ibex.toml, then ~/.config/ibex/ibex.toml)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON
    #[arg(long, global = true)]
    pub json: bool,
    /// Log level on stderr: terse, normal, verbose or debug (default terse; the daemon reads log_level)
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the control database (if missing) and install or migrate the catalog
    #[command(after_help = "Example:\n  ibex --control 'host=127.0.0.1 dbname=ibex user=postgres' install")]
    Install,
    /// Add a db, table, sequence, herd, dbgroup or sync
    #[command(subcommand)]
    Add(AddCmd),
    /// List dbs, tables, sequences, herds, dbgroups or syncs
    #[command(subcommand)]
    List(ListCmd),
    /// Change a db, herd, dbgroup or sync
    #[command(subcommand)]
    Update(UpdateCmd),
    /// Remove a db, table, sequence, herd, dbgroup or sync
    #[command(subcommand, alias = "delete")]
    Remove(RemoveCmd),
    /// Set syncs active
    #[command(after_help = "Example:\n  ibex activate foobar")]
    Activate(SyncNames),
    /// Set syncs inactive (the daemon stops running them; their changes wait)
    #[command(after_help = "Example:\n  ibex deactivate foobar")]
    Deactivate(SyncNames),
    /// Change settings: ibex set key=value ...
    #[command(after_help = "Example:\n  ibex set log_level=verbose vac_interval=30s")]
    Set(KeyValues),
    /// Show settings: ibex show [KEY ... | all]
    #[command(after_help = "Examples:\n  ibex show all\n  ibex show log_level --json")]
    Show(ShowArgs),
    /// Check a sync's tables on every db and install or repair capture
    #[command(
        after_help = "Checks that every table has the same columns, types and key on every db of the sync,\nthen installs or repairs the triggers, delta tables and cursors.\n\nExamples:\n  ibex validate foobar\n  ibex validate all"
    )]
    Validate(SyncNames),
    /// Run syncs in the foreground
    #[command(subcommand)]
    Sync(SyncCmd),
    /// Run one schema change on every db of a sync, in a safe order
    #[command(
        after_help = "Additions run on targets first, removals (DROP, RENAME) on sources first; the statement\nruns in a transaction opened on every db before any commits, so a failure anywhere applies it\nnowhere. Capture is updated after; running syncs pick the new columns up at their next run.\n\nExamples:\n  ibex ddl foobar 'ALTER TABLE acct ADD COLUMN note text'\n  ibex ddl foobar 'ALTER TABLE acct DROP COLUMN note' --lock-timeout 30s"
    )]
    Ddl(DdlArgs),
    /// Work with plugins offline
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Sequences of multi-master syncs
    #[command(subcommand)]
    Sequences(SequencesCmd),
    /// Start the daemon (detached unless --foreground)
    #[command(
        after_help = "Runs the MCP, one CTL per sync it leases and the VAC. Several daemons may serve one catalog: each sync is run by the one holding its lease.\n\nExamples:\n  ibex start\n  ibex start --foreground   # for systemd or containers"
    )]
    Start(StartArgs),
    /// Stop the daemon: running cycles finish or roll back
    #[command(after_help = "Example:\n  ibex stop")]
    Stop(TimeoutArgs),
    /// Stop the daemon, then start it again
    #[command(after_help = "Example:\n  ibex restart")]
    Restart(StartArgs),
    /// Make the daemon re-read the catalog (it also does on every catalog change)
    #[command(after_help = "Example:\n  ibex reload")]
    Reload(TimeoutArgs),
    /// Check that the daemon answers
    #[command(after_help = "Exits non-zero when there is no answer.\n\nExample:\n  ibex ping --timeout 3")]
    Ping(TimeoutArgs),
    /// Ask the daemon to run syncs now; --wait waits for the runs and prints them
    #[command(
        after_help = "Exits non-zero if a run failed or did not finish in time (Bucardo's `kick sync 0`).\n\nExamples:\n  ibex kick foobar\n  ibex kick foobar other --wait 60"
    )]
    Kick(KickArgs),
    /// Check that every db of a sync holds the same rows (exit 1 when not)
    #[command(
        after_help = "Per table, row counts and a hash of every row computed in each database, in key buckets;\n--rows names the differing keys.\n\nExample:\n  ibex compare foobar --table pgbench_accounts --rows"
    )]
    Compare(CompareArgs),
    /// Repair what compare finds, through the normal apply path
    #[command(
        after_help = "Marks each differing key changed on the right sources (the one source of a one-way sync;\nevery source holding a version when sources disagree, settled by the conflict strategy),\nruns one cycle, and compares again. --dry-run only shows the plan.\n\nExample:\n  ibex reconcile foobar --dry-run"
    )]
    Reconcile(ReconcileArgs),
    /// Show how syncs are doing: ibex status [SYNC]
    #[command(after_help = "Examples:\n  ibex status\n  ibex status foobar --json")]
    Status(StatusArgs),
    /// Show what `ibex apply FILE` would change: add, change, remove per object
    #[command(
        after_help = "Compares a TOML description of the catalog (dbs, tables, sequences, herds, dbgroups, syncs,\nplugins, settings) with the catalog and prints the difference; changes nothing.\n\nExample:\n  ibex plan ibex-catalog.toml --json"
    )]
    Plan(declare::PlanArgs),
    /// Make the catalog match a TOML file, in one transaction (asks first, or --yes)
    #[command(
        after_help = "Prints the plan, then applies it in one catalog transaction through the same checks as\nthe add/update/remove commands (capture is installed or repaired on the syncs' dbs).\nObjects left out of the file are removed. Without a terminal, --yes is required.\n\nExamples:\n  ibex apply ibex-catalog.toml\n  ibex apply ibex-catalog.toml --yes"
    )]
    Apply(declare::ApplyArgs),
    /// Write the catalog as a TOML file that `ibex apply` reads back (no passwords)
    #[command(after_help = "Examples:\n  ibex dump > ibex-catalog.toml\n  ibex dump ibex-catalog.toml")]
    Dump(declare::DumpArgs),
    /// Print a shell completion script (needs no control database)
    #[command(
        after_help = "Examples:\n  ibex completions bash > /etc/bash_completion.d/ibex\n  ibex completions zsh > ~/.zfunc/_ibex\n  ibex completions fish > ~/.config/fish/completions/ibex.fish"
    )]
    Completions(docs::CompletionsArgs),
    /// Print the man page of ibex or of a subcommand, or write them all (needs no control database)
    #[command(
        after_help = "Examples:\n  ibex man > /usr/local/share/man/man1/ibex.1\n  ibex man add db | man -l -\n  ibex man --all /usr/local/share/man/man1"
    )]
    Man(docs::ManArgs),
}

#[derive(Subcommand, Debug)]
pub enum SyncCmd {
    /// Run one cycle of a sync now, in this process, and print what it did
    #[command(after_help = "Exits non-zero if the run fails.\n\nExample:\n  ibex sync run foobar")]
    Run(SyncName),
}

#[derive(Args, Debug)]
pub struct SyncName {
    #[arg(value_name = "SYNC")]
    pub sync: String,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Stay in the foreground (logs to stderr unless ibex.toml names a file)
    #[arg(long)]
    pub foreground: bool,
}

#[derive(Args, Debug)]
pub struct TimeoutArgs {
    /// Seconds to wait for the daemon
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct KickArgs {
    #[arg(required = true, value_name = "SYNC")]
    pub syncs: Vec<String>,
    /// Wait for the runs (at most SECS, default 600) and exit non-zero if one fails
    #[arg(long, num_args = 0..=1, default_missing_value = "600", value_name = "SECS")]
    pub wait: Option<u64>,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    #[arg(value_name = "SYNC")]
    pub sync: String,
    /// Only this table
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
    /// List the differing keys
    #[arg(long)]
    pub rows: bool,
}

#[derive(Args, Debug)]
pub struct ReconcileArgs {
    #[arg(value_name = "SYNC")]
    pub sync: String,
    /// Only this table
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
    /// Show what would be repaired, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(value_name = "SYNC")]
    pub sync: Option<String>,
}

#[derive(Args, Debug)]
pub struct DdlArgs {
    #[arg(value_name = "SYNC")]
    pub sync: String,
    /// The statement, e.g. 'ALTER TABLE acct ADD COLUMN note text'
    #[arg(value_name = "SQL")]
    pub statement: String,
    /// Give up on a db where the table stays locked this long (nothing is applied anywhere)
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub lock_timeout: String,
}

#[derive(Args, Debug)]
pub struct SyncNames {
    #[arg(required = true, value_name = "SYNC")]
    pub syncs: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KeyValues {
    #[arg(required = true, value_name = "KEY=VALUE")]
    pub pairs: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,
}

/// A name followed by key=value parameters.
#[derive(Args, Debug)]
pub struct NamedParams {
    #[arg(value_name = "NAME")]
    pub name: String,
    #[arg(value_name = "KEY=VALUE")]
    pub params: Vec<String>,
}

/// Names and key=value parameters, mixed.
#[derive(Args, Debug)]
pub struct NamesParams {
    #[arg(required = true, value_name = "NAME|KEY=VALUE")]
    pub args: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum AddCmd {
    /// Register a database (connects once to check)
    #[command(
        alias = "database",
        after_help = "Keys: dbname (required unless service= names it), host (a,b for several), port, user, pass,\nsslmode (disable|allow|prefer|require|verify-ca|verify-full), sslrootcert (a file, or system),\nsslcert, sslkey, sslcrl, channel_binding (disable|prefer|require), service, passfile, application_name,\noptions, connect_timeout, target_session_attrs (any|read-write). What is left out comes from the service file, PG* variables\nand ~/.pgpass, as with libpq.\ncapture=trigger|wal: how changes are read where the db is a source (wal: a logical replication\nslot; needs wal_level = logical; see README, \"WAL capture\").\n\nTargets that are not PostgreSQL (never a source; see README, \"Targets other than PostgreSQL\"):\n  type=sqlite path=/ABS/FILE.db    type=flatfile dir=/ABS/DIR dialect=postgres|mysql\n  type=mariadb dbname=X user=U [password= host= port= socket=/ABS/SOCK]\n\nExamples:\n  ibex add db t1 dbname=btest1 host=10.0.0.5 port=5432 user=repl pass=secret\n  ibex add db t2 service=prod sslmode=verify-full sslrootcert=/etc/ibex/ca.crt\n  ibex add db lite type=sqlite path=/var/lib/ibex/reports.db"
    )]
    Db(NamedParams),
    /// Register tables found on a db, optionally into a herd
    #[command(
        after_help = "Keys: db (required), herd, pkey=col[,col] (a unique index whose columns are NOT NULL, for tables without a primary key)\n\nExample:\n  ibex add table pgbench_accounts pgbench_branches pgbench_tellers db=t1 herd=therd"
    )]
    Table(NamesParams),
    /// Register sequences found on a db, optionally into a herd
    #[command(
        after_help = "Keys: db (required), herd\n\nExample:\n  ibex add sequence public.orders_id_seq db=t1 herd=therd"
    )]
    Sequence(NamesParams),
    /// Register every table (or sequence) of a db; tables without a key are skipped with a warning
    #[command(
        after_help = "Keys: db (required), herd, schema\n\nExamples:\n  ibex add all tables db=t1 herd=therd\n  ibex add all sequences db=t1 herd=therd schema=public"
    )]
    All(AllArgs),
    /// Create a herd of registered tables and sequences
    #[command(alias = "relgroup", after_help = "Example:\n  ibex add herd therd pgbench_accounts pgbench_branches")]
    Herd(HerdArgs),
    /// Group dbs and give each a role: source, target or fullcopy
    #[command(
        after_help = "Members are DB[:ROLE[:PRIORITY]]; without a role the first is a source, the rest targets.\nPriority (default 0) breaks ties of the latest strategy: higher wins.\n\nExample:\n  ibex add dbgroup tgroup t1:source t2:source t3:source t4:source t5:target"
    )]
    Dbgroup(DbGroupArgs),
    /// Create a sync: a herd replicated among the dbs of a dbgroup
    #[command(
        after_help = "Keys: herd (or tables=T1,T2), dbs (a dbgroup, or DB:ROLE,DB:ROLE), conflict_strategy\n(latest|latest_all_tables|abort|skip|random|db1,db2,...), autokick (true), checktime (off),\nonetimecopy (0|1|2), kidsalive (true), status (active|inactive), lock_timeout, isolation_level,\nmakedelta (false), ddl (fail|pause|addcol)\n\nExample:\n  ibex add sync foobar herd=therd dbs=tgroup autokick=false"
    )]
    Sync(NamedParams),
    /// Add a WebAssembly plugin (conflict handler, row transform or sync hooks)
    #[command(
        after_help = "Keys: kind (conflict-handler|row-transform|sync-hooks; found from the component when left out),\nfuel (per call), memory (e.g. 64MiB), timeout (e.g. 10s), grant=DB[,DB] (read-only queries),\nwrite=DB[,DB] (writes in the run's transaction), on_error (abort|fallback=STRATEGY),\nquery_rows, config.KEY=VALUE (handed to the plugin)\n\nExample:\n  ibex add plugin merge additive_merge.wasm config.columns=abalance on_error=fallback=latest"
    )]
    Plugin(PluginAddArgs),
    /// Attach a row transform to a sync (all tables and dbs, or one of each)
    #[command(
        after_help = "Keys: sync (required), table, target\n\nExample:\n  ibex add transform mask sync=foobar table=customers target=analytics"
    )]
    Transform(NamedParams),
    /// Attach sync hooks to a sync at Bucardo's customcode points
    #[command(
        after_help = "Keys: sync (required), when=POINT[,POINT]: before_sync, after_sync, before_txn, after_txn,\nbefore_check_rows, exception\n\nExample:\n  ibex add hook fixer sync=foobar when=exception"
    )]
    Hook(NamedParams),
}

#[derive(Args, Debug)]
pub struct PluginAddArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    #[arg(value_name = "FILE.wasm")]
    pub file: PathBuf,
    /// Refuse the component unless its sha256 is this (hex), e.g. from its publisher
    #[arg(long, value_name = "HEX")]
    pub expect_sha256: Option<String>,
    #[arg(value_name = "KEY=VALUE")]
    pub params: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PluginTestArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// A JSON batch, e.g. {"sync": ..., "table": ..., "conflicts": [...]} for a conflict handler
    #[arg(long, value_name = "FILE.json")]
    pub input: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum SequencesCmd {
    /// Give each source's sequences a common increment and its own offset, so keys never collide
    #[command(
        after_help = "The sequences that fill columns (serial, identity) of the sync's tables get INCREMENT BY N\n(default: ten, or twice the sources) and, on the i-th source of the dbgroup, values that are\ni+1 modulo N, above any value handed out so far. Keys: increment=N\n\nExample:\n  ibex sequences stagger foobar"
    )]
    Stagger(NamedParams),
}

#[derive(Subcommand, Debug)]
pub enum PluginCmd {
    /// Run a plugin offline on a sample batch and print its answer
    #[command(after_help = "Example:\n  ibex plugin test merge --input examples/plugin-test-conflicts.json")]
    Test(PluginTestArgs),
}

#[derive(Args, Debug)]
pub struct AllArgs {
    /// tables or sequences
    #[arg(value_parser = ["tables", "sequences"])]
    pub what: String,
    #[arg(value_name = "KEY=VALUE")]
    pub params: Vec<String>,
}

#[derive(Args, Debug)]
pub struct HerdArgs {
    #[arg(value_name = "HERD")]
    pub name: String,
    #[arg(value_name = "TABLE")]
    pub members: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DbGroupArgs {
    #[arg(value_name = "DBGROUP")]
    pub name: String,
    #[arg(required = true, value_name = "DB[:ROLE[:PRIORITY]]")]
    pub members: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ListCmd {
    /// Registered databases (passwords masked)
    #[command(alias = "db", alias = "databases")]
    Dbs,
    /// Registered tables with their keys and herds
    #[command(alias = "table")]
    Tables,
    /// Registered sequences
    #[command(alias = "sequence")]
    Sequences,
    /// Herds and their members
    #[command(alias = "herd", alias = "relgroups")]
    Herds,
    /// Dbgroups and their members' roles
    #[command(alias = "dbgroup")]
    Dbgroups,
    /// Syncs and their parameters
    #[command(alias = "sync")]
    Syncs,
    /// Plugins, their limits and where they are used
    #[command(alias = "plugin")]
    Plugins,
    /// Running daemons of this catalog and the syncs whose lease each holds
    #[command(alias = "daemon")]
    Daemons,
}

#[derive(Subcommand, Debug)]
pub enum UpdateCmd {
    /// Change how to reach a db (checks the new settings by connecting)
    #[command(
        alias = "database",
        after_help = "Keys: as for add db, and status (active|inactive), capture (trigger|wal: switching keeps every pending change)\n\nExamples:\n  ibex update db t1 host=10.0.0.6 pass=newsecret sslmode=verify-full\n  ibex update db t1 capture=wal"
    )]
    Db(NamedParams),
    /// Change how a table is captured
    #[command(
        after_help = "Keys: capture_old=true|false: keep the row before each change, so conflict handlers can\nmerge column by column (e.g. additive-merge)\n\nExample:\n  ibex update table pgbench_accounts capture_old=true"
    )]
    Table(NamedParams),
    /// Add or remove herd members
    #[command(
        alias = "relgroup",
        after_help = "Keys: add=T[,T], remove=T[,T]\n\nExample:\n  ibex update herd therd add=public.orders remove=public.old_orders"
    )]
    Herd(NamedParams),
    /// Replace the members of a dbgroup
    #[command(after_help = "Example:\n  ibex update dbgroup tgroup t1:source t2:source t5:target")]
    Dbgroup(DbGroupArgs),
    /// Change sync parameters
    #[command(
        after_help = "Keys: as for `add sync`, plus herd and dbs\n\nExample:\n  ibex update sync foobar checktime=30s conflict_strategy=t1,t2"
    )]
    Sync(NamedParams),
    /// Replace a plugin's component and/or change its manifest (a running daemon swaps it on reload)
    #[command(
        after_help = "Arguments: [FILE.wasm] [KEY=VALUE ...], keys as for `add plugin`\n\nExample:\n  ibex update plugin merge merge-v2.wasm timeout=2s"
    )]
    Plugin(NamedParams),
}

#[derive(Subcommand, Debug)]
pub enum RemoveCmd {
    /// Forget a db (refused while a sync uses it)
    #[command(alias = "database", after_help = "Example:\n  ibex remove db t5")]
    Db(Names),
    /// Forget tables (they leave their herds)
    #[command(after_help = "Example:\n  ibex remove table public.pgbench_history")]
    Table(Names),
    /// Forget sequences (they leave their herds)
    #[command(after_help = "Example:\n  ibex remove sequence public.orders_id_seq")]
    Sequence(Names),
    /// Remove a herd (refused while a sync uses it); its tables stay registered
    #[command(alias = "relgroup", after_help = "Example:\n  ibex remove herd therd")]
    Herd(Names),
    /// Remove a dbgroup (refused while a sync uses it)
    #[command(after_help = "Example:\n  ibex remove dbgroup tgroup")]
    Dbgroup(Names),
    /// Remove a sync
    #[command(after_help = "Example:\n  ibex remove sync foobar")]
    Sync(Names),
    /// Remove a plugin (refused while a sync uses it)
    #[command(after_help = "Example:\n  ibex remove plugin merge")]
    Plugin(Names),
    /// Detach a row transform from a sync
    #[command(after_help = "Example:\n  ibex remove transform mask sync=foobar")]
    Transform(NamedParams),
    /// Detach sync hooks from a sync
    #[command(after_help = "Example:\n  ibex remove hook fixer sync=foobar")]
    Hook(NamedParams),
}

#[derive(Args, Debug)]
pub struct Names {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// What every command gets: where the catalog is and how to print.
pub struct Context {
    pub control: ConnInfo,
    pub out: Output,
}

impl Context {
    pub async fn catalog(&self) -> Result<Catalog> {
        Catalog::open(&self.control).await
    }
}

/// Entry point of the `ibex` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return output::clap_error(err),
    };
    let out = Output::new(cli.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            out.error(&format!("cannot start the async runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, out)) {
        Ok(code) => code,
        Err(err) => {
            // The kind decides the exit code; --json also gets an error object.
            let kind = err.kind();
            if out.json {
                let mut error =
                    serde_json::json!({ "kind": kind, "exit_code": kind.exit_code(), "message": err.to_string() });
                if let crate::error::Error::Plugin { failure, .. } = &err {
                    error["plugin_failure"] = serde_json::json!(failure);
                }
                out.print_json(&serde_json::json!({ "error": error }));
            }
            out.error(&err.to_string());
            ExitCode::from(kind.exit_code())
        }
    }
}

pub async fn run(cli: Cli, out: Output) -> Result<ExitCode> {
    // Generated from the grammar alone: no ibex.toml, no catalog.
    match &cli.command {
        Command::Completions(a) => return docs::completions(a),
        Command::Man(a) => return docs::man(&out, a),
        _ => {}
    }
    let level: crate::logging::LogLevel = cli.log_level.as_deref().unwrap_or("terse").parse()?;
    let loaded = Loaded::load(cli.config.as_deref())?;
    let control = loaded.control(cli.control.as_deref())?;
    let ctx = Context { control, out };
    // The daemon sets up its own logging (file, format, catalog level).
    if !matches!(cli.command, Command::Start(_) | Command::Restart(_)) {
        crate::logging::init(level, crate::logging::LogFormat::Plain, None)?;
    }
    match cli.command {
        Command::Start(a) => return daemon::start(&ctx, &loaded, a, cli.log_level.as_deref()).await,
        Command::Stop(a) => return daemon::stop(&ctx, &loaded, a).await,
        Command::Restart(a) => {
            daemon::stop(&ctx, &loaded, TimeoutArgs { timeout: 60 }).await?;
            return daemon::start(&ctx, &loaded, a, cli.log_level.as_deref()).await;
        }
        Command::Reload(a) => return daemon::reload(&ctx, a).await,
        Command::Ping(a) => return daemon::ping(&ctx, a).await,
        Command::Kick(a) => return daemon::kick(&ctx, a).await,
        Command::Compare(a) => return compare::compare(&ctx, a).await,
        Command::Reconcile(a) => return compare::reconcile(&ctx, a).await,

        Command::Install => install::run(&ctx).await?,
        Command::Add(cmd) => match cmd {
            AddCmd::Db(a) => db::add(&ctx, a).await?,
            AddCmd::Table(a) => table::add(&ctx, crate::catalog::RelKind::Table, a).await?,
            AddCmd::Sequence(a) => table::add(&ctx, crate::catalog::RelKind::Sequence, a).await?,
            AddCmd::All(a) => table::add_all(&ctx, a).await?,
            AddCmd::Herd(a) => herd::add(&ctx, a).await?,
            AddCmd::Dbgroup(a) => dbgroup::add(&ctx, a).await?,
            AddCmd::Sync(a) => sync::add(&ctx, a).await?,
            AddCmd::Plugin(a) => plugin::add(&ctx, a).await?,
            AddCmd::Transform(a) => plugin::add_transform(&ctx, a).await?,
            AddCmd::Hook(a) => plugin::add_hook(&ctx, a).await?,
        },
        Command::List(cmd) => match cmd {
            ListCmd::Dbs => db::list(&ctx).await?,
            ListCmd::Tables => table::list(&ctx, crate::catalog::RelKind::Table).await?,
            ListCmd::Sequences => table::list(&ctx, crate::catalog::RelKind::Sequence).await?,
            ListCmd::Herds => herd::list(&ctx).await?,
            ListCmd::Dbgroups => dbgroup::list(&ctx).await?,
            ListCmd::Syncs => sync::list(&ctx).await?,
            ListCmd::Plugins => plugin::list(&ctx).await?,
            ListCmd::Daemons => daemon::list(&ctx).await?,
        },
        Command::Update(cmd) => match cmd {
            UpdateCmd::Db(a) => db::update(&ctx, a).await?,
            UpdateCmd::Table(a) => table::update(&ctx, a).await?,

            UpdateCmd::Herd(a) => herd::update(&ctx, a).await?,
            UpdateCmd::Dbgroup(a) => dbgroup::update(&ctx, a).await?,
            UpdateCmd::Sync(a) => sync::update(&ctx, a).await?,
            UpdateCmd::Plugin(a) => plugin::update(&ctx, a).await?,
        },
        Command::Remove(cmd) => match cmd {
            RemoveCmd::Db(a) => db::remove(&ctx, a).await?,
            RemoveCmd::Table(a) => table::remove(&ctx, crate::catalog::RelKind::Table, a).await?,
            RemoveCmd::Sequence(a) => table::remove(&ctx, crate::catalog::RelKind::Sequence, a).await?,
            RemoveCmd::Herd(a) => herd::remove(&ctx, a).await?,
            RemoveCmd::Dbgroup(a) => dbgroup::remove(&ctx, a).await?,
            RemoveCmd::Sync(a) => sync::remove(&ctx, a).await?,
            RemoveCmd::Plugin(a) => plugin::remove(&ctx, a).await?,
            RemoveCmd::Transform(a) => plugin::remove_use(&ctx, a, "transform").await?,
            RemoveCmd::Hook(a) => plugin::remove_use(&ctx, a, "hook").await?,
        },
        Command::Activate(a) => sync::set_status(&ctx, a, "active").await?,
        Command::Deactivate(a) => sync::set_status(&ctx, a, "inactive").await?,
        Command::Set(a) => settings::set(&ctx, a).await?,
        Command::Show(a) => settings::show(&ctx, a).await?,
        Command::Validate(a) => run::validate(&ctx, a).await?,
        Command::Sync(SyncCmd::Run(a)) => return run::run_once(&ctx, a).await,
        Command::Status(a) => status::show(&ctx, a).await?,
        Command::Plugin(PluginCmd::Test(a)) => plugin::test(&ctx, a).await?,
        Command::Sequences(SequencesCmd::Stagger(a)) => sequences::stagger(&ctx, a).await?,
        Command::Ddl(a) => ddl::run(&ctx, a).await?,
        Command::Plan(a) => declare::plan(&ctx, a).await?,
        Command::Apply(a) => declare::apply(&ctx, a).await?,
        Command::Dump(a) => declare::dump(&ctx, a).await?,
        Command::Completions(_) | Command::Man(_) => {} // handled at the top
    }
    Ok(ExitCode::SUCCESS)
}
