//! Recording format detection from the first bytes of the file, never from its name
//! (`docs/mapping.md`, "Audio").
//!
//! `RIFF....WAVE` → WAV (channels from the `fmt ` chunk); `ID3` or an MPEG frame sync → MP3 (channels from the
//! first frame's channel mode); `OggS` → Ogg/Opus (channels from `OpusHead`). Anything else is unsupported.

use serde::{Deserialize, Serialize};

/// SpeechSense's `ContainerAudio.ContainerAudioType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Container {
    Wav,
    Mp3,
    OggOpus,
}

impl Container {
    pub fn as_str(self) -> &'static str {
        match self {
            Container::Wav => "wav",
            Container::Mp3 => "mp3",
            Container::OggOpus => "ogg_opus",
        }
    }
}

/// What the header says about a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioProbe {
    pub container: Container,
    /// Channel count when the header states it.
    pub channels: Option<u16>,
    pub sample_rate: Option<u32>,
    /// Bytes of audio per second when known (WAV byte rate, MP3 bitrate / 8), for duration estimates.
    pub bytes_per_second: Option<u32>,
    /// Length of the audio payload when the header states it (WAV `data` chunk).
    pub data_bytes: Option<u64>,
}

impl AudioProbe {
    pub fn is_mono(&self) -> bool {
        self.channels == Some(1)
    }

    /// Duration in seconds from the header, or from the total file size and the byte rate.
    pub fn estimate_seconds(&self, total_bytes: Option<u64>) -> Option<u64> {
        let rate = u64::from(self.bytes_per_second?).max(1);
        let bytes = self
            .data_bytes
            .filter(|b| *b > 0 && *b != u64::from(u32::MAX))
            .or(total_bytes)?;
        Some(bytes / rate)
    }
}

/// Why the head of a recording could not be classified (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Give at least this many bytes from the start of the file.
    #[error("need at least {0} bytes of the recording to read its header")]
    NeedMore(usize),
    #[error("unsupported audio: {0}")]
    Unsupported(String),
}

/// The most a caller should buffer before giving up (an ID3 tag with cover art can be large).
pub const MAX_PROBE_BYTES: usize = 512 * 1024;

/// Classifies a recording from its first bytes. Returns [`ProbeError::NeedMore`] when `head` is too short to decide.
pub fn probe(head: &[u8]) -> Result<AudioProbe, ProbeError> {
    if head.len() < 4 {
        return Err(ProbeError::NeedMore(4));
    }
    if head.starts_with(b"RIFF") {
        return probe_wav(head);
    }
    if head.starts_with(b"OggS") {
        return probe_ogg(head);
    }
    if head.starts_with(b"ID3") {
        if head.len() < 10 {
            return Err(ProbeError::NeedMore(10));
        }
        let size = syncsafe(&head[6..10]) as usize;
        let footer = if head[5] & 0x10 != 0 { 10 } else { 0 };
        return probe_mpeg(head, 10 + size + footer);
    }
    if is_frame_sync(head[0], head[1]) {
        return probe_mpeg(head, 0);
    }
    Err(ProbeError::Unsupported(format!(
        "unknown container (first bytes {:02x?})",
        &head[..head.len().min(8)]
    )))
}

