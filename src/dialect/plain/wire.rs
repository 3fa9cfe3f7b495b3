//! What a plain connection's socket holds between messages, kept small.
//!
//! tungstenite formats each frame into a write buffer that keeps the capacity of the
//! largest frame it ever held, for the connection's life: after one `message:sent`
//! carrying a full latest-50 snapshot (about 6 KB) a connection holds 6 KB until it
//! closes, some 55 MB over 10,000 busy connections. So a long text goes out as fragments
//! of at most [`FRAGMENT_BYTES`] (RFC 6455 §5.4: a text frame and continuation frames,
//! which every WebSocket client reassembles into one message), and the socket is wrapped
//! in [`Coalesce`], which keeps a message's non-final fragments in a buffer of its own
//! and writes them out together with the final one, then frees that buffer. One write
//! per message as before, and nothing held once the message is out.
//!
//! Every other frame (the final fragment, whole texts, pings, tungstenite's own pong and
//! close replies) is written through at once: tungstenite does not always flush after a
//! write (its answer to a client's close is written just before it ends the connection),
//! so nothing but a fragment that more must follow may wait in [`Coalesce`].

use std::io::{self, IoSlice};
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

/// Most non-final fragments [`Coalesce`] keeps, so one message of up to this size costs
/// one write; past it, fragments are written through one by one.
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

/// A socket that keeps the non-final fragments of a message and writes them out with
/// its final frame; see the module docs. Reads pass straight through.
pub struct Coalesce<S> {
    inner: S,
    pending: Vec<u8>,
    /// How much of `pending` the kernel already took.
    written: usize,
    /// Whether the next write starts a frame: true unless the last write went through
    /// only in part (tungstenite then writes the rest of that frame next).
    at_frame_start: bool,
}

impl<S> Coalesce<S> {
    pub fn new(inner: S) -> Self {
        Coalesce {
            inner,
            pending: Vec::new(),
            written: 0,
            at_frame_start: true,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes out the kept fragments, with `buf` in the same write when the socket takes
    /// both, then as much of `buf` as the socket takes; the count is `buf`'s part.
    fn poll_write_through(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        while self.written < self.pending.len() {
            let left = self.pending.len() - self.written;
            let both = [
                IoSlice::new(&self.pending[self.written..]),
                IoSlice::new(buf),
            ];
            let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &both))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < left {
                self.written += n;
                continue;
            }
            // Freed, not cleared: a buffer kept at its largest size is what this type avoids.
            self.pending = Vec::new();
            self.written = 0;
            if n > left {
                self.at_frame_start = n - left == buf.len();
                return Poll::Ready(Ok(n - left));
            }
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.at_frame_start = n == buf.len();
        Poll::Ready(Ok(n))
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
        // A frame header's first bit is FIN; only a data frame may lack it.
        let more_follows = this.at_frame_start && buf.first().is_some_and(|b| b & 0x80 == 0);
        if more_follows && this.pending.len() + buf.len() <= COALESCE_BYTES {
            this.pending.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        this.poll_write_through(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_through(cx, &[]))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_through(cx, &[]))?;
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

    /// One unmasked frame as tungstenite formats it (payloads under 126 bytes).
    fn frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![first_byte, payload.len() as u8];
        bytes.extend_from_slice(payload);
        bytes
    }

    #[tokio::test]
    async fn fragments_wait_for_the_final_frame_and_the_buffer_is_freed() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut socket = Coalesce::new(near);
        let (first, middle, last) = (
            frame(0x01, b"hello"),
            frame(0x00, b", "),
            frame(0x80, b"world"),
        );
        socket.write_all(&first).await.unwrap();
        socket.write_all(&middle).await.unwrap();
        let mut byte = [0u8; 1];
        assert!(
            far.read(&mut byte).now_or_never().is_none(),
            "a fragment went out before the final frame"
        );
        socket.write_all(&last).await.unwrap();
        assert_eq!(socket.pending.capacity(), 0);
        let mut got = vec![0u8; first.len() + middle.len() + last.len()];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [first, middle, last].concat());
    }

    #[tokio::test]
    async fn whole_frames_go_out_without_a_flush() {
        // tungstenite writes its reply to a client's close and ends without flushing.
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut socket = Coalesce::new(near);
        let close = frame(0x88, &1000u16.to_be_bytes());
        socket.write_all(&close).await.unwrap();
        let text = frame(0x81, b"{}");
        socket.write_all(&text).await.unwrap();
        drop(socket);
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [close, text].concat());
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_holds_back_the_writer() {
        // The pipe takes 1 KiB; kept fragments stop at the bound and then go out.
        let (near, mut far) = tokio::io::duplex(1024);
        let mut socket = Coalesce::new(near);
        let fragment = frame(0x00, &[7u8; 100]);
        let mut accepted = 0;
        while socket.pending.len() + fragment.len() <= COALESCE_BYTES {
            socket.write_all(&fragment).await.unwrap();
            accepted += fragment.len();
        }
        assert!(
            socket.write_all(&fragment).now_or_never().is_none(),
            "a write past the bound did not wait for the peer"
        );
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all.len()
        });
        socket.write_all(&frame(0x80, b"end")).await.unwrap();
        socket.shutdown().await.unwrap();
        drop(socket);
        // Everything kept and the end; the write that had to wait took nothing.
        assert_eq!(reader.await.unwrap(), accepted + 5);
    }
}
