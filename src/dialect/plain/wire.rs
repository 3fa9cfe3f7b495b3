//! What a plain connection's socket holds between messages, kept small.
//!
//! tungstenite formats each frame into a write buffer that keeps the capacity of the
//! largest frame it ever held, for the connection's life: after one `message:sent`
//! carrying a full latest-50 snapshot (about 6 KB) a connection holds 6 KB until it
//! closes, some 55 MB over 10,000 busy connections. So a long text goes out as fragments
//! of at most [`FRAGMENT_BYTES`] (RFC 6455 §5.4: a text frame and continuation frames,
//! which every WebSocket client reassembles into one message), and the socket is wrapped
//! in [`Coalesce`], which gathers the fragments of one message in a buffer of its own,
//! hands them to the kernel in one write when the message is flushed, and then frees
//! that buffer. One write per message as before, and a few hundred bytes held once the
//! message is out instead of the largest message ever sent.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Largest payload of one outgoing frame: with its 4-byte header a frame is 1 KiB, so
/// tungstenite's write buffer never grows past 1 KiB.
pub const FRAGMENT_BYTES: usize = 1020;

/// What [`Coalesce`] gathers before it writes through, so one message of up to this size
/// costs one write. Larger messages go out in writes of about this size.
const COALESCE_BYTES: usize = 64 * 1024;

/// `text` as the frames that carry it: one text frame when it fits in
/// [`FRAGMENT_BYTES`], else a text frame and continuation frames. Cuts fall on character
/// boundaries, so every fragment is valid UTF-8 on its own: RFC 6455 allows any cut, but
/// then a client must decode across fragments, and not every client's decoder does.
pub fn fragments(text: Utf8Bytes) -> Fragments {
    Fragments {
        rest: Bytes::from(text),
        first: true,
    }
}

/// The frames of one text message, in order; see [`fragments`].
pub struct Fragments {
    rest: Bytes,
    first: bool,
}

impl Iterator for Fragments {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        // An empty text is still one (empty) frame.
        if self.rest.is_empty() && !self.first {
            return None;
        }
        let mut cut = self.rest.len().min(FRAGMENT_BYTES);
        // A byte 0b10xx_xxxx continues a character: cut before its first byte instead.
        while cut < self.rest.len() && self.rest[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        let payload = self.rest.split_to(cut);
        let opcode = if self.first {
            Data::Text
        } else {
            Data::Continue
        };
        self.first = false;
        Some(Message::Frame(Frame::message(
            payload,
            OpCode::Data(opcode),
            self.rest.is_empty(),
        )))
    }
}

/// A socket whose writes are gathered until flushed and written in one go; see the
/// module docs. Reads pass straight through.
pub struct Coalesce<S> {
    inner: S,
    pending: Vec<u8>,
    /// How much of `pending` the kernel already took.
    written: usize,
}

impl<S> Coalesce<S> {
    pub fn new(inner: S) -> Self {
        Coalesce {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes out everything gathered, then frees the buffer.
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Freed, not cleared: a buffer kept at its largest size is what this type avoids.
        self.pending = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.len() + buf.len() > COALESCE_BYTES {
            // Pending while the peer does not read: that is the backpressure.
            ready!(this.poll_write_pending(cx))?;
            if buf.len() >= COALESCE_BYTES {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn payloads(text: &str) -> Vec<(bool, OpCode, String)> {
        fragments(Utf8Bytes::from(text.to_string()))
            .map(|message| match message {
                Message::Frame(frame) => {
                    let header = frame.header().clone();
                    let payload = String::from_utf8(frame.into_payload().to_vec())
                        .expect("every fragment is valid UTF-8");
                    (header.is_final, header.opcode, payload)
                }
                other => panic!("not a frame: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_short_text_is_one_final_frame() {
        assert_eq!(
            payloads("{\"event\":\"x\"}"),
            vec![(true, OpCode::Data(Data::Text), "{\"event\":\"x\"}".into())]
        );
        assert_eq!(
            payloads(""),
            vec![(true, OpCode::Data(Data::Text), String::new())]
        );
        let exact = "a".repeat(FRAGMENT_BYTES);
        assert_eq!(payloads(&exact).len(), 1);
    }

    #[test]
    fn a_long_text_is_cut_into_fragments_at_character_boundaries() {
        // Multi-byte characters straddle every possible cut position.
        let text: String = (0..3000)
            .map(|i| ["é", "€", "😀", "a"][i % 4])
            .collect::<Vec<_>>()
            .concat();
        let frames = payloads(&text);
        assert!(frames.len() > 1);
        assert_eq!(frames[0].1, OpCode::Data(Data::Text));
        for (i, (is_final, opcode, payload)) in frames.iter().enumerate() {
            assert!(payload.len() <= FRAGMENT_BYTES && !payload.is_empty());
            assert_eq!(*is_final, i == frames.len() - 1);
            if i > 0 {
                assert_eq!(*opcode, OpCode::Data(Data::Continue));
            }
        }
        let joined: String = frames.into_iter().map(|(_, _, p)| p).collect();
        assert_eq!(joined, text);
    }

    #[tokio::test]
    async fn writes_are_gathered_until_flush_and_the_buffer_is_freed() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut socket = Coalesce::new(near);
        socket.write_all(b"hello, ").await.unwrap();
        socket.write_all(b"world").await.unwrap();
        assert_eq!(socket.pending.len(), 12);
        // Nothing reached the peer before the flush.
        let mut byte = [0u8; 1];
        assert!(
            far.read(&mut byte).now_or_never().is_none(),
            "data arrived before the flush"
        );
        socket.flush().await.unwrap();
        assert_eq!(socket.pending.capacity(), 0);
        let mut got = [0u8; 12];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello, world");
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_holds_back_the_writer() {
        // The pipe takes 1 KiB; the rest must wait in `Coalesce` up to its bound.
        let (near, mut far) = tokio::io::duplex(1024);
        let mut socket = Coalesce::new(near);
        let big = vec![7u8; COALESCE_BYTES];
        socket.write_all(&big[..COALESCE_BYTES / 2]).await.unwrap();
        assert!(
            socket.write_all(&big).now_or_never().is_none(),
            "a write past the bound did not wait"
        );
        assert!(socket.pending.len() <= COALESCE_BYTES);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all.len()
        });
        socket.write_all(&big).await.unwrap();
        socket.shutdown().await.unwrap();
        drop(socket);
        // The write that had to wait took nothing: exactly the two complete writes arrived.
        assert_eq!(reader.await.unwrap(), COALESCE_BYTES / 2 + COALESCE_BYTES);
    }
}
