//! `GET /admin/export[?user=ID]`: `chat-server export` from a running server.
//!
//! The dump is the offline one, byte for byte but for the header's time: the same
//! [`write_dump`](crate::ops::export::write_dump) walks one read transaction (in cluster
//! mode, one `REPEATABLE READ` PostgreSQL transaction), so the dump is one consistent
//! moment while sends go on. The walk is synchronous and may take
//! minutes, so it runs on a blocking thread and hands the response body 64 KiB chunks
//! through a channel of `memory.export_buffer_bytes`: a client that reads slowly makes the
//! walk wait, never the memory grow. A client that goes away closes the channel and the
//! walk stops at its next chunk. A store error mid-walk cannot change a status already
//! sent: the body is cut short (no final chunk), which an HTTP client reports as an error.

use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use warp::http::header::{HeaderValue, CONTENT_TYPE};
use warp::Reply;

use super::AdminReply;
use crate::app::App;
use crate::http::query::{query_pairs, query_param};
use crate::protocol::room::is_valid_user_id;
use crate::protocol::ChatError;

/// Bytes of dump lines gathered before they are handed to the response body.
const CHUNK_BYTES: usize = 64 * 1024;

/// Starts the export and answers with its streamed body.
pub async fn export(app: Arc<App>, query: String) -> AdminReply {
    let pairs = query_pairs(&query)?;
    if let Some((name, _)) = pairs.iter().find(|(name, _)| name != "user") {
        return Err(ChatError::bad_request(format!(
            "unknown query parameter {name:?}: the only one is `user`"
        )));
    }
    let user = query_param(&pairs, "user")?
        .map(|user| {
            if is_valid_user_id(user) {
                Ok(user.to_owned())
            } else {
                Err(ChatError::bad_request(
                    "user must be a valid user id (1 to 64 of A-Z a-z 0-9 _ . @ + -)",
                ))
            }
        })
        .transpose()?;
    let capacity = (app.config.memory.export_buffer_bytes / CHUNK_BYTES).max(1);
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(capacity);
    let store = app.maintenance.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Chunks {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
        };
        match store.export_dump(user.as_deref(), &mut out) {
            Ok(n) => tracing::info!(
                user = user.as_deref().unwrap_or("(all)"),
                profiles = n.profiles,
                blocks = n.blocks,
                erased = n.erased,
                rooms = n.rooms,
                messages = n.messages,
                "admin: export sent"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "admin: export stopped");
                // Cuts the body short; fails only if the client is gone already.
                let _ = out.tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut response = warp::reply::stream(body).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// The dump's bytes in chunks of [`CHUNK_BYTES`], sent to the response body.
struct Chunks {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Chunks {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for Chunks {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
