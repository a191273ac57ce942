//! What a client owes, and by when: once a request head (HTTP/1.1) or a frame or header
//! block (HTTP/2) has begun, the rest of it must arrive within a deadline, or the connection
//! is cut. This is the slowloris defence for both protocols; request bodies have their own
//! deadline in `serve` (a whole body within `body_read_timeout`), and a connection with no
//! request in flight is closed by the idle rule there.
//!
//! The tracker sees only the decrypted bytes, below hyper. It parses as little as it must:
//! the end of an HTTP/1 head, and the 9-byte header of each HTTP/2 frame (RFC 9113 §4.1).

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most bytes an HTTP/1 client may send after a request head before the server has begun its
/// answer: the largest body any route reads is 64 KiB (a refused form is read that far before
/// its 413), and the rest is room for pipelined requests. hyper bounds a chunked body's data
/// but not its framing: review 175 streamed a chunk-size line of endless zeros, which hyper
/// read at a core's speed (1.17 GB in 20 s) with nothing to hand the handler.
pub const MAX_UNANSWERED_BYTES: u64 = 1 << 20;

/// Most HTTP/2 frames that carry no request (PRIORITY, SETTINGS, PING, WINDOW_UPDATE and
/// types this server does not know) a client may send in [`CONTROL_FRAME_WINDOW`]: browsers
/// send a handful per connection (settings, a few window updates as they read), and the
/// h2 library answers none of these with an error, however many come. Review 179 kept a core
/// busy per connection with WINDOW_UPDATEs of 1 (1.9 GB in 25 s), PRIORITY frames or frames
/// of an unknown type, ended only by the idle timeout.
pub const MAX_CONTROL_FRAMES: u32 = 1000;

/// The window [`MAX_CONTROL_FRAMES`] is counted over.
pub const CONTROL_FRAME_WINDOW: Duration = Duration::from_secs(10);

/// Bytes the server writes on an HTTP/2 connection for each frame without a request it allows
/// beyond [`MAX_CONTROL_FRAMES`] in the same window: a client gives flow-control window back as
/// it reads, and Go's (Caddy's `reverse_proxy`, Traefik) sends a WINDOW_UPDATE for about every
/// 4 KiB read, past a thousand in 10 s at 300 small pages a second on one connection (review
/// 180: 502s through Caddy). A flood earns its frames only with answers worth far more.
pub const WRITTEN_BYTES_PER_CONTROL_FRAME: u64 = 512;

/// An HTTP/2 connection's count of frames without a request in the current
/// [`CONTROL_FRAME_WINDOW`], against what the server wrote in it.
#[derive(Clone, Copy, Debug)]
struct ControlWindow {
    start: tokio::time::Instant,
    frames: u32,
    written: u64,
}

impl ControlWindow {
    /// The window running now (a new one once the last is over).
    fn now(current: Option<ControlWindow>) -> ControlWindow {
        let now = tokio::time::Instant::now();
        match current {
            Some(w) if now.duration_since(w.start) < CONTROL_FRAME_WINDOW => w,
            _ => ControlWindow { start: now, frames: 0, written: 0 },
        }
    }

    fn exceeded(&self) -> bool {
        let earned = self.written / WRITTEN_BYTES_PER_CONTROL_FRAME;
        u64::from(self.frames) > u64::from(MAX_CONTROL_FRAMES).saturating_add(earned)
    }
}

/// Tracks what the client owes on one connection and holds the deadline for it.
pub struct Owed {
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    protocol: Protocol,
    /// HTTP/1: bytes read since the current head was complete and before any answer.
    unanswered: u64,
    /// HTTP/2: the frames without a request, and the bytes written, in the current
    /// [`CONTROL_FRAME_WINDOW`].
    control: Option<ControlWindow>,
}

/// What ALPN chose; the server speaks nothing else on the connection (`serve`).
enum Protocol {
    Http1(Head),
    Http2(Frames),
}

