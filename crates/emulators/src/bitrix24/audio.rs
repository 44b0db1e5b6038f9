//! Recordings generated on the fly: real WAV (44-byte PCM header + tones) and real MP3 (MPEG-2.5 layer III frames
//! at 8 kHz whose side info describes silence — each a decodable frame). Any byte range can be produced from the
//! spec alone, so a 200 MB recording is streamed without being held in memory and its SHA-256 can be recomputed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Streamed in pieces of this size; `slow_download` delays are per piece.
pub const CHUNK: usize = 64 * 1024;

const WAV_HEADER: u64 = 44;
const WAV_RATE: u32 = 8000;
const MP3_RATE: u64 = 8000;
/// MPEG-2/2.5 layer III bitrates (kbit/s) by index.
const MPEG2_KBPS: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Mp3,
    Wav,
}

impl Container {
    pub fn ext(self) -> &'static str {
        match self {
            Container::Mp3 => "mp3",
            Container::Wav => "wav",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Container::Mp3 => "audio/mpeg",
            Container::Wav => "audio/x-wav",
        }
    }

    pub fn header_len(self) -> u64 {
        match self {
            Container::Mp3 => 4,
            Container::Wav => WAV_HEADER,
        }
    }

    /// Size of a recording of `seconds`: WAV at its PCM byte rate, MP3 at the configured rate, whole frames.
    pub fn natural_size(self, seconds: u64, channels: u16, mp3_bytes_per_second: u64) -> u64 {
        match self {
            Container::Wav => WAV_HEADER + seconds * u64::from(WAV_RATE) * u64::from(channels) * 2,
            Container::Mp3 => {
                let frame = mp3_frame_len(mp3_kbps(mp3_bytes_per_second));
                let bytes = seconds * u64::from(mp3_kbps(mp3_bytes_per_second)) * 125;
                bytes.div_ceil(frame).max(1) * frame
            }
        }
    }

    /// Caps a size while keeping whole sample frames (WAV) / whole MPEG frames (MP3).
    pub fn capped(self, bytes: u64, cap: u64, channels: u16, mp3_bytes_per_second: u64) -> u64 {
        if bytes <= cap {
            return bytes;
        }
        match self {
            Container::Wav => {
                let align = u64::from(channels) * 2;
                WAV_HEADER + (cap.saturating_sub(WAV_HEADER) / align).max(1) * align
            }
            Container::Mp3 => {
                let frame = mp3_frame_len(mp3_kbps(mp3_bytes_per_second));
                (cap / frame).max(1) * frame
            }
        }
    }
}

/// The MPEG-2 bitrate closest to `bytes_per_second`.
pub fn mp3_kbps(bytes_per_second: u64) -> u32 {
    let want = bytes_per_second.saturating_mul(8) / 1000;
    MPEG2_KBPS[1..]
        .iter()
        .copied()
        .min_by_key(|k| (i64::from(*k) - want as i64).unsigned_abs())
        .unwrap_or(64)
}

/// Layer III, 576 samples per frame at 8 kHz: 72 · bitrate / rate bytes (no padding).
fn mp3_frame_len(kbps: u32) -> u64 {
    72 * u64::from(kbps) * 1000 / MP3_RATE
}

/// What one call's recording is; everything needed to regenerate its bytes.
#[derive(Debug, Clone)]
pub struct RecordingSpec {
    pub file_id: u64,
    pub container: Container,
    pub channels: u16,
    pub bytes: u64,
    pub disk_only: bool,
    pub seed: u64,
    pub kbps: u32,
}

/// Produces any byte range of a recording.
#[derive(Debug)]
pub struct Generator {
    spec: RecordingSpec,
    /// WAV: 44-byte header; MP3: one frame template.
    head: Vec<u8>,
    /// WAV: one second of PCM (exactly periodic); MP3 unused.
    pattern: Vec<u8>,
}

