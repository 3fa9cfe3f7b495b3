//! The schema, as numbered migrations applied at start.
//!
//! `schema_version` holds one row: the number of the last migration applied. A binary
//! applies the ones after it, in one transaction under an advisory lock (nodes starting
//! together take turns), and refuses a database whose number is higher than it knows:
//! that database was migrated by a newer chat-server, whose data it might misread.
//!
//! Distribution: every table that grows with the chat is keyed first by the room
//! (`rooms.num`, standing for the room pair `(low, high)`): the **distribution column**
//! is `rooms.num` = `messages.room`. Every hot statement names one room (a send, a page of
//! history, a receipt), so on a sharded PostgreSQL (Citus) the two tables would be
//! co-located by it and each statement would touch one shard; `rooms`' `(low, high)`
//! lookup and the per-user tables (`profiles`, `blocks`, `block_counters`, `erased`) are
//! small and would be reference tables. Room numbers come from an identity column: they
//! need not be gap-free (only message ids within a room must be, and those come from the
//! locked room row; a blocker's block changes, from the locked `block_counters` row).
//!
//! Text that is sorted (user ids, room ids) is `COLLATE "C"`: bytewise, as the protocol
//! orders ids, whatever the database's default collation.

/// Numbers every block row 1.. per blocker, in the order the blocks were made, and sets
/// each blocker's counter to the last: migration 4 and an import (which loads blocks
/// without numbers) end with it.
macro_rules! number_blocks {
    () => {
        "
    UPDATE blocks b SET change = n.change, changed_ms = b.since_ms FROM (
        SELECT blocker, blocked,
               row_number() OVER (PARTITION BY blocker ORDER BY since_ms, blocked) AS change
        FROM blocks
    ) n WHERE b.blocker = n.blocker AND b.blocked = n.blocked;
    INSERT INTO block_counters (blocker, last)
        SELECT blocker, max(change) FROM blocks GROUP BY blocker;
    "
    };
}
pub(super) use number_blocks;

