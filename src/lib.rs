//! chat-server: a self-hosted, single-binary direct-message chat server.
//!
//! # Layout
//!
//! A frame travels through these modules, one responsibility each:
//!
//! - [`server`]: the accept loop, one task per connection, the connection cap, shutdown,
//!   and the service stack (CORS, Socket.IO, the `/ws` handshake, warp).
//! - [`http`]: the `/ws` handshake, the REST API, `/healthz`, `/metrics`, CORS, JSON errors.
//! - [`dialect::plain`]: where a plain-dialect frame is parsed, and the session loop.
//! - [`dialect::socketio`]: where a Socket.IO packet is decoded (socketioxide), and its
//!   session; [`dialect`] itself decides how a reply is answered, for both dialects.
//! - [`chat`]: the event handlers, shared by every dialect and the HTTP API.
//! - [`model`]: the domain types that `protocol` and `store` share: users, messages, room
//!   pairs, inbox and history pages.
//! - [`protocol`]: payload shapes, room ids, timestamps, error codes.
//! - [`writer`]: the group-commit writer, the only code that writes to the store; it
//!   fans out `message:sent` / `message:seen` once a batch is durable.
//! - [`snapshot`]: the in-memory latest-50 of active rooms behind every `message:sent`.
//! - [`hub`]: where fan-out happens: per-user channels with bounded queues.
//! - [`ratelimit`]: the per-user token buckets over sends and requests.
//! - [`metrics`]: the Prometheus metrics behind `GET /metrics`.
//! - [`store`]: where a message is stored: the traits every backend implements (async
//!   reads for the handlers, a sync write transaction for the writer), one error, one test
//!   suite; [`store::redb`] is the backend, chosen in `main.rs`.
//! - [`auth`], [`config`]: tokens; flags, environment and the config file.
//! - [`web`]: the built-in browser client (files in `web/`), served at `GET /`.

pub mod auth;
pub mod chat;
pub mod config;
pub mod dialect;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod ratelimit;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod web;
pub mod writer;