impl Generator {
    pub fn new(spec: &RecordingSpec) -> Generator {
        match spec.container {
            Container::Wav => {
                let ch = spec.channels.max(1);
                let data = spec.bytes.saturating_sub(WAV_HEADER);
                let data32 = u32::try_from(data).unwrap_or(u32::MAX);
                let mut h = Vec::with_capacity(44);
                h.extend(b"RIFF");
                h.extend(data32.saturating_add(36).to_le_bytes());
                h.extend(b"WAVEfmt ");
                h.extend(16u32.to_le_bytes());
                h.extend(1u16.to_le_bytes());
                h.extend(ch.to_le_bytes());
                h.extend(WAV_RATE.to_le_bytes());
                h.extend((WAV_RATE * u32::from(ch) * 2).to_le_bytes());
                h.extend((ch * 2).to_le_bytes());
                h.extend(16u16.to_le_bytes());
                h.extend(b"data");
                h.extend(data32.to_le_bytes());
                // Whole-Hz tones repeat exactly every second; left/right differ so channels are distinguishable.
                let f = [
                    200 + (spec.seed % 300) as u32,
                    520 + (spec.seed / 300 % 300) as u32,
                ];
                let mut pattern = Vec::with_capacity(WAV_RATE as usize * usize::from(ch) * 2);
                for n in 0..WAV_RATE {
                    for c in 0..usize::from(ch) {
                        let t = f64::from(n) / f64::from(WAV_RATE);
                        let v =
                            (2.0 * std::f64::consts::PI * f64::from(f[c % 2]) * t).sin() * 6000.0;
                        pattern.extend((v as i16).to_le_bytes());
                    }
                }
                Generator {
                    spec: spec.clone(),
                    head: h,
                    pattern,
                }
            }
            Container::Mp3 => {
                let idx = MPEG2_KBPS.iter().position(|k| *k == spec.kbps).unwrap_or(8) as u8;
                let frame_len = mp3_frame_len(MPEG2_KBPS[usize::from(idx)]) as usize;
                let mut f = vec![0u8; frame_len];
                f[0] = 0xFF;
                f[1] = 0xE3; // sync, MPEG-2.5, layer III, no CRC
                f[2] = (idx << 4) | (2 << 2); // bitrate, 8 kHz, no padding
                f[3] = if spec.channels == 1 { 0xC4 } else { 0x04 }; // mono / stereo, original
                                                                     // Side info (9 bytes mono, 17 stereo) stays zero: main_data_begin 0, part2_3_length 0 → silence.
                Generator {
                    spec: spec.clone(),
                    head: f,
                    pattern: Vec::new(),
                }
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.spec.bytes
    }

    /// Fills `buf` with the bytes at `offset..offset+buf.len()`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        match self.spec.container {
            Container::Wav => {
                let mut pos = offset;
                let mut out = 0;
                while out < buf.len() {
                    if pos < WAV_HEADER {
                        buf[out] = self.head[pos as usize];
                        out += 1;
                        pos += 1;
                        continue;
                    }
                    let p = ((pos - WAV_HEADER) % self.pattern.len() as u64) as usize;
                    let n = (self.pattern.len() - p).min(buf.len() - out);
                    buf[out..out + n].copy_from_slice(&self.pattern[p..p + n]);
                    out += n;
                    pos += n as u64;
                }
            }
            Container::Mp3 => {
                let flen = self.head.len() as u64;
                let mut pos = offset;
                let mut out = 0;
                while out < buf.len() {
                    let frame = pos / flen;
                    let within = (pos % flen) as usize;
                    let n = (self.head.len() - within).min(buf.len() - out);
                    buf[out..out + n].copy_from_slice(&self.head[within..within + n]);
                    // Ancillary bytes at the frame's end make each call's file (and each frame) distinct.
                    let tag = (self.spec.seed ^ frame).to_le_bytes();
                    let tag_start = self.head.len() - 8;
                    for (i, b) in tag.iter().enumerate() {
                        let at = tag_start + i;
                        if at >= within && at < within + n {
                            buf[out + at - within] = *b;
                        }
                    }
                    out += n;
                    pos += n as u64;
                }
            }
        }
    }

    pub fn sha256_hex(&self) -> String {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK * 4];
        let mut pos = 0;
        while pos < self.len() {
            let n = (self.len() - pos).min(buf.len() as u64) as usize;
            self.fill(pos, &mut buf[..n]);
            h.update(&buf[..n]);
            pos += n as u64;
        }
        hex::encode(h.finalize())
    }
}

/// An HTTP body that generates the recording while it is sent, with an exact size hint (→ Content-Length).
pub struct RecordingBody {
    gen: Arc<Generator>,
    pos: u64,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sent: Arc<AtomicU64>,
}

impl RecordingBody {
    pub fn new(
        gen: Arc<Generator>,
        delay: Option<Duration>,
        sent: Arc<AtomicU64>,
    ) -> RecordingBody {
        RecordingBody {
            gen,
            pos: 0,
            delay,
            sleep: None,
            sent,
        }
    }
}

impl http_body::Body for RecordingBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.pos >= this.gen.len() {
            return Poll::Ready(None);
        }
        if let Some(d) = this.delay {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let n = (this.gen.len() - this.pos).min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; n];
        this.gen.fill(this.pos, &mut buf);
        this.pos += n as u64;
        this.sent.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.gen.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.gen.len() - self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(container: Container, channels: u16, bytes: u64) -> RecordingSpec {
        RecordingSpec {
            file_id: 1,
            container,
            channels,
            bytes,
            disk_only: false,
            seed: 42,
            kbps: 64,
        }
    }

    #[test]
    fn ranges_agree_with_whole() {
        for s in [
            spec(Container::Wav, 2, 100_044),
            spec(Container::Mp3, 1, 576 * 30 + 17),
        ] {
            let g = Generator::new(&s);
            let mut whole = vec![0u8; s.bytes as usize];
            g.fill(0, &mut whole);
            let mut pieces = Vec::new();
            let mut pos = 0u64;
            for step in [3u64, 41, 1000, 577, 9999].iter().cycle() {
                if pos >= s.bytes {
                    break;
                }
                let n = (*step).min(s.bytes - pos) as usize;
                let mut b = vec![0u8; n];
                g.fill(pos, &mut b);
                pieces.extend(b);
                pos += n as u64;
            }
            assert_eq!(pieces, whole);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(mp3_kbps(8000), 64);
        assert_eq!(mp3_kbps(4000), 32);
        assert_eq!(Container::Mp3.natural_size(1, 2, 8000), 8064); // 14 frames of 576
        assert_eq!(Container::Wav.natural_size(1, 2, 8000), 44 + 32_000);
        assert_eq!(
            Container::Wav.capped(1_000_000, 1000, 2, 8000),
            44 + 956 / 4 * 4
        );
        assert_eq!(Container::Mp3.capped(1_000_000, 1000, 2, 8000), 576);
    }
}
