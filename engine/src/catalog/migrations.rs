//! Versioned migrations of the control catalog (schema `ibex` in the
//! control database). Each runs once, in its own transaction, under an
//! advisory lock so two `ibex install` runs cannot interleave. Never edit a
//! released migration: add the next one.

pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "databases, relations, herds, dbgroups, syncs, settings",
        sql: r#"
CREATE TABLE ibex.db (
    name        text PRIMARY KEY,
    conn        jsonb NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ibex.db IS 'Databases ibex replicates; conn holds the connection info, including the password, which ibex never prints';

CREATE TABLE ibex.relation (
    id           serial PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('table', 'sequence')),
    schema_name  text NOT NULL,
    rel_name     text NOT NULL,
    key_columns  text[],
    key_source   text CHECK (key_source IN ('primary key', 'unique index')),
    added_from   text REFERENCES ibex.db (name) ON UPDATE CASCADE ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (schema_name, rel_name),
    CHECK ((kind = 'table') = (key_columns IS NOT NULL))
);
COMMENT ON TABLE ibex.relation IS 'Tables and sequences (Bucardo''s goats)';

CREATE TABLE ibex.herd (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ibex.herd_member (
    herd      text NOT NULL REFERENCES ibex.herd (name) ON UPDATE CASCADE ON DELETE CASCADE,
    relation  int  NOT NULL REFERENCES ibex.relation (id) ON DELETE CASCADE,
    PRIMARY KEY (herd, relation)
);

CREATE TABLE ibex.dbgroup (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ibex.dbgroup_member (
    dbgroup   text NOT NULL REFERENCES ibex.dbgroup (name) ON UPDATE CASCADE ON DELETE CASCADE,
    db        text NOT NULL REFERENCES ibex.db (name) ON UPDATE CASCADE,
    role      text NOT NULL CHECK (role IN ('source', 'target', 'fullcopy')),
    priority  int  NOT NULL DEFAULT 0,
    position  int  NOT NULL,
    PRIMARY KEY (dbgroup, db)
);

CREATE TABLE ibex.sync (
    name               text PRIMARY KEY,
    herd               text NOT NULL REFERENCES ibex.herd (name) ON UPDATE CASCADE,
    dbgroup            text NOT NULL REFERENCES ibex.dbgroup (name) ON UPDATE CASCADE,
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    conflict_strategy  text NOT NULL DEFAULT 'latest',
    autokick           boolean NOT NULL DEFAULT true,
    checktime_ms       bigint CHECK (checktime_ms > 0),
    onetimecopy        smallint NOT NULL DEFAULT 0 CHECK (onetimecopy IN (0, 1, 2)),
    kidsalive          boolean NOT NULL DEFAULT true,
    lock_timeout_ms    bigint CHECK (lock_timeout_ms > 0),
    isolation_level    text NOT NULL DEFAULT 'repeatable read'
                       CHECK (isolation_level IN ('repeatable read', 'serializable')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ibex.setting (
    key         text PRIMARY KEY,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- parse_ident() raises on bad syntax; lookups want "no match" instead.
CREATE FUNCTION ibex.try_parse_ident(typed text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN parse_ident(typed);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

COMMENT ON TABLE ibex.setting IS 'Key/value settings (ibex set / ibex show); unset keys take their built-in default';
"#,
    },
    Migration {
        version: 2,
        description: "run history and conflict log",
        sql: r#"
CREATE TABLE ibex.run (
    id          bigserial PRIMARY KEY,
    sync        text NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    state       text NOT NULL CHECK (state IN ('running', 'good', 'bad')),
    inserted    bigint NOT NULL DEFAULT 0,
    deleted     bigint NOT NULL DEFAULT 0,
    conflicts   bigint NOT NULL DEFAULT 0,
    attempts    int NOT NULL DEFAULT 1,
    tables      jsonb NOT NULL DEFAULT '[]',
    error       text
);
CREATE INDEX run_sync_started ON ibex.run (sync, started_at DESC);

CREATE TABLE ibex.conflict (
    run_id      bigint NOT NULL REFERENCES ibex.run (id) ON DELETE CASCADE,
    table_name  text NOT NULL,
    key         text NOT NULL,
    dbs         text[] NOT NULL,
    winner      text,
    reason      text NOT NULL
);
CREATE INDEX conflict_run ON ibex.conflict (run_id);
"#,
    },
    Migration {
        version: 3,
        description: "the running daemon",
        sql: r#"
CREATE TABLE ibex.daemon (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pid          int NOT NULL,
    host         text NOT NULL,
    backend_pid  int NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ibex.daemon IS 'The daemon serving this catalog; alive while its backend_pid is in pg_stat_activity';
"#,
    },
    Migration {
        version: 4,
        description: "WebAssembly plugins and where they are attached; old images",
        sql: r#"
CREATE TABLE ibex.plugin (
    name           text PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('conflict-handler', 'row-transform', 'sync-hooks')),
    wasm           bytea NOT NULL,
    sha256         text NOT NULL,
    precompiled    bytea,
    fuel           bigint NOT NULL,
    memory         bigint NOT NULL,
    timeout_ms     bigint NOT NULL,
    grants         text[] NOT NULL DEFAULT '{}',
    write_grants   text[] NOT NULL DEFAULT '{}',
    on_error       text NOT NULL DEFAULT 'abort',
    query_rows     bigint NOT NULL,
    config         jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ibex.plugin IS 'WebAssembly components with their manifest; every daemon runs exactly these bytes';

CREATE TABLE ibex.plugin_use (
    id          serial PRIMARY KEY,
    plugin      text NOT NULL REFERENCES ibex.plugin (name) ON UPDATE CASCADE,
    sync        text NOT NULL REFERENCES ibex.sync (name) ON UPDATE CASCADE ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('transform', 'hook')),
    relation    int REFERENCES ibex.relation (id) ON DELETE CASCADE,
    target_db   text REFERENCES ibex.db (name) ON UPDATE CASCADE ON DELETE CASCADE,
    hook_points text[],
    UNIQUE (plugin, sync, kind, relation, target_db)
);
COMMENT ON TABLE ibex.plugin_use IS 'Row transforms and sync hooks attached to syncs (conflict handlers are a sync''s conflict_strategy)';

ALTER TABLE ibex.relation ADD COLUMN capture_old boolean NOT NULL DEFAULT false;
ALTER TABLE ibex.plugin ADD COLUMN rows boolean NOT NULL DEFAULT true;
"#,
    },
    Migration {
        version: 5,
        description: "catalog identity, makedelta, bounded catch-up",
        sql: r#"
CREATE TABLE ibex.instance (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id          text NOT NULL DEFAULT substr(md5(random()::text || clock_timestamp()::text), 1, 16),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ibex.instance DEFAULT VALUES;
COMMENT ON TABLE ibex.instance IS 'This catalog''s identity, recorded on every db whose capture it owns';
ALTER TABLE ibex.sync ADD COLUMN makedelta boolean NOT NULL DEFAULT false;
ALTER TABLE ibex.relation ADD COLUMN makedelta boolean NOT NULL DEFAULT false;
ALTER TABLE ibex.run ADD COLUMN window_rows bigint, ADD COLUMN backlog bigint,
                     ADD COLUMN phases jsonb NOT NULL DEFAULT '[]',
                     ADD COLUMN error_kind text, ADD COLUMN plugin_failure text;
COMMENT ON COLUMN ibex.run.phases IS 'Seconds per phase of the run: [[phase, seconds], ...]';
COMMENT ON COLUMN ibex.run.backlog IS 'Delta rows still pending after a run that applied part of a large window; null when it applied all';
ALTER TABLE ibex.plugin ADD COLUMN tables text[] NOT NULL DEFAULT '{}',
                        ADD COLUMN write_tables text[] NOT NULL DEFAULT '{}',
                        ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
-- Native code is compiled by each daemon and never read from the catalog.
UPDATE ibex.plugin SET precompiled = NULL;
COMMENT ON COLUMN ibex.plugin.precompiled IS 'Unused (always null): each host compiles the component itself, see docs/PLUGINS-SECURITY.md';
"#,
    },
    Migration {
        version: 6,
        description: "databases that are not PostgreSQL (sqlite, flatfile targets)",
        sql: r#"
ALTER TABLE ibex.db ADD COLUMN target jsonb;
COMMENT ON COLUMN ibex.db.target IS 'Null for PostgreSQL (conn says where); else the foreign target, e.g. {"type": "sqlite", "path": "/x.db"}';
"#,
    },
    Migration {
        version: 7,
        description: "several daemons per catalog, each sync leased by one; a sync's ddl policy",
        sql: r#"
DROP TABLE ibex.daemon;
CREATE TABLE ibex.daemon (
    id           text PRIMARY KEY,
    pid          int NOT NULL,
    host         text NOT NULL,
    backend_pid  int NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    seen_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ibex.daemon IS 'Daemons serving this catalog; one is alive while its backend_pid is in pg_stat_activity';
CREATE TABLE ibex.lease (
    sync        text PRIMARY KEY REFERENCES ibex.sync (name) ON DELETE CASCADE ON UPDATE CASCADE,
    holder      text,
    token       bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT now(),
    taken_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE ibex.sync ADD COLUMN ddl text NOT NULL DEFAULT 'fail' CHECK (ddl IN ('fail', 'addcol'));
COMMENT ON TABLE ibex.lease IS 'Which daemon runs each sync, until expires_at (renewed by the holder); token grows at every takeover and fences older holders out on the dbs';
"#,
    },
    Migration {
        version: 8,
        description: "ddl=pause: tables a sync holds back until their columns match again",
        sql: r#"
ALTER TABLE ibex.sync DROP CONSTRAINT sync_ddl_check;
ALTER TABLE ibex.sync ADD CONSTRAINT sync_ddl_check CHECK (ddl IN ('fail', 'pause', 'addcol'));
CREATE TABLE ibex.paused_table (
    sync        text NOT NULL REFERENCES ibex.sync (name) ON DELETE CASCADE ON UPDATE CASCADE,
    table_name  text NOT NULL,
    reason      text NOT NULL,
    whole_sync  boolean NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sync, table_name)
);
COMMENT ON TABLE ibex.paused_table IS 'Tables a ddl=pause sync does not apply while their columns differ between dbs; whole_sync when the sync holds every table (several sources)';
"#,
    },
    Migration {
        version: 9,
        description: "capture=wal: a db's changes read from a logical replication slot",
        sql: r#"
ALTER TABLE ibex.db ADD COLUMN capture text NOT NULL DEFAULT 'trigger' CHECK (capture IN ('trigger', 'wal'));
COMMENT ON COLUMN ibex.db.capture IS 'trigger: row changes captured by triggers; wal: by a logical replication slot (engine/src/capture/wal.rs)';
"#,
    },
];

/// The schema version this binary expects.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}
