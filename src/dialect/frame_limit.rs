//! `limits.max_frame_bytes` on Socket.IO's WebSocket transport, enforced below engineioxide
//! so that an oversize message closes the connection with code 1009, as in the plain dialect.
//!
//! engineioxide (0.17) reads its WebSocket with tungstenite's size limits, but when tungstenite
//! reports a message too long it only ends the session: the client gets no close code (1006).
//! It has no setting for this, so this layer watches the client's frame headers on the TCP
//! stream itself, on connections that switched to Socket.IO's WebSocket transport (the
//! [`Upgrades`] service marks them when it sees the 101). A data message that would exceed
//! the limit never reaches engineioxide: tungstenite reads, in its place, a close frame with
//! code 1009, as if the client had sent it, and answers with the same code and reason, which
//! is what the client sees; engineioxide ends the session as for any client close. The rest
//! of the message is read and thrown away, and when the connection is dropped its socket
//! [`linger`]s, because closing a socket with unread data sends a TCP reset that can destroy
//! the close frame before the client reads it.
//!
//! The count is the one tungstenite applies (its frame and message limits are both
//! `max_frame_bytes`): the payload of a data frame plus that of the earlier fragments of its
//! message; control frames do not count. Everything the client sends after the 101 goes
//! through the count, since a client must not send frames before it has the 101.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

/// How long a refused connection's socket keeps reading after the close, waiting for the
/// client to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// The reason of the close frame, the plain dialect's.
const REASON: &[u8] = b"message too large";

/// The close frame tungstenite reads in place of an oversize message: a client's frame, so
/// masked (with the all-zero key, which leaves the payload as it is), code 1009.
const CLOSE_1009: [u8; 8 + REASON.len()] = close_frame();

const fn close_frame() -> [u8; 8 + REASON.len()] {
    let mut frame = [0u8; 8 + REASON.len()];
    frame[0] = 0x88; // FIN, opcode close
    frame[1] = 0x80 | (2 + REASON.len()) as u8; // masked, payload length
    let code = 1009u16.to_be_bytes();
    frame[6] = code[0];
    frame[7] = code[1];
    let mut i = 0;
    while i < REASON.len() {
        frame[8 + i] = REASON[i];
        i += 1;
    }
    frame
}

/// The largest frame header: 2 bytes, an 8-byte length, a 4-byte mask key.
const MAX_HEADER: usize = 14;

/// The read side of one connection's limit.
pub struct FrameLimit {
    /// Set by [`Upgrades`] once the connection is Socket.IO's WebSocket transport.
    active: Arc<AtomicBool>,
    max: u64,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// Payload bytes of the unfinished data message so far (its earlier fragments).
    message: u64,
    /// The start of a frame header that has not fully arrived: held back, because if the
    /// frame is refused, tungstenite must not have seen any of it.
    held: [u8; MAX_HEADER],
    held_len: u8,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Passing,
    /// Handing tungstenite the close frame; this many bytes of it are delivered.
    Closing(usize),
    /// Everything from the client is discarded.
    Discarding,
}

/// What the scan of newly read bytes decided.
#[derive(Debug, PartialEq)]
enum Scan {
    /// Deliver this many bytes; the rest is an incomplete header, to hold back.
    Pass(usize),
    /// Deliver this many bytes; the frame that starts there is refused.
    Refuse(usize),
}

impl FrameLimit {
    /// A limit of `max` payload bytes per message, inactive until its switch is set.
    pub fn new(max: usize) -> FrameLimit {
        FrameLimit {
            active: Arc::new(AtomicBool::new(false)),
            max: max as u64,
            remaining: 0,
            message: 0,
            held: [0; MAX_HEADER],
            held_len: 0,
            state: State::Passing,
        }
    }

    /// The switch [`Upgrades`] sets.
    pub fn switch(&self) -> Arc<AtomicBool> {
        self.active.clone()
    }

    /// True once a message was refused: the connection's socket should [`linger`].
    pub fn refused(&self) -> bool {
        self.state != State::Passing
    }

