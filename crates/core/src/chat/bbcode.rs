//! Bitrix24 messenger BB-code → plain text (`docs/mapping.md`, "Chats": message text).
//!
//! The messenger stores message text as BB-code: `[b]…[/b]`, `[USER=5]Анна[/USER]`, `[URL=https://…]site[/URL]`,
//! `[br]`, `[QUOTE]…[/QUOTE]`, `[DISK=12]`, `[ICON=…]`… SpeechSense analyses what people wrote, so the tags go and
//! their readable part stays:
//! - formatting tags (`b i u s del color size font left center right justify code quote spoiler list * p
//!   table tr td th`) are dropped, their content kept;
//! - `[br]` becomes a line break;
//! - `[USER=5]Анна[/USER]`, `[CHAT=7]Отдел[/CHAT]`, `[SEND=…]Да[/SEND]`, `[PUT=…]Нет[/PUT]`, `[CALL=…]`,
//!   `[PCH=…]`, `[CONTEXT=…]` keep their text;
//! - `[URL=https://x]site[/URL]` becomes `site (https://x)`, `[URL]https://x[/URL]` becomes `https://x`;
//! - `[IMG]…[/IMG]`, `[ICON=…]`, `[DISK=…]`, `[ATTACH=…]` leave nothing (attachments are named from the
//!   message's files instead);
//! - anything else in brackets (`[1]`, `[sic]`, a lone `[`) is the author's text and stays as written.
//!
//! Tag names are case-insensitive. Unicode (emoji, Cyrillic) passes through untouched. Runs of spaces left by
//! removed tags are not collapsed (the author's spacing is kept), but leading/trailing whitespace is trimmed.

/// Tags whose content is kept and whose brackets are dropped (opening may carry `=value`).
const KEEP_CONTENT: &[&str] = &[
    "b", "i", "u", "s", "del", "color", "size", "font", "left", "center", "right", "justify",
    "code", "quote", "spoiler", "list", "*", "p", "table", "tr", "td", "th", "user", "chat",
    "send", "put", "call", "pch", "context", "bot", "lines",
];

/// Tags that disappear together with their content (`[IMG]url[/IMG]`).
const DROP_CONTENT: &[&str] = &["img"];

/// Self-standing tags that disappear (`[ICON=…]`, `[DISK=12]`, `[ATTACH=3]`, `[hr]`).
const DROP_TAG: &[&str] = &["icon", "disk", "attach", "hr", "timestamp"];

/// One bracketed tag found at the start of `s` (which begins with `[`).
struct Tag<'a> {
    /// Lower-case name.
    name: String,
    closing: bool,
    /// The `=value` part of an opening tag.
    value: Option<&'a str>,
    /// Bytes the tag occupies, brackets included.
    len: usize,
}

fn parse_tag(s: &str) -> Option<Tag<'_>> {
    let end = s.find(']')?;
    let inner = &s[1..end];
    // A tag never spans lines or holds another opening bracket.
    if inner.is_empty() || inner.contains('[') || inner.contains('\n') {
        return None;
    }
    let (closing, body) = match inner.strip_prefix('/') {
        Some(b) => (true, b),
        None => (false, inner),
    };
    let (name, value) = match body.split_once('=') {
        Some((n, v)) if !closing => (n, Some(v)),
        Some(_) => return None,
        None => (body, None),
    };
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
        return None;
    }
    Some(Tag {
        name,
        closing,
        value,
        len: end + 1,
    })
}

/// Finds `[/name]` (any case) in `s`: (start of the closing tag, its length).
fn find_close(s: &str, name: &str) -> Option<(usize, usize)> {
    let needle = format!("[/{name}]");
    let lower = s.to_ascii_lowercase();
    lower.find(&needle).map(|i| (i, needle.len()))
}

/// Converts one message's BB-code to plain text.
pub fn to_plain_text(bb: &str) -> String {
    let mut out = String::with_capacity(bb.len());
    convert(bb, &mut out);
    out.trim().to_string()
}

