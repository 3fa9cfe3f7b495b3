//! chat-server: a self-hosted, single-binary direct-message chat server.
//!
//! # Layout
//!
//! A frame travels through these modules, one responsibility each:
//!
//! - [`server`]: the accept loop, one task per connection, the connection cap, shutdown,
//!   and the service stack (CORS, Socket.IO, the `/ws` handshake, warp). Only `main`
//!   imports it.
//! - [`app`]: the shared state every connection holds, and the one way in for both
//!   dialects and the API: [`app::App::authenticate`], [`app::App::admit`].
//! - [`http`]: the REST API, `/healthz`, `/metrics`, CORS, JSON errors; [`http::query`]
//!   decodes query strings for every surface.
//! - [`dialect::plain`]: where a plain-dialect frame is parsed, and the session loop;
//!   [`dialect::plain::handshake`] answers `GET /ws`.
//! - [`dialect::socketio`]: where a Socket.IO packet is decoded (socketioxide), and its
//!   session; [`dialect::frame_limit`]: its WebSocket messages' size limit, with close
//!   1009; [`dialect`] itself decides how a reply is answered, for both dialects.
//! - [`chat`]: the event handlers, shared by every dialect and the HTTP API, one file per
//!   event: its checks, the writer command it submits, its reply.
//! - [`model`]: the domain types that `protocol` and `store` share: users, messages, room
//!   pairs, inbox and history pages.
//! - [`protocol`]: payload shapes, room ids, timestamps, error codes;
//!   [`protocol::server_event`]: every event the server pushes, named and rendered once.
//! - [`writer`]: the group-commit writer, the only code that writes to the store. Each
//!   write is a [`writer::Command`] applied through the round's transaction; its events
//!   are published, and its caller answered, once the round is durable.
//! - [`snapshot`]: the in-memory latest-50 of active rooms behind every `message:sent`.
//! - [`fanout`]: where fan-out happens: the [`fanout::Broker`] that publishers see, the
//!   rendered [`fanout::Outbound`]; [`fanout::hub`] is the in-process broker, per-user
//!   channels with bounded queues; [`fanout::nats`] the broker between nodes in cluster
//!   mode, which feeds the hub and repairs what NATS loses from the store.
//! - [`ratelimit`]: the per-user token buckets over sends and requests.
//! - [`metrics`]: the Prometheus metrics behind `GET /metrics`.
//! - [`store`]: where a message is stored: the traits every backend implements (async
//!   reads for the handlers, a sync write transaction for the writer), one error, one test
//!   suite; [`store::redb`] is the embedded backend, [`store::postgres`] cluster mode's
//!   (`cluster.postgres_url`), chosen in `main.rs`.
//! - [`auth`]: tokens: verify, mint.
//! - [`admin`]: the admin API under `/admin/` (its own secret; online backup, erasing a
//!   user) and the operator commands: `backup`, `restore`, `verify`, `compact`,
//!   `erase-user`.
//! - [`cli`]: the subcommands and their flags, turned into a [`cli::Command`].
//! - [`config`]: the settings, their key registry, and file → environment → flag.
//! - [`ops`]: offline operations on a data directory: export as JSON lines, import.
//! - [`retention`]: the background sweep that deletes messages past
//!   `retention.max_age_days`, through the writer.
//! - [`duties`]: what runs once per deployment (webhook delivery, retention sweeps): on
//!   the one node, or in cluster mode on the holder of the PostgreSQL duties lock.
//! - [`web`]: the built-in browser client (files in `web/`), served at `GET /`.
//! - [`webhook`]: events for the app's backend: written to an outbox in the commit of
//!   what they describe, posted signed and in order per recipient, retried, dead-lettered.

pub mod admin;
pub mod app;
pub mod auth;
pub mod chat;
pub mod cli;
pub mod config;
pub mod dialect;
pub mod duties;
pub mod fanout;
pub mod http;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod protocol;
pub mod ratelimit;
pub mod retention;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod web;
pub mod webhook;
pub mod writer;
