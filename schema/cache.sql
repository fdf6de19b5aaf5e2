-- schema/cache.sql: the tasamd cache of image embeddings and task adapters
-- (STATE_DIR/cache.db).
--
-- Versioned with PRAGMA user_version; PRAGMA application_id is 0x7473616d
-- ("tsam") so a foreign SQLite file is recognised and moved aside. Each
-- "-- migration N" block takes a database from version N-1 to N; tasamd
-- (server/cache.c, cache_migrations[]) runs the missing blocks in order, each
-- in one transaction together with the user_version bump. server/cache.c
-- holds the same text; tests/test_server_units.c checks they agree.
--
-- Embedding and adapter blobs live in their own tables so that bumping
-- last_used and hits on a cache hit rewrites a small row, not a 4 MiB one.
-- The two kinds have separate byte budgets (cache-bytes, adapter-cache-bytes),
-- each with LRU eviction by last_used. A database of an older version is
-- upgraded in place at start (its rows are kept).

-- migration 1
CREATE TABLE embedding (
    id           INTEGER PRIMARY KEY,
    image_sha256 TEXT    NOT NULL,          -- sha256 hex of the image bytes
    model_id     TEXT    NOT NULL,          -- eng_sam_model_id()
    precision    TEXT    NOT NULL,          -- fp32 | fp16 | bf16
    width        INTEGER NOT NULL,          -- original image size
    height       INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,          -- blob size
    crc32        INTEGER NOT NULL,          -- CRC-32 (zlib) of the blob
    created      INTEGER NOT NULL,          -- unix milliseconds
    last_used    INTEGER NOT NULL,          -- unix milliseconds, LRU order
    hits         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (image_sha256, model_id, precision)
);
CREATE INDEX embedding_last_used ON embedding (last_used);
CREATE TABLE embedding_blob (
    embedding_id INTEGER PRIMARY KEY REFERENCES embedding (id) ON DELETE CASCADE,
    data         BLOB NOT NULL              -- [256,64,64] little-endian f32
);

-- migration 2
CREATE TABLE adapter (
    id               INTEGER PRIMARY KEY,
    adapter_id       TEXT    NOT NULL UNIQUE,  -- sha256 hex of task_normalized NUL hypernet_id
    task             TEXT    NOT NULL,         -- the task as first given
    task_normalized  TEXT    NOT NULL,         -- trimmed, spaces collapsed, ASCII lower-case
    hypernet_id      TEXT    NOT NULL,         -- content id of the hypernetwork that made it
    hypernet_version TEXT    NOT NULL,         -- its version label
    text_model       TEXT    NOT NULL,         -- the text encoder that embedded the task
    rank             INTEGER NOT NULL,         -- LoRA rank
    alpha            REAL    NOT NULL,         -- LoRA alpha (scale alpha / rank)
    bytes            INTEGER NOT NULL,         -- blob size
    crc32            INTEGER NOT NULL,         -- CRC-32 (zlib) of the blob
    created          INTEGER NOT NULL,         -- unix milliseconds
    last_used        INTEGER NOT NULL,         -- unix milliseconds, LRU order
    hits             INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX adapter_last_used ON adapter (last_used);
CREATE TABLE adapter_blob (
    adapter_row INTEGER PRIMARY KEY REFERENCES adapter (id) ON DELETE CASCADE,
    data        BLOB NOT NULL                  -- the adapter file (safetensors, adapters/adapter.h)
);