/// Where an HTTP/1 request head stands. RFC 9112 §2.2: a server ignores empty lines before
/// the request line, so those are owed bytes too rather than a finished head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Head {
    /// A response went out since the last head; nothing is owed until the next byte.
    Between,
    /// Empty lines before a request line.
    Leading,
    /// Inside a line.
    Line,
    /// Just after a line feed: another one (optionally after a CR) ends the head.
    LineFeed,
    LineFeedCr,
    /// The head is complete; its body and the handler are not this tracker's business.
    Complete,
}

impl Head {
    fn next(self, byte: u8) -> Head {
        match (self, byte) {
            (Head::Complete, _) => Head::Complete,
            (Head::Between | Head::Leading, b'\r' | b'\n') => Head::Leading,
            (Head::LineFeed | Head::LineFeedCr, b'\n') => Head::Complete,
            (Head::LineFeed, b'\r') => Head::LineFeedCr,
            (_, b'\n') => Head::LineFeed,
            _ => Head::Line,
        }
    }

    fn owed(self) -> bool {
        !matches!(self, Head::Between | Head::Complete)
    }
}

/// HTTP/2 framing: how far into the preface, the current frame's header or its payload the
/// client is, and whether a header block (HEADERS or PUSH_PROMISE without END_HEADERS) is
/// waiting for its CONTINUATION frames.
#[derive(Debug, Default)]
struct Frames {
    preface_left: usize,
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
    block_open: bool,
    /// Frames that carry no request ([`MAX_CONTROL_FRAMES`]) since the counter was last taken.
    control_frames: u32,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == 9 {
                    self.header_len = 0;
                    let h = self.header;
                    self.payload_left = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    const END_HEADERS: u8 = 0x4;
                    match h[3] {
                        // HEADERS, PUSH_PROMISE (RFC 9113 §6.2, §6.6)
                        0x1 | 0x5 => self.block_open = h[4] & END_HEADERS == 0,
                        // CONTINUATION (§6.10)
                        0x9 if h[4] & END_HEADERS != 0 => self.block_open = false,
                        // DATA, RST_STREAM, GOAWAY, CONTINUATION: parts of a request or of its
                        // end (the h2 library bounds those itself).
                        0x0 | 0x3 | 0x7 | 0x9 => {}
                        // PRIORITY, SETTINGS, PING, WINDOW_UPDATE, and unknown types (§5.5).
                        _ => self.control_frames = self.control_frames.saturating_add(1),
                    }
                }
            }
        }
    }

    fn owed(&self) -> bool {
        self.preface_left > 0 || self.header_len > 0 || self.payload_left > 0 || self.block_open
    }
}

impl Owed {
    /// A tracker for a connection that is HTTP/1 unless [`Owed::start`] says ALPN chose HTTP/2.
    pub fn new(timeout: Duration) -> Self {
        Owed { timeout, sleep: None, protocol: Protocol::Http1(Head::Leading), unanswered: 0, control: None }
    }

    /// The connection is ready (TLS handshake done, or a plain connection accepted): its
    /// first request is due from now. `h2`: ALPN chose HTTP/2, so the preface comes first.
    pub fn start(&mut self, h2: bool) {
        if h2 {
            self.protocol = Protocol::Http2(Frames { preface_left: PREFACE.len(), ..Default::default() });
        }
        self.arm();
    }

    fn arm(&mut self) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Whether a deadline is running.
    pub fn armed(&self) -> bool {
        self.sleep.is_some()
    }

    /// Decrypted bytes arrived.
    pub fn on_read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.feed(bytes);
        let owed = match &self.protocol {
            Protocol::Http1(head) => head.owed(),
            Protocol::Http2(frames) => frames.owed(),
        };
        match (owed, self.armed()) {
            (true, false) => self.arm(),
            (false, true) => self.sleep = None,
            _ => {}
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        match &mut self.protocol {
            Protocol::Http1(head) => {
                let mut rest = bytes.len();
                for &b in bytes {
                    if *head == Head::Complete {
                        break; // the rest is a body or a pipelined request
                    }
                    *head = head.next(b);
                    rest -= 1;
                }
                self.unanswered += rest as u64;
            }
            Protocol::Http2(frames) => {
                frames.feed(bytes);
                let seen = std::mem::take(&mut frames.control_frames);
                if seen > 0 {
                    let mut window = ControlWindow::now(self.control);
                    window.frames = window.frames.saturating_add(seen);
                    self.control = Some(window);
                }
            }
        }
    }