    /// Reads from `io` into `buf`, as `io.poll_read` would, minus what the limit refuses.
    pub fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        mut io: Pin<&mut R>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.active.load(Ordering::Acquire) {
            return io.poll_read(cx, buf);
        }
        loop {
            match self.state {
                State::Closing(sent) => {
                    let n = buf.remaining().min(CLOSE_1009.len() - sent);
                    buf.put_slice(&CLOSE_1009[sent..sent + n]);
                    self.state = if sent + n == CLOSE_1009.len() {
                        State::Discarding
                    } else {
                        State::Closing(sent + n)
                    };
                    return Poll::Ready(Ok(()));
                }
                State::Discarding => {
                    let mut scratch = [0u8; 1024];
                    let mut sink = ReadBuf::new(&mut scratch);
                    ready!(io.as_mut().poll_read(cx, &mut sink))?;
                    if sink.filled().is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                State::Passing => {
                    let held = usize::from(self.held_len);
                    if buf.remaining() <= held {
                        // tungstenite always reads into at least a header's worth.
                        return Poll::Ready(Err(std::io::Error::other(
                            "a WebSocket read into a buffer smaller than a frame header",
                        )));
                    }
                    let base = buf.filled().len();
                    buf.put_slice(&self.held[..held]);
                    if let Poll::Ready(read) = io.as_mut().poll_read(cx, buf) {
                        read.inspect_err(|_| buf.set_filled(base))?;
                    } else {
                        buf.set_filled(base);
                        return Poll::Pending;
                    }
                    let fresh = &buf.filled()[base..];
                    if fresh.len() == held {
                        // End of stream: what is held is not a frame anyway.
                        buf.set_filled(base);
                        return Poll::Ready(Ok(()));
                    }
                    let scan = self.scan(fresh);
                    let delivered = match scan {
                        Scan::Pass(n) => {
                            let rest = &fresh[n..];
                            self.held[..rest.len()].copy_from_slice(rest);
                            self.held_len = rest.len() as u8;
                            n
                        }
                        Scan::Refuse(n) => {
                            tracing::debug!("socket.io message over limits.max_frame_bytes");
                            self.held_len = 0;
                            self.state = State::Closing(0);
                            n
                        }
                    };
                    buf.set_filled(base + delivered);
                    if delivered > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }

    /// Follows the frames in `bytes`, which start where the previous scan stopped.
    fn scan(&mut self, bytes: &[u8]) -> Scan {
        let mut at = 0;
        while at < bytes.len() {
            if self.remaining > 0 {
                let skip = self.remaining.min((bytes.len() - at) as u64);
                self.remaining -= skip;
                at += skip as usize;
                continue;
            }
            let Some(header) = Header::parse(&bytes[at..]) else {
                return Scan::Pass(at);
            };
            if header.is_data() {
                let so_far = if header.opcode == 0 { self.message } else { 0 };
                let total = so_far.saturating_add(header.payload);
                if total > self.max {
                    return Scan::Refuse(at);
                }
                self.message = if header.fin { 0 } else { total };
            }
            self.remaining = header.payload;
            at += header.len;
        }
        Scan::Pass(at)
    }
}

/// A client frame header.
struct Header {
    fin: bool,
    opcode: u8,
    payload: u64,
    /// The header's own length.
    len: usize,
}

impl Header {
    /// The header at the start of `bytes`, if all of it is there.
    fn parse(bytes: &[u8]) -> Option<Header> {
        let (&first, &second) = (bytes.first()?, bytes.get(1)?);
        let masked = second & 0x80 != 0;
        let (extended, payload) = match second & 0x7f {
            126 => (
                2,
                u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            ),
            127 => (8, u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)),
            n => (0, u64::from(n)),
        };
        let len = 2 + extended + if masked { 4 } else { 0 };
        (bytes.len() >= len).then_some(Header {
            fin: first & 0x80 != 0,
            opcode: first & 0x0f,
            payload,
            len,
        })
    }

    /// Continuation, text and binary frames; control frames have the high opcode bit.
    fn is_data(&self) -> bool {
        self.opcode & 0x08 == 0
    }
}

/// Keeps reading (and discarding) from a refused connection's socket for a moment after its
/// last write, so it closes with a FIN after the close frame rather than a reset.
pub fn linger<P: Send + 'static>(mut stream: TcpStream, permit: P) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        // Holds the connection's slot until the socket is really closed.
        let _permit = permit;
        let _ = stream.shutdown().await;
        let mut scratch = [0u8; 1024];
        let drain = async { while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

/// The service half: sets a connection's [`FrameLimit`] switch when it answers a Socket.IO
/// request with 101 Switching Protocols.
#[derive(Clone)]
pub struct Upgrades<S> {
    pub inner: S,
    pub switch: Arc<AtomicBool>,
}

impl<S, B> Service<Request<Incoming>> for Upgrades<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let socketio = super::socketio::is_socketio_path(req.uri().path());
        let switch = self.switch.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            // Set before hyper writes the 101: the client sends frames only after it.
            if socketio && response.status() == StatusCode::SWITCHING_PROTOCOLS {
                switch.store(true, Ordering::Release);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame header (masked) with `payload` bytes, and that many bytes.
    fn frame(fin: bool, opcode: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload {
            0..=125 => f.push(0x80 | payload as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend((payload as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend((payload as u64).to_be_bytes());
            }
        }
        f.extend([1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b'x', payload));
        f
    }

    fn limit(max: usize) -> FrameLimit {
        let limit = FrameLimit::new(max);
        limit.switch().store(true, Ordering::Release);
        limit
    }

    #[test]
    fn the_close_frame_is_a_masked_1009_with_the_plain_reason() {
        assert_eq!(&CLOSE_1009[..8], &[0x88, 0x93, 0, 0, 0, 0, 0x03, 0xf1]);
        assert_eq!(&CLOSE_1009[8..], b"message too large");
    }

    #[test]
    fn a_message_of_exactly_the_limit_passes_one_byte_more_is_refused() {
        let mut l = limit(65536);
        let ok = frame(true, 1, 65536);
        assert_eq!(l.scan(&ok), Scan::Pass(ok.len()));
        let mut two = frame(true, 1, 10);
        let at = two.len();
        two.extend(frame(true, 2, 65537));
        assert_eq!(l.scan(&two), Scan::Refuse(at));
    }

    #[test]
    fn fragments_count_together_and_control_frames_do_not() {
        let mut l = limit(100);
        let mut bytes = frame(false, 1, 60);
        bytes.extend(frame(true, 9, 100)); // a ping between the fragments
        let at = bytes.len();
        bytes.extend(frame(true, 0, 41));
        assert_eq!(l.scan(&bytes), Scan::Refuse(at));

        let mut l = limit(100);
        let mut bytes = frame(false, 1, 60);
        bytes.extend(frame(true, 0, 40));
        bytes.extend(frame(true, 1, 100)); // a new message starts from zero
        assert_eq!(l.scan(&bytes), Scan::Pass(bytes.len()));
    }

    #[test]
    fn a_header_split_across_reads_is_held_back() {
        let mut l = limit(100);
        let first = frame(true, 1, 5);
        let big = frame(true, 1, 70_000); // 8-byte length: a 14-byte header
        let mut bytes = first.clone();
        bytes.extend(&big[..9]);
        assert_eq!(l.scan(&bytes), Scan::Pass(first.len()));
        // The next scan starts again at the held header.
        assert_eq!(l.scan(&big[..MAX_HEADER]), Scan::Refuse(0));
    }

    /// Reads through the limit from `chunks`, one chunk per read, into a `cap`-byte buffer
    /// each time, until the stream ends; returns everything delivered.
    fn read_through(l: &mut FrameLimit, chunks: Vec<Vec<u8>>, cap: usize) -> Vec<u8> {
        let mut io = tokio_test_io(chunks);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        loop {
            let mut space = vec![0u8; cap];
            let mut buf = ReadBuf::new(&mut space);
            match l.poll_read(Pin::new(&mut io), &mut cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return out,
                Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// A reader handing out one chunk per read (a chunk larger than the buffer is split).
    fn tokio_test_io(chunks: Vec<Vec<u8>>) -> impl AsyncRead + Unpin {
        struct Chunks(std::collections::VecDeque<Vec<u8>>);
        impl AsyncRead for Chunks {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                if let Some(mut chunk) = self.0.pop_front() {
                    let n = chunk.len().min(buf.remaining());
                    buf.put_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.0.push_front(chunk.split_off(n));
                    }
                }
                Poll::Ready(Ok(()))
            }
        }
        Chunks(chunks.into())
    }

    #[test]
    fn an_oversize_message_is_replaced_by_the_close_frame_and_the_rest_discarded() {
        let mut l = limit(100);
        let small = frame(true, 1, 50);
        let big = frame(true, 1, 1000);
        let mut stream = small.clone();
        stream.extend(&big);
        stream.extend(frame(true, 1, 3)); // after the refusal: discarded too
                                          // Cut into 7-byte reads, so headers straddle reads.
        let chunks = stream.chunks(7).map(<[u8]>::to_vec).collect();
        let out = read_through(&mut l, chunks, 4096);
        let mut expected = small;
        expected.extend(CLOSE_1009);
        assert_eq!(out, expected);
        assert!(l.refused());
    }

    #[test]
    fn the_close_frame_fits_small_buffers() {
        let mut l = limit(10);
        let out = read_through(&mut l, vec![frame(true, 1, 11)], 16);
        assert_eq!(out, CLOSE_1009);
    }

    #[test]
    fn an_inactive_limit_passes_everything() {
        let mut l = FrameLimit::new(10);
        let big = frame(true, 1, 1000);
        let out = read_through(&mut l, vec![big.clone()], 4096);
        assert_eq!(out, big);
        assert!(!l.refused());
    }
}
