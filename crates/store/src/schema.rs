//! The versioned schema and its migrations. A migration is appended, never edited.

/// Migrations in order; index + 1 is the version each one brings the store to.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: samples, stack dictionary, frames, symbols by build ID.
    "
    CREATE TABLE frames (
        frame_id  UBIGINT PRIMARY KEY,
        kind      UTINYINT NOT NULL,
        module    VARCHAR NOT NULL,
        build_id  VARCHAR,
        address   UBIGINT NOT NULL,
        name      VARCHAR            -- set for kernel and JIT frames, resolved on the host
    );
    CREATE TABLE symbols (
        build_id     VARCHAR NOT NULL,  -- GNU build ID, or 'path:<module>' when there is none
        file_offset  UBIGINT NOT NULL,
        function     VARCHAR NOT NULL,
        file         VARCHAR,
        line         INTEGER,
        PRIMARY KEY (build_id, file_offset)
    );
    CREATE TABLE stacks (
        stack_id   UBIGINT PRIMARY KEY,
        frame_ids  VARCHAR NOT NULL     -- leaf first, comma-separated frame ids
    );
    CREATE TABLE samples (
        ts_ms      BIGINT NOT NULL,
        profiler   VARCHAR NOT NULL,
        value_type VARCHAR NOT NULL,
        unit       VARCHAR NOT NULL,
        host       VARCHAR,
        pid        INTEGER,
        tid        INTEGER,
        comm       VARCHAR,
        exe        VARCHAR,
        cgroup     VARCHAR,
        stack_id   UBIGINT NOT NULL,
        value      BIGINT NOT NULL,
        weight     DOUBLE NOT NULL
    );
    ",
    // 2: the run a sample belongs to (on-demand and triggered runs); NULL for continuous.
    "ALTER TABLE samples ADD COLUMN run BIGINT;",
    // 3: the config service a sample's process belongs to (by its selector), if any.
    "ALTER TABLE samples ADD COLUMN service VARCHAR;",
    // 4: inlined frames carry their own source location (their name is in `frames.name`).
    "ALTER TABLE frames ADD COLUMN file VARCHAR; ALTER TABLE frames ADD COLUMN line INTEGER;",
    // 5: profilers with several values per stack (malloc: bytes, counts, live bytes) say which
    // is the default one (index 0); profiler-specific labels (`state=sleeping`,
    // `syscall=write`) go in `detail` as `k=v;k=v`; histograms have a table of buckets.
    "
    ALTER TABLE samples ADD COLUMN value_index UTINYINT DEFAULT 0;
    ALTER TABLE samples ADD COLUMN detail VARCHAR;
    CREATE TABLE histograms (
        ts_ms    BIGINT NOT NULL,
        profiler VARCHAR NOT NULL,
        name     VARCHAR NOT NULL,
        unit     VARCHAR NOT NULL,
        key      VARCHAR NOT NULL,
        host     VARCHAR,
        pid      INTEGER,
        comm     VARCHAR,
        exe      VARCHAR,
        run      BIGINT,
        service  VARCHAR,
        le       UBIGINT NOT NULL,   -- inclusive upper bound of the bucket
        count    DOUBLE NOT NULL
    );
    ",
    // 6: batches that came over the wire, by the id their sender gave them, so a batch sent
    // twice (a retry after a lost reply, a replayed disk buffer) is stored once.
    "
    CREATE TABLE batches (
        batch_id    VARCHAR PRIMARY KEY,
        host        VARCHAR,
        received_ms BIGINT NOT NULL,
        sample_rows BIGINT NOT NULL
    );
    ",
    // 7: a symbol resolved late (by the server, from debug info) carries the functions inlined
    // at its address, innermost first, as JSON `[[name, file, line], …]`; host-side
    // symbolization stores those as frames of their own instead.
    "ALTER TABLE symbols ADD COLUMN inlined VARCHAR;",
    // 8: run history: the last state of every run a server saw end, so it outlives the server
    // process.
    "
    CREATE TABLE runs (
        id          UBIGINT PRIMARY KEY,
        host        VARCHAR NOT NULL,
        profiler    VARCHAR NOT NULL,
        state       VARCHAR NOT NULL,
        recorded_ms BIGINT NOT NULL,
        json        VARCHAR NOT NULL
    );
    ",
    // 9: timeline spans: CPU samples, blocks off CPU and requests, each on its thread with a
    // start and a length in microseconds, and the stack of the sample it belongs to.
    "
    CREATE TABLE spans (
        start_us  BIGINT NOT NULL,
        dur_us    BIGINT NOT NULL,
        kind      VARCHAR NOT NULL,
        profiler  VARCHAR NOT NULL,
        host      VARCHAR,
        pid       INTEGER NOT NULL,
        tid       INTEGER NOT NULL,
        comm      VARCHAR,
        stack_id  UBIGINT,
        label     VARCHAR,
        run       BIGINT
    );
    ",
    // 10: the fleet server's control plane (hosts, unfinished runs, placements, tuner state):
    // one JSON document per (kind, key), the latest `updated_ms` winning; `deleted` is a
    // tombstone, forgotten by retention.
    "
    CREATE TABLE control (
        kind       VARCHAR NOT NULL,
        key        VARCHAR NOT NULL,
        updated_ms BIGINT NOT NULL,
        deleted    BOOLEAN NOT NULL,
        json       VARCHAR NOT NULL,
        PRIMARY KEY (kind, key)
    );
    ",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
