//! Names, companies and random helpers the generator draws from (Russian names, as on the portals b24sense
//! serves).

use rand::rngs::StdRng;
use rand::Rng;

const MALE_NAMES: &[&str] = &[
    "Александр",
    "Дмитрий",
    "Максим",
    "Сергей",
    "Андрей",
    "Алексей",
    "Артём",
    "Илья",
    "Кирилл",
    "Михаил",
    "Никита",
    "Иван",
    "Егор",
    "Павел",
    "Роман",
    "Олег",
];
const FEMALE_NAMES: &[&str] = &[
    "Анна",
    "Мария",
    "Елена",
    "Ольга",
    "Татьяна",
    "Наталья",
    "Ирина",
    "Екатерина",
    "Светлана",
    "Юлия",
    "Дарья",
    "Ксения",
];
const LAST_NAMES: &[&str] = &[
    "Иванов",
    "Смирнов",
    "Кузнецов",
    "Попов",
    "Васильев",
    "Петров",
    "Соколов",
    "Михайлов",
    "Новиков",
    "Фёдоров",
    "Морозов",
    "Волков",
    "Алексеев",
    "Лебедев",
    "Семёнов",
    "Егоров",
    "Павлов",
    "Козлов",
    "Степанов",
    "Николаев",
];
const PATRONYMICS: &[&str] = &[
    "Александрович",
    "Сергеевич",
    "Игоревич",
    "Петрович",
    "Андреевич",
    "Олегович",
];
pub(super) const COMPANY_WORDS: &[&str] = &[
    "Ромашка",
    "Вектор",
    "СтройИнвест",
    "Альфа-Трейд",
    "ТехноСервис",
    "Северный ветер",
    "Гранит",
    "Меридиан",
    "Логистик Плюс",
    "Интерфарм",
    "Восход",
    "Промснаб",
];
pub(super) const POSITIONS: &[&str] = &[
    "Менеджер по продажам",
    "Старший менеджер",
    "Оператор колл-центра",
    "Руководитель отдела",
];
pub(super) const REST_APPS: &[(u64, &str)] = &[(17, "Asterisk Connector"), (23, "Mango Office")];

fn female_last(last: &str) -> String {
    if last.ends_with("ов") || last.ends_with("ев") || last.ends_with("ёв") || last.ends_with("ин")
    {
        format!("{last}а")
    } else {
        last.to_string()
    }
}

pub(super) fn person(rng: &mut StdRng) -> (String, String, String, bool) {
    let female = rng.random_bool(0.45);
    let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
    let patr = PATRONYMICS[rng.random_range(0..PATRONYMICS.len())];
    if female {
        let name = FEMALE_NAMES[rng.random_range(0..FEMALE_NAMES.len())];
        let patr = patr
            .strip_suffix("ич")
            .map_or(patr.to_string(), |p| format!("{p}на"));
        (name.to_string(), female_last(last), patr, true)
    } else {
        let name = MALE_NAMES[rng.random_range(0..MALE_NAMES.len())];
        (name.to_string(), last.to_string(), patr.to_string(), false)
    }
}

pub(super) fn phone(rng: &mut StdRng) -> String {
    format!("+79{:09}", rng.random_range(0..1_000_000_000u64))
}

pub(super) fn hex_upper(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| format!("{:X}", rng.random_range(0..16u8)))
        .collect()
}

/// A log-normal-ish talk length: median ≈ 2 min, clamped to 10 s..40 min.
pub(super) fn talk_seconds(rng: &mut StdRng) -> u64 {
    // Box–Muller from two uniforms.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let secs = (120f64.ln() + 1.0 * z).exp();
    secs.clamp(10.0, 2400.0) as u64
}
