//! Server-to-client WebSocket frames, encoded once and written as they are.
//!
//! A frame a server sends is never masked (RFC 6455 §5.1), so the bytes of one text frame are
//! the same for every recipient. The hub encodes each committed message once per wire form
//! (header and payload, with tungstenite's [`FrameHeader`]) and every member's connection
//! writes those shared bytes; a connection gathers everything queued for it and writes it with
//! one `writev` ([`FrameWriter`]). tungstenite still reads, validates and answers the client's
//! frames (pings, closes, limits); only these data frames bypass its writer.

use std::io::{self, IoSlice};
use std::pin::Pin;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// Appends `text` to `out` as one final, unmasked text frame.
pub fn push_text_frame(out: &mut Vec<u8>, text: &str) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    header
        .format(text.len() as u64, out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(text.as_bytes());
}

/// `text` as one encoded text frame.
pub fn text_frame(text: &str) -> Bytes {
    // 10 bytes is the longest unmasked header (a 64-bit length).
    let mut out = Vec::with_capacity(text.len() + 10);
    push_text_frame(&mut out, text);
    out.into()
}

/// Consecutive text frames in one buffer, any suffix of which can be written as one slice.
#[derive(Debug, Default)]
pub struct FrameRun {
    bytes: Bytes,
    /// Where each frame starts in `bytes`.
    starts: Box<[u32]>,
    /// Some slots hold no frame (an entry this wire form does not show).
    sparse: bool,
}

impl FrameRun {
    /// Encodes `texts` one frame each, in order.
    pub fn encode<'a>(texts: impl ExactSizeIterator<Item = &'a str> + Clone) -> Self {
        Self::encode_slots(texts.map(Some))
    }

    /// Encodes one slot per item: a frame for `Some(text)`, nothing for `None` (the slot keeps
    /// its place, so slot `i` is still entry `i` of the batch).
    pub fn encode_slots<'a>(texts: impl ExactSizeIterator<Item = Option<&'a str>> + Clone) -> Self {
        let total: usize = texts.clone().map(|t| t.map_or(0, |t| t.len() + 10)).sum();
        let mut out = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(texts.len());
        let mut sparse = false;
        for text in texts {
            // A run is one commit batch of one room: far below 4 GiB (messages are capped).
            starts.push(out.len() as u32);
            match text {
                Some(text) => push_text_frame(&mut out, text),
                None => sparse = true,
            }
        }
        FrameRun {
            bytes: out.into(),
            starts: starts.into(),
            sparse,
        }
    }

    /// The frames from the `first`-th slot on, as one shared slice (empty when past the end).
    pub fn from(&self, first: usize) -> Bytes {
        match self.starts.get(first) {
            Some(&start) => self.bytes.slice(start as usize..),
            None => Bytes::new(),
        }
    }

    /// How many frames the slots from `first` on hold.
    pub fn count_from(&self, first: usize) -> usize {
        let slots = self.starts.len().saturating_sub(first);
        if !self.sparse {
            return slots;
        }
        // A frame is never empty (its header alone is 2 bytes): an empty slot starts where the
        // next one does.
        let end = self.bytes.len() as u32;
        (first..self.starts.len())
            .filter(|&i| self.starts[i] != self.starts.get(i + 1).copied().unwrap_or(end))
            .count()
    }
}

/// Encoded frames waiting to be written to one socket, in order.
#[derive(Debug, Default)]
pub struct FrameWriter {
    chunks: Vec<Bytes>,
    /// Bytes in `chunks`.
    buffered: usize,
}

/// Slices handed to one `writev`: Linux takes up to 1024, this many is plenty for a wake-up.
const MAX_SLICES: usize = 64;

impl FrameWriter {
    pub fn push(&mut self, frames: Bytes) {
        if !frames.is_empty() {
            self.buffered += frames.len();
            self.chunks.push(frames);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes pushed and not written yet.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Writes everything pushed, gathering up to [`MAX_SLICES`] chunks per `writev`, then
    /// flushes `io` (a TLS stream seals its records there).
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        let mut next = 0;
        while next < self.chunks.len() {
            // The slices are made inside the poll, on its stack: held across an await they
            // would be a kilobyte of every connection task's state, idle or not.
            let pending = &self.chunks[next..];
            let mut written = std::future::poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for (slot, chunk) in slices.iter_mut().zip(pending) {
                    *slot = IoSlice::new(chunk);
                    count += 1;
                }
                Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count])
            })
            .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            // Drop what was written whole; a partly written chunk keeps its tail.
            while written > 0 {
                let chunk = &mut self.chunks[next];
                if written >= chunk.len() {
                    written -= chunk.len();
                    next += 1;
                } else {
                    chunk.advance(written);
                    written = 0;
                }
            }
        }
        self.chunks.clear();
        self.buffered = 0;
        io.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::Frame;

    /// Parses `bytes` back into text payloads with tungstenite's own header parser.
    fn parse(bytes: &[u8]) -> Vec<String> {
        let mut cursor = io::Cursor::new(bytes);
        let mut texts = Vec::new();
        while (cursor.position() as usize) < bytes.len() {
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            let start = cursor.position() as usize;
            let end = start + len as usize;
            texts.push(String::from_utf8(bytes[start..end].to_vec()).unwrap());
            cursor.set_position(end as u64);
        }
        texts
    }

    #[test]
    fn frames_are_what_tungstenite_writes() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 200_000] {
            let text = "x".repeat(len);
            let mut theirs = Vec::new();
            Frame::message(text.clone(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .unwrap();
            assert_eq!(text_frame(&text)[..], theirs[..], "payload of {len} bytes");
        }
    }

    #[test]
    fn a_run_is_sliced_from_any_frame() {
        let texts = ["a", "", "ccc", &"d".repeat(300)];
        let run = FrameRun::encode(texts.iter().copied());
        assert_eq!(parse(&run.from(0)), texts);
        assert_eq!(parse(&run.from(2)), &texts[2..]);
        assert!(run.from(4).is_empty());
    }

    /// A writer that takes at most `limit` bytes per call, as a full socket does.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.out.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_keep_every_byte_in_order() {
        let texts: Vec<String> = (0..200).map(|i| format!("message {i}")).collect();
        for limit in [1, 3, 7, 1000] {
            let mut writer = FrameWriter::default();
            for t in &texts {
                writer.push(text_frame(t));
            }
            let mut io = Trickle {
                out: Vec::new(),
                limit,
            };
            assert!(writer.buffered() > 0);
            writer.write_to(&mut io).await.unwrap();
            assert!(writer.is_empty() && writer.buffered() == 0);
            assert_eq!(parse(&io.out), texts, "at most {limit} bytes per write");
        }
    }
}