fn syncsafe(b: &[u8]) -> u32 {
    b.iter()
        .fold(0u32, |acc, x| (acc << 7) | u32::from(x & 0x7f))
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn probe_wav(head: &[u8]) -> Result<AudioProbe, ProbeError> {
    if head.len() < 12 {
        return Err(ProbeError::NeedMore(12));
    }
    if &head[8..12] != b"WAVE" {
        return Err(ProbeError::Unsupported("RIFF file that is not WAVE".into()));
    }
    let mut pos = 12;
    let mut fmt: Option<(u16, u32, u32)> = None;
    loop {
        if head.len() < pos + 8 {
            return Err(ProbeError::NeedMore(pos + 8));
        }
        let id = &head[pos..pos + 4];
        let size = le32(&head[pos + 4..pos + 8]) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            if head.len() < body + 16 {
                return Err(ProbeError::NeedMore(body + 16));
            }
            let format = le16(&head[body..]);
            // 1 = PCM, 0xFFFE = WAVE_FORMAT_EXTENSIBLE (PCM inside in practice); SpeechSense takes LPCM only.
            if format != 1 && format != 0xFFFE {
                return Err(ProbeError::Unsupported(format!(
                    "WAV with format tag {format} (only PCM is accepted)"
                )));
            }
            fmt = Some((
                le16(&head[body + 2..]),
                le32(&head[body + 4..]),
                le32(&head[body + 8..]),
            ));
        } else if id == b"data" {
            let (channels, rate, byte_rate) = fmt
                .ok_or_else(|| ProbeError::Unsupported("WAV data chunk before fmt chunk".into()))?;
            return Ok(AudioProbe {
                container: Container::Wav,
                channels: Some(channels),
                sample_rate: Some(rate),
                bytes_per_second: Some(byte_rate),
                data_bytes: Some(size as u64),
            });
        }
        pos = body + size + (size & 1);
        if pos > MAX_PROBE_BYTES {
            return Err(ProbeError::Unsupported("WAV header too large".into()));
        }
    }
}

fn probe_ogg(head: &[u8]) -> Result<AudioProbe, ProbeError> {
    if head.len() < 27 {
        return Err(ProbeError::NeedMore(27));
    }
    let segments = head[26] as usize;
    let payload = 27 + segments;
    if head.len() < payload + 19 {
        return Err(ProbeError::NeedMore(payload + 19));
    }
    if &head[payload..payload + 8] != b"OpusHead" {
        return Err(ProbeError::Unsupported(
            "Ogg stream that is not Opus".into(),
        ));
    }
    let channels = u16::from(head[payload + 9]);
    let rate = le32(&head[payload + 12..]);
    Ok(AudioProbe {
        container: Container::OggOpus,
        channels: Some(channels),
        sample_rate: Some(rate),
        bytes_per_second: None,
        data_bytes: None,
    })
}

fn is_frame_sync(b0: u8, b1: u8) -> bool {
    b0 == 0xFF && (b1 & 0xE0) == 0xE0
}