    /// `bytes` of an HTTP/2 connection's frames were written: credit for the client's
    /// window updates ([`WRITTEN_BYTES_PER_CONTROL_FRAME`]).
    pub fn on_written(&mut self, bytes: usize) {
        if matches!(self.protocol, Protocol::Http2(_)) && bytes > 0 {
            let mut window = ControlWindow::now(self.control);
            window.written = window.written.saturating_add(bytes as u64);
            self.control = Some(window);
        }
    }

    /// The server is writing. In HTTP/1 that is a response (or a 100 Continue) to a complete
    /// head, so whatever the client sends next starts a new request.
    pub fn on_write(&mut self) {
        if let Protocol::Http1(head) = &mut self.protocol {
            if *head == Head::Complete {
                *head = Head::Between;
            }
            self.unanswered = 0;
        }
    }

    /// Whether an HTTP/1 client has sent more than [`MAX_UNANSWERED_BYTES`] past a request
    /// head without an answer begun: the connection is to be cut.
    /// Or an HTTP/2 client more than [`MAX_CONTROL_FRAMES`] frames without a request within
    /// [`CONTROL_FRAME_WINDOW`], and one more per [`WRITTEN_BYTES_PER_CONTROL_FRAME`] the
    /// server wrote in it.
    pub fn overrun(&self) -> bool {
        self.unanswered > MAX_UNANSWERED_BYTES || self.control.is_some_and(|w| w.exceeded())
    }

    /// Whether the deadline has passed (registering for a wake-up if not). Read off the clock
    /// too: a timer polled after the task's cooperative budget is spent (by a client whose
    /// bytes never stop) says `Pending` however late it is.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.sleep.as_mut().is_some_and(|s| {
            let due = s.deadline();
            s.as_mut().poll(cx).is_ready() || tokio::time::Instant::now() >= due
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(chunks: &[&[u8]]) -> Owed {
        fed_as(false, chunks)
    }

    /// As [`fed`], on a connection whose ALPN chose HTTP/2.
    fn fed_h2(chunks: &[&[u8]]) -> Owed {
        fed_as(true, chunks)
    }

    fn fed_as(h2: bool, chunks: &[&[u8]]) -> Owed {
        let mut o = Owed::new(Duration::from_secs(20));
        o.start(h2);
        for c in chunks {
            o.on_read(c);
        }
        o
    }

