//! Log lines nobody can forge: every field value and message is written with its control characters escaped,
//! whatever a module logs (request fields, stored `member_id`s, error texts). A newline, carriage return or
//! terminal escape sent in a request then shows up as `\n`, `\r`, `\u{1b}` inside one line instead of starting a
//! new one.
//!
//! Text format: [`EscapedFields`] wraps tracing-subscriber's default field formatter and escapes each value (and
//! the message) before it is written, so names, separators and colours stay exactly as before. JSON format:
//! serde_json already escapes `"`, `\` and everything below U+0020; [`JsonSafeStderr`] also escapes DEL, the C1
//! controls and the Unicode line/paragraph separators, which serde_json leaves raw (they can only occur inside
//! JSON strings there, so `\uXXXX` keeps every line valid JSON with the same values).

use std::borrow::Cow;
use std::error::Error;
use std::fmt::{self, Write as _};
use std::io;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::MakeWriter;

/// Characters a log value must not carry raw: C0 and C1 controls, DEL, and U+2028/U+2029 (line breaks to some
/// log viewers).
fn must_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `s` with each character of [`must_escape`] written as Rust writes it in a string literal (`\n`, `\u{1b}`).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(must_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let _ = EscapingWrite(&mut out).write_str(s);
    Cow::Owned(out)
}

/// Passes text on with [`must_escape`] characters escaped.
struct EscapingWrite<W>(W);

impl<W: fmt::Write> fmt::Write for EscapingWrite<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if must_escape(c) => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A value whose `Debug` output is escaped.
struct Escaped<'a>(&'a dyn fmt::Debug);

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWrite(f), "{:?}", self.0)
    }
}

/// An error chain with every message escaped (owned, so it can stand in for the original as a `'static` error).
#[derive(Debug)]
struct EscapedError {
    message: String,
    source: Option<Box<EscapedError>>,
}

impl EscapedError {
    fn new(e: &(dyn Error + 'static)) -> EscapedError {
        EscapedError {
            message: escape(&e.to_string()).into_owned(),
            source: e.source().map(|s| Box::new(EscapedError::new(s))),
        }
    }
}

impl fmt::Display for EscapedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for EscapedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn Error + 'static))
    }
}

/// The default field formatter of tracing-subscriber with every value escaped (see the module doc).
#[derive(Debug, Default)]
pub struct EscapedFields(DefaultFields);

impl<'a> MakeVisitor<Writer<'a>> for EscapedFields {
    type Visitor = EscapingVisitor<<DefaultFields as MakeVisitor<Writer<'a>>>::Visitor>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        EscapingVisitor(self.0.make_visitor(target))
    }
}

/// Hands escaped values on to the wrapped visitor.
pub struct EscapingVisitor<V>(V);

impl<V: Visit> Visit for EscapingVisitor<V> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            // Written as is (no quotes) by the default formatter: escape it here.
            self.0.record_str(field, &escape(value));
        } else {
            // Written with `Debug` (quoted) by the default formatter.
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn Error + 'static)) {
        self.0.record_error(field, &EscapedError::new(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.record_debug(field, &Escaped(value));
    }
}

impl<V: VisitOutput<fmt::Result>> VisitOutput<fmt::Result> for EscapingVisitor<V> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl<V: VisitFmt> VisitFmt for EscapingVisitor<V> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.0.writer()
    }
}

/// Standard error for JSON lines, with DEL, C1 controls and U+2028/U+2029 written as `\uXXXX`.
pub struct JsonSafeStderr;

impl<'a> MakeWriter<'a> for JsonSafeStderr {
    type Writer = JsonSafe<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonSafe(io::stderr())
    }
}

/// Rewrites, in each buffer it is given, the characters serde_json leaves raw. tracing-subscriber writes each
/// JSON line with one `write_all` of the whole line, so a character is never split between two buffers.
pub struct JsonSafe<W>(pub W);