fn convert(s: &str, out: &mut String) {
    let mut rest = s;
    while let Some(pos) = rest.find('[') {
        out.push_str(&rest[..pos]);
        let at = &rest[pos..];
        let Some(tag) = parse_tag(at) else {
            out.push('[');
            rest = &at[1..];
            continue;
        };
        let after = &at[tag.len..];
        let name = tag.name.as_str();
        if name == "br" && !tag.closing {
            out.push('\n');
            rest = after;
        } else if name == "url" && !tag.closing {
            let Some((close, close_len)) = find_close(after, "url") else {
                // An unterminated [URL=…]: keep the address itself.
                if let Some(v) = tag.value {
                    out.push_str(v.trim());
                }
                rest = after;
                continue;
            };
            let mut label = String::new();
            convert(&after[..close], &mut label);
            let label = label.trim();
            match tag.value.map(str::trim).filter(|v| !v.is_empty()) {
                Some(href) if !label.is_empty() && label != href => {
                    out.push_str(label);
                    out.push_str(" (");
                    out.push_str(href);
                    out.push(')');
                }
                Some(href) => out.push_str(href),
                None => out.push_str(label),
            }
            rest = &after[close + close_len..];
        } else if DROP_CONTENT.contains(&name) && !tag.closing {
            rest = match find_close(after, name) {
                Some((close, close_len)) => &after[close + close_len..],
                None => after,
            };
        } else if DROP_TAG.contains(&name) || DROP_CONTENT.contains(&name) || name == "url" {
            rest = after;
        } else if KEEP_CONTENT.contains(&name) {
            if name == "*" && !tag.closing && !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            rest = after;
        } else {
            // Not a tag the messenger knows: the author's own brackets.
            out.push('[');
            rest = &at[1..];
        }
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_and_mentions() {
        let cases = [
            (
                "[b]Здравствуйте[/b], [USER=5]Анна Петрова[/USER]!",
                "Здравствуйте, Анна Петрова!",
            ),
            (
                "строка 1[br]строка 2[BR]строка 3",
                "строка 1\nстрока 2\nстрока 3",
            ),
            ("[COLOR=#ff0000][i]важно[/i][/COLOR]", "важно"),
            (
                "[QUOTE]Вы писали: да[/QUOTE] хорошо",
                "Вы писали: да хорошо",
            ),
            ("[CHAT=12]Отдел продаж[/CHAT]", "Отдел продаж"),
            ("[SEND=1]Да[/SEND] / [PUT=/help]Помощь[/PUT]", "Да / Помощь"),
            ("[list][*]один[*]два[/list]", "один\nдва"),
            ("  пробелы по краям  ", "пробелы по краям"),
        ];
        for (bb, plain) in cases {
            assert_eq!(to_plain_text(bb), plain, "{bb}");
        }
    }

    #[test]
    fn links() {
        assert_eq!(
            to_plain_text("см. [URL=https://example.ru/a?b=1]наш сайт[/URL]"),
            "см. наш сайт (https://example.ru/a?b=1)"
        );
        assert_eq!(to_plain_text("[url]https://x.ru[/url]"), "https://x.ru");
        assert_eq!(
            to_plain_text("[URL=https://x.ru]https://x.ru[/URL]"),
            "https://x.ru"
        );
        assert_eq!(
            to_plain_text("[URL=https://x.ru]без конца"),
            "https://x.ruбез конца"
        );
    }

    #[test]
    fn attachments_and_icons_vanish() {
        assert_eq!(to_plain_text("[DISK=145]"), "");
        assert_eq!(
            to_plain_text("фото: [IMG]https://x/y.png[/IMG] вот"),
            "фото:  вот"
        );
        assert_eq!(
            to_plain_text("[ICON=https://x/i.png size=20 title=ok] ок"),
            "ок"
        );
    }

    #[test]
    fn authors_brackets_and_unicode_stay() {
        let cases = [
            "заказ [123] и [sic]",
            "массив a[k] = [",
            "эмодзи 👍🏽😀 и 🇷🇺 целы",
            "[не тег]",
            "a ] b [",
        ];
        for s in cases {
            assert_eq!(to_plain_text(s), s.trim(), "{s}");
        }
        assert_eq!(to_plain_text("[b]👍[/b]"), "👍");
    }
}