/// Bitrates in kbit/s, indexed by the header's bitrate index: [MPEG-1 layer III, MPEG-2/2.5 layer III].
const BITRATES: [[u32; 15]; 2] = [
    [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ],
    [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
];

fn probe_mpeg(head: &[u8], start: usize) -> Result<AudioProbe, ProbeError> {
    if start > MAX_PROBE_BYTES {
        return Err(ProbeError::Unsupported(
            "ID3 tag larger than the probe window".into(),
        ));
    }
    // A few junk bytes after an ID3 tag are common; look for the first plausible frame header nearby.
    let window_end = start + 4096;
    let mut pos = start;
    loop {
        if head.len() < pos + 4 {
            return Err(ProbeError::NeedMore(pos + 4));
        }
        if let Some(p) = parse_frame_header(&head[pos..pos + 4]) {
            return Ok(p);
        }
        pos += 1;
        if pos > window_end {
            return Err(ProbeError::Unsupported(
                "no MPEG audio frame after the ID3 tag".into(),
            ));
        }
    }
}

fn parse_frame_header(h: &[u8]) -> Option<AudioProbe> {
    if !is_frame_sync(h[0], h[1]) {
        return None;
    }
    let version = (h[1] >> 3) & 0b11; // 00 MPEG-2.5, 01 reserved, 10 MPEG-2, 11 MPEG-1
    let layer = (h[1] >> 1) & 0b11; // 01 layer III, 10 layer II, 11 layer I
    let bitrate_idx = (h[2] >> 4) as usize;
    let rate_idx = ((h[2] >> 2) & 0b11) as usize;
    if version == 0b01 || layer == 0b00 || bitrate_idx == 0b1111 || rate_idx == 0b11 {
        return None;
    }
    let base_rates = [44_100u32, 48_000, 32_000];
    let sample_rate = match version {
        0b11 => base_rates[rate_idx],
        0b10 => base_rates[rate_idx] / 2,
        _ => base_rates[rate_idx] / 4,
    };
    let kbps = BITRATES[usize::from(version != 0b11)][bitrate_idx];
    let channel_mode = h[3] >> 6; // 11 = single channel
    Some(AudioProbe {
        container: Container::Mp3,
        channels: Some(if channel_mode == 0b11 { 1 } else { 2 }),
        sample_rate: Some(sample_rate),
        bytes_per_second: (kbps > 0).then_some(kbps * 1000 / 8),
        data_bytes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(channels: u16, rate: u32, data: u32) -> Vec<u8> {
        let byte_rate = rate * u32::from(channels) * 2;
        let mut v = b"RIFF".to_vec();
        v.extend((36 + data).to_le_bytes());
        v.extend(b"WAVEfmt ");
        v.extend(16u32.to_le_bytes());
        v.extend(1u16.to_le_bytes());
        v.extend(channels.to_le_bytes());
        v.extend(rate.to_le_bytes());
        v.extend(byte_rate.to_le_bytes());
        v.extend((channels * 2).to_le_bytes());
        v.extend(16u16.to_le_bytes());
        v.extend(b"data");
        v.extend(data.to_le_bytes());
        v
    }

    #[test]
    fn wav_channels_and_duration() {
        let p = probe(&wav(2, 8000, 32000 * 10)).unwrap();
        assert_eq!(p.container, Container::Wav);
        assert_eq!(p.channels, Some(2));
        assert_eq!(p.sample_rate, Some(8000));
        assert_eq!(p.estimate_seconds(None), Some(10));
        assert!(probe(&wav(1, 8000, 100)).unwrap().is_mono());
    }

    #[test]
    fn short_heads_ask_for_more() {
        let w = wav(2, 8000, 100);
        assert_eq!(probe(&w[..3]), Err(ProbeError::NeedMore(4)));
        assert!(matches!(probe(&w[..20]), Err(ProbeError::NeedMore(_))));
    }

    #[test]
    fn mp3_frame_and_id3() {
        // MPEG-1 layer III, 64 kbit/s, 44.1 kHz, joint stereo.
        let frame = [0xFF, 0xFB, 0x50, 0x40];
        let p = probe(&frame).unwrap();
        assert_eq!(
            (p.container, p.channels, p.sample_rate),
            (Container::Mp3, Some(2), Some(44_100))
        );
        assert_eq!(p.estimate_seconds(Some(8000 * 60)), Some(60));
        // MPEG-2.5 layer III 8 kHz 32 kbit/s mono — Bitrix24's default recording.
        let mono = [0xFF, 0xE3, 0x48, 0xC0];
        let p = probe(&mono).unwrap();
        assert_eq!((p.channels, p.sample_rate), (Some(1), Some(8000)));
        let mut tagged = b"ID3\x04\x00\x00\x00\x00\x00\x05hello".to_vec();
        tagged.extend(frame);
        assert_eq!(probe(&tagged).unwrap().container, Container::Mp3);
        assert!(matches!(probe(&tagged[..12]), Err(ProbeError::NeedMore(_))));
    }

    #[test]
    fn ogg_opus() {
        let mut v = b"OggS\x00\x02".to_vec();
        v.resize(26, 0);
        v.push(1); // one segment
        v.push(19);
        v.extend(b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00");
        let p = probe(&v).unwrap();
        assert_eq!((p.container, p.channels), (Container::OggOpus, Some(2)));
    }

    #[test]
    fn unsupported_inputs() {
        assert!(matches!(
            probe(b"<html><body>404</body></html>"),
            Err(ProbeError::Unsupported(_))
        ));
        assert!(matches!(
            probe(b"fLaC\0\0\0\0"),
            Err(ProbeError::Unsupported(_))
        ));
        let mut adpcm = wav(1, 8000, 10);
        adpcm[20] = 2;
        assert!(matches!(probe(&adpcm), Err(ProbeError::Unsupported(_))));
    }
}