impl<W: io::Write> io::Write for JsonSafe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(s) if s.chars().any(must_escape) => {
                let mut out = String::with_capacity(s.len() + 16);
                for c in s.chars() {
                    // C0 controls never reach here raw (serde_json escapes them), only DEL, C1 and U+2028/9.
                    if must_escape(c) && c != '\n' {
                        let _ = write!(out, "\\u{:04x}", c as u32);
                    } else {
                        out.push(c);
                    }
                }
                self.0.write_all(out.as_bytes())?;
            }
            _ => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::DefaultFields;

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "outer\r\nforged")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    const HOSTILE: &str = "abc\nINFO forged line\r\t\u{1b}[31m\u{7f}\u{85}\u{2028}end";

    /// Logs `HOSTILE` every way a module can: message text, `%`, `?`, a plain string field, an error with a
    /// source, and a span field.
    fn log_everything() {
        let member_id = HOSTILE.to_string();
        let span = tracing::info_span!("portal", member = %member_id);
        let _g = span.enter();
        tracing::warn!("install from {member_id}");
        tracing::warn!(member_id = %member_id, "display field");
        tracing::warn!(member_id = ?member_id, "debug field");
        tracing::warn!(member_id = member_id.as_str(), "str field");
        tracing::warn!(
            error = &Outer(std::io::Error::other(HOSTILE)) as &(dyn Error + 'static),
            "error field"
        );
        tracing::warn!("{}", member_id.as_str());
    }

    fn text_log(
        fields: impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    ) -> String {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, log_everything);
        buf.text()
    }

    #[test]
    fn text_lines_carry_no_raw_control_characters() {
        let out = text_log(EscapedFields::default());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "one line per event:\n{out}");
        for line in &lines {
            assert!(!line.chars().any(must_escape), "raw control in {line:?}");
            assert!(!line.contains("\u{2028}"), "{line:?}");
            assert!(line.starts_with(" WARN portal{member=abc\\nINFO forged line\\r\\t\\u{1b}[31m"));
        }
        assert!(
            lines[0].ends_with(
                ": install from abc\\nINFO forged line\\r\\t\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}end"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[4].contains("error=outer\\r\\nforged"), "{}", lines[4]);
        assert!(
            lines[4].contains("abc\\nINFO forged"),
            "the source too: {}",
            lines[4]
        );
        // Without the wrapper the same events forge lines: the test above would catch a regression.
        let raw = text_log(DefaultFields::new());
        assert!(raw.lines().count() > 6, "{raw}");
    }

    #[test]
    fn text_output_is_otherwise_unchanged() {
        fn benign() {
            let span = tracing::info_span!("run", portal = "p1", n = 3);
            let _g = span.enter();
            tracing::info!(calls = 5, ok = true, name = "Иван", id = ?Some(7), "exported {} calls", 5);
            tracing::info!(
                error = &std::io::Error::other("refused") as &(dyn Error + 'static),
                "plain"
            );
        }
        let render = |ansi: bool, escaped: bool| {
            let buf = Buf::default();
            let b = tracing_subscriber::fmt()
                .with_writer(buf.clone())
                .with_ansi(ansi)
                .without_time();
            if escaped {
                let s = b.fmt_fields(EscapedFields::default()).finish();
                tracing::subscriber::with_default(s, benign);
            } else {
                tracing::subscriber::with_default(b.finish(), benign);
            }
            buf.text()
        };
        for ansi in [false, true] {
            let (plain, escaped) = (render(ansi, false), render(ansi, true));
            assert_eq!(plain, escaped, "ansi: {ansi}");
            assert!(escaped.contains("exported 5 calls"), "{escaped}");
        }
    }

    #[test]
    fn json_lines_carry_no_raw_control_characters_and_keep_their_values() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || JsonSafe(writer.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, log_everything);
        let out = buf.text();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{out}");
        for line in &lines {
            assert!(!line.chars().any(must_escape), "raw control in {line:?}");
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["span"]["member"], HOSTILE, "{line}");
        }
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(
            first["fields"]["message"],
            format!("install from {HOSTILE}")
        );
    }

    #[test]
    fn escape_leaves_ordinary_text_alone() {
        assert!(matches!(escape("Иван, call 42"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\u{0}"), "a\\nb\\u{0}");
    }
}
