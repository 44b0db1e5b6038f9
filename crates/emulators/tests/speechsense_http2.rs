//! The SpeechSense emulator's HTTP/2 receive windows, read off the wire: 1 MiB per stream and 8 MiB per connection,
//! so that 8 concurrent uploads of 1 MiB messages do not take turns in one 1 MiB connection window (hyper's
//! default), which made the emulator, not the client, set the upload rate (docs/benchmarks.md, `big-recording`).

use std::time::Duration;

use b24sense_emulators::speechsense::{SpeechSenseConfig, SpeechSenseEmulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const WINDOW_UPDATE: u8 = 0x8;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const ACK: u8 = 0x1;
/// RFC 9113 §6.9.2: every connection starts with a 65,535-byte window.
const DEFAULT_WINDOW: u32 = 65_535;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(conn: &mut TcpStream) -> Frame {
    let mut head = [0u8; 9];
    conn.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).await.unwrap();
    Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }
}

#[tokio::test]
async fn the_server_advertises_a_1_mib_stream_window_and_an_8_mib_connection_window() {
    let emulator = SpeechSenseEmulator::start(SpeechSenseConfig::default())
        .await
        .unwrap();
    let mut conn = TcpStream::connect(emulator.addr()).await.unwrap();
    conn.write_all(PREFACE).await.unwrap();
    // An empty SETTINGS frame: the client keeps every default.
    conn.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
        .await
        .unwrap();

    let (mut stream_window, mut connection_increment) = (None, None);
    let read = async {
        // The server's SETTINGS, its WINDOW_UPDATE for the connection and the ACK of ours come first; a handful
        // of frames bounds the wait.
        for _ in 0..8 {
            let frame = read_frame(&mut conn).await;
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    for setting in frame.payload.chunks_exact(6) {
                        if u16::from_be_bytes([setting[0], setting[1]])
                            == SETTINGS_INITIAL_WINDOW_SIZE
                        {
                            stream_window = Some(u32::from_be_bytes([
                                setting[2], setting[3], setting[4], setting[5],
                            ]));
                        }
                    }
                }
                WINDOW_UPDATE if frame.stream == 0 => {
                    let p = &frame.payload;
                    connection_increment =
                        Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
                }
                _ => {}
            }
            if stream_window.is_some() && connection_increment.is_some() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server's SETTINGS and WINDOW_UPDATE within 10 s");

    assert_eq!(stream_window, Some(1 << 20), "SETTINGS_INITIAL_WINDOW_SIZE");
    assert_eq!(
        connection_increment.map(|n| DEFAULT_WINDOW + n),
        Some(8 << 20),
        "connection window after the server's WINDOW_UPDATE"
    );
}