/// The migrations, in order: the database is at version `n` once the first `n` ran.
pub const MIGRATIONS: &[&str] = &[
    // 1: the whole chat.
    r#"
    CREATE TABLE rooms (
        num bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        low text COLLATE "C" NOT NULL,
        high text COLLATE "C" NOT NULL,
        -- The newest message id: the next message gets last_id + 1, taken under this
        -- row's lock, so ids are gap-free whichever node writes.
        last_id bigint NOT NULL DEFAULT 0,
        last_sent_ms bigint NOT NULL DEFAULT -9223372036854775808,
        unread_low bigint NOT NULL DEFAULT 0,
        unread_high bigint NOT NULL DEFAULT 0,
        -- The room's change counter (see `ChatMessage::change`).
        change bigint NOT NULL DEFAULT 0,
        delivered_low bigint NOT NULL DEFAULT 0,
        delivered_high bigint NOT NULL DEFAULT 0,
        -- In both participants' inboxes: false once retention removed every message.
        listed boolean NOT NULL DEFAULT false,
        UNIQUE (low, high)
    );
    CREATE INDEX rooms_inbox_low ON rooms (low, last_sent_ms DESC) WHERE listed;
    CREATE INDEX rooms_inbox_high ON rooms (high, last_sent_ms DESC) WHERE listed;

    CREATE TABLE messages (
        room bigint NOT NULL REFERENCES rooms (num),
        id bigint NOT NULL,
        user_id text COLLATE "C" NOT NULL,
        message text NOT NULL,
        sent_ms bigint NOT NULL,
        seen_ms bigint,
        client_message_id text COLLATE "C",
        delivered_ms bigint,
        edited_ms bigint,
        deleted_ms bigint,
        change bigint NOT NULL,
        PRIMARY KEY (room, id)
    );
    -- Exactly-once sends: checked under the room's lock, this index is the backstop.
    CREATE UNIQUE INDEX messages_client_id ON messages (room, user_id, client_message_id)
        WHERE client_message_id IS NOT NULL;
    CREATE INDEX messages_changes ON messages (room, change);
    CREATE INDEX messages_sender ON messages (room, user_id);

    CREATE TABLE profiles (
        user_id text COLLATE "C" PRIMARY KEY,
        name text NOT NULL
    );

    CREATE TABLE blocks (
        blocker text COLLATE "C" NOT NULL,
        blocked text COLLATE "C" NOT NULL,
        since_ms bigint NOT NULL,
        PRIMARY KEY (blocker, blocked)
    );

    CREATE TABLE erased (
        user_id text COLLATE "C" PRIMARY KEY,
        at_ms bigint NOT NULL
    );

    -- The last webhook seq (one row, for every hook), taken under the row's lock so
    -- that seqs follow commit order across nodes.
    CREATE TABLE webhook_seq (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        last bigint NOT NULL
    );
    CREATE TABLE webhook_outbox (
        hook text NOT NULL,
        seq bigint NOT NULL,
        recipient text NOT NULL,
        id text NOT NULL,
        created_ms bigint NOT NULL,
        body text NOT NULL,
        PRIMARY KEY (hook, seq)
    );
    CREATE TABLE webhook_dead (
        hook text NOT NULL,
        seq bigint NOT NULL,
        recipient text NOT NULL,
        id text NOT NULL,
        created_ms bigint NOT NULL,
        body text NOT NULL,
        reason text NOT NULL,
        dead_ms bigint NOT NULL,
        PRIMARY KEY (hook, seq)
    );
    "#,
    // 2: cluster duties (webhook delivery, retention sweeps) run on one node at a time,
    // the holder of an advisory lock (`leader.rs`). A commit that puts events in the
    // outbox, on whichever node, wakes that node: one notification per transaction
    // (PostgreSQL folds identical notifications of a transaction into one), sent only when
    // the transaction commits.
    r#"
    CREATE FUNCTION webhook_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('chat_webhook_outbox', '');
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER webhook_outbox_notify AFTER INSERT ON webhook_outbox
        FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox_notify();

    -- Presence across nodes, for `offline_only` webhooks (`presence.rs`): each node lists
    -- the users connected to it and beats its heartbeat; the rows of a node whose
    -- heartbeat stopped count for nothing, and are cleared later. Small: one row per
    -- connected user and node; a reference table on a sharded PostgreSQL.
    CREATE TABLE cluster_nodes (
        name text PRIMARY KEY,
        seen timestamptz NOT NULL
    );
    CREATE TABLE presence (
        user_id text COLLATE "C" NOT NULL,
        node text NOT NULL,
        PRIMARY KEY (user_id, node)
    );
    CREATE INDEX presence_node ON presence (node);
    "#,
    // 3: hooks whose receiver answered 410 Gone, so that no node writes or posts their
    // events, whichever node got the 410 and whichever holds the duties later. Written
    // with the dead letter of the event that got it; emptied when the cluster starts
    // afresh (`presence.rs`), as one server's 410 lasts until it restarts. One row per
    // configured hook at most: a reference table on a sharded PostgreSQL.
    r#"
    CREATE TABLE webhook_gone (
        hook text PRIMARY KEY,
        gone_at timestamptz NOT NULL DEFAULT now()
    );
    "#,
    // 4: a blocker's block changes are numbered, so that a node can tell a `block` or
    // `unblock` event that NATS lost and say it again (`fanout::nats`). `block_counters`
    // holds each blocker's last change number, taken under its row lock by the round that
    // blocks or unblocks: gap-free, as a room's ids. A row of `blocks` says the pair's
    // latest state and the change that set it: `since_ms` NULL is a lifted block, a
    // tombstone kept so that a repair can say `unblock`; every reader of blocks skips
    // tombstones. `changed_ms` is when that change was made, for a node that knows no
    // change number of the blocker yet. Existing blocks are numbered 1.. per blocker in
    // the order they were made. Per-user tables: reference tables on a sharded PostgreSQL.
    concat!(
        r#"
    ALTER TABLE blocks ALTER COLUMN since_ms DROP NOT NULL,
        ADD COLUMN change bigint NOT NULL DEFAULT 0,
        ADD COLUMN changed_ms bigint NOT NULL DEFAULT 0;
    ALTER TABLE blocks ALTER COLUMN change DROP DEFAULT,
        ALTER COLUMN changed_ms DROP DEFAULT;
    CREATE TABLE block_counters (
        blocker text COLLATE "C" PRIMARY KEY,
        last bigint NOT NULL
    );
    "#,
        number_blocks!(),
        r#"
    CREATE UNIQUE INDEX blocks_changes ON blocks (blocker, change);
    "#
    ),
];

/// The version this binary brings a database to.
pub const VERSION: u64 = MIGRATIONS.len() as u64;

/// Runs before the migrations, in their transaction: the version table itself.
pub const PREPARE: &str = "
    SELECT pg_advisory_xact_lock(7235361813413870917);
    CREATE TABLE IF NOT EXISTS schema_version (version bigint NOT NULL);
";