    #[tokio::test]
    async fn an_http1_head_is_owed_until_its_blank_line_however_it_is_split() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 0..head.len() {
            let o = fed(&[&head[..split], &head[split..]]);
            assert!(!o.armed(), "split at {split}");
            assert!(fed(&[&head[..split]]).armed() || split == 0, "split at {split}");
        }
        // Bare line feeds end a head as well (httparse accepts them).
        assert!(!fed(&[b"GET / HTTP/1.1\nHost: x\n\n"]).armed());
        assert!(fed(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]).armed());
    }

    #[tokio::test]
    async fn empty_lines_before_the_request_line_do_not_end_the_head() {
        // The bypass of issue 11: "\r\n\r\n" first, then a head dribbled for ever.
        let o = fed(&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n", b"Host: x\r\n"]);
        assert!(o.armed());
        let o = fed(&[b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert!(!o.armed());
    }

    #[tokio::test]
    async fn an_http1_client_may_send_a_mebibyte_past_a_head_before_an_answer_and_no_more() {
        let mut owed = fed(&[b"POST /login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        let zeros = vec![b'0'; 64 * 1024];
        for _ in 0..16 {
            owed.on_read(&zeros);
        }
        assert!(!owed.overrun(), "a mebibyte exactly");
        owed.on_read(b"0");
        assert!(owed.overrun());
        // An answer begun starts the count again.
        owed.on_write();
        owed.on_read(b"GET / HTTP/1.1\r\n\r\n");
        assert!(!owed.overrun());
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_client_may_send_a_thousand_frames_without_a_request_in_ten_seconds() {
        let frame = |kind: u8| [0, 0, 4, kind, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut owed = fed_h2(&[PREFACE]);
        let requests: Vec<u8> = [[0u8, 0, 0, 0x1, 0x5, 0, 0, 0, 1]; 2000].concat();
        owed.on_read(&requests);
        assert!(!owed.overrun(), "HEADERS are not counted");
        // A browser's pace: a window update every 20 ms, for a minute.
        for _ in 0..3000 {
            owed.on_read(&frame(0x8));
            tokio::time::advance(Duration::from_millis(20)).await;
        }
        assert!(!owed.overrun());
        // Go's client: a window update for about every 4 KiB read, at 4,000 small pages a
        // second on one connection (review 180: Caddy's `reverse_proxy` was cut, with 502s).
        let mut owed = fed_h2(&[PREFACE]);
        for _ in 0..12_000 {
            owed.on_read(&[0u8, 0, 0, 0x1, 0x5, 0, 0, 0, 1]);
            owed.on_written(1_700);
            owed.on_read(&[0u8, 0, 0, 0x1, 0x5, 0, 0, 0, 1]);
            owed.on_written(1_700);
            owed.on_read(&[0u8, 0, 0, 0x1, 0x5, 0, 0, 0, 1]);
            owed.on_written(1_700);
            owed.on_read(&frame(0x8));
        }
        assert!(!owed.overrun(), "a proxy's pace");
        // A flood of any kind without a request.
        for kind in [0x2u8, 0x8, 0x20] {
            let mut owed = fed_h2(&[PREFACE]);
            for _ in 0..MAX_CONTROL_FRAMES {
                owed.on_read(&frame(kind));
            }
            assert!(!owed.overrun(), "{kind:#x}: a thousand");
            owed.on_read(&frame(kind));
            assert!(owed.overrun(), "{kind:#x}");
        }
    }

    #[tokio::test]
    async fn after_a_response_the_next_byte_starts_a_new_deadline_and_a_body_does_not() {
        let mut o = fed(&[b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\n"]);
        assert!(!o.armed());
        o.on_read(b"csrf=x");
        assert!(!o.armed(), "a body is not a head");
        o.on_write();
        assert!(!o.armed(), "an idle keep-alive connection owes nothing");
        o.on_read(b"\r\n");
        assert!(o.armed(), "empty lines after a response begin the next head");
        o.on_read(b"GET / HTTP/1.1\r\n\r\n");
        assert!(!o.armed());
    }

    #[tokio::test]
    async fn an_http2_preface_and_frames_are_owed_until_complete() {
        let mut o = Owed::new(Duration::from_secs(20));
        o.start(true);
        assert!(o.armed(), "the preface is due");
        o.on_read(&PREFACE[..10]);
        assert!(o.armed());
        o.on_read(&PREFACE[10..]);
        assert!(!o.armed());
        // SETTINGS, empty: a whole frame.
        o.on_read(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        assert!(!o.armed());
        // A frame header promising 5 bytes, then 3 of them.
        o.on_read(&[0, 0, 5, 0x0, 0, 0, 0, 0, 1, 1, 2, 3]);
        assert!(o.armed());
        o.on_read(&[4, 5]);
        assert!(!o.armed());
        // HEADERS without END_HEADERS: owed until a CONTINUATION with END_HEADERS.
        o.on_read(&[0, 0, 1, 0x1, 0x0, 0, 0, 0, 3, 0x82]);
        assert!(o.armed());
        o.on_read(&[0, 0, 1, 0x9, 0x0, 0, 0, 0, 3, 0x84]);
        assert!(o.armed());
        o.on_read(&[0, 0, 1, 0x9, 0x4, 0, 0, 0, 3, 0x87]);
        assert!(!o.armed());
        // Part of a frame header.
        o.on_read(&[0, 0]);
        assert!(o.armed());
    }

    #[tokio::test]
    async fn without_alpns_h2_the_preface_is_an_http1_head_like_any_other() {
        let o = fed(&[&PREFACE[..5], &PREFACE[5..]]);
        assert!(matches!(o.protocol, Protocol::Http1(Head::Complete)));
    }
}
