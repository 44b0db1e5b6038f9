//! One language per run: `--lang ru|en` (or `B24SENSE_LANG`), else the locale (`LC_ALL`, `LC_MESSAGES`, `LANG`:
//! `ru…` → Russian, anything else → English). Every message the CLI prints picks its text with [`pick`].

use std::sync::OnceLock;

pub use b24sense_speechsense::Lang;

static LANG: OnceLock<Lang> = OnceLock::new();

/// Fixes the run's language: the flag when given, else the locale.
pub fn init(flag: Option<Lang>) -> Lang {
    let lang = flag.unwrap_or_else(|| from_locale(|name| std::env::var(name).ok()));
    let _ = LANG.set(lang);
    lang
}

/// The run's language (English before [`init`]).
pub fn current() -> Lang {
    LANG.get().copied().unwrap_or(Lang::En)
}

/// The first set locale variable in POSIX order (`LC_ALL`, `LC_MESSAGES`, `LANG`) decides.
pub fn from_locale(var: impl Fn(&str) -> Option<String>) -> Lang {
    let locale = ["LC_ALL", "LC_MESSAGES", "LANG"]
        .into_iter()
        .filter_map(var)
        .find(|v| !v.trim().is_empty())
        .unwrap_or_default();
    if locale.trim().to_ascii_lowercase().starts_with("ru") {
        Lang::Ru
    } else {
        Lang::En
    }
}

/// The Russian or the English text, as the run's language says.
pub fn pick<T>(ru: T, en: T) -> T {
    match current() {
        Lang::Ru => ru,
        Lang::En => en,
    }
}

/// Whether the run speaks Russian.
pub fn is_ru() -> bool {
    current() == Lang::Ru
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn locale_decides_in_posix_order() {
        assert_eq!(from_locale(env(&[])), Lang::En);
        assert_eq!(from_locale(env(&[("LANG", "ru_RU.UTF-8")])), Lang::Ru);
        assert_eq!(from_locale(env(&[("LANG", "en_US.UTF-8")])), Lang::En);
        assert_eq!(from_locale(env(&[("LANG", "C")])), Lang::En);
        assert_eq!(
            from_locale(env(&[
                ("LANG", "en_US.UTF-8"),
                ("LC_MESSAGES", "ru_RU.UTF-8")
            ])),
            Lang::Ru
        );
        assert_eq!(
            from_locale(env(&[("LANG", "ru_RU.UTF-8"), ("LC_ALL", "en_GB.UTF-8")])),
            Lang::En
        );
        // An empty variable does not count.
        assert_eq!(
            from_locale(env(&[("LC_ALL", ""), ("LANG", "ru_RU.UTF-8")])),
            Lang::Ru
        );
    }
}
