//! Generates the portal's users (the webhook user always active, a few others gone) and its CRM: companies,
//! contacts (half at a company), leads (some untitled) and deals (each at a company and with a contact).

use chrono::Duration as ChronoDuration;
use rand::rngs::StdRng;
use rand::Rng;

use super::names::{person, phone, COMPANY_WORDS, POSITIONS};
use super::people::{CrmKind, CrmRec, UserRec};
use crate::bitrix24::config::PortalConfig;

/// The generated users and CRM records, each list with IDs 1..=n.
pub(super) struct People {
    pub(super) users: Vec<UserRec>,
    pub(super) contacts: Vec<CrmRec>,
    pub(super) companies: Vec<CrmRec>,
    pub(super) leads: Vec<CrmRec>,
    pub(super) deals: Vec<CrmRec>,
}

/// Draws the people from `rng` (before the calls, which refer to them).
pub(super) fn generate(cfg: &PortalConfig, rng: &mut StdRng) -> People {
    let users: Vec<UserRec> = (1..=cfg.users.max(1) as u64)
        .map(|id| {
            let (name, last_name, second_name, female) = person(rng);
            UserRec {
                id,
                // The webhook user (an admin) is always active; a few others have left the company.
                active: id == cfg.webhook_user || !rng.random_bool(0.1),
                email: format!("user{id}@example.ru"),
                position: POSITIONS[rng.random_range(0..POSITIONS.len())].to_string(),
                mobile: phone(rng),
                inner: format!("{}", 100 + id),
                department: 1 + id % 3,
                name,
                last_name,
                second_name,
                female,
            }
        })
        .collect();
    let n_users = users.len() as u64;
    let created = cfg.start - ChronoDuration::days(90);
    let mk_crm = |kind: CrmKind, n: usize, rng: &mut StdRng| -> Vec<CrmRec> {
        (1..=n as u64)
            .map(|id| {
                let (name, last_name, second_name, _) = person(rng);
                let company = format!(
                    "ООО «{}»",
                    COMPANY_WORDS[rng.random_range(0..COMPANY_WORDS.len())]
                );
                let title = match kind {
                    CrmKind::Contact => String::new(),
                    CrmKind::Company => company.clone(),
                    // Some leads have no title: mapping falls back to the person's name.
                    CrmKind::Lead if rng.random_bool(0.2) => String::new(),
                    CrmKind::Lead => format!("Входящий звонок: {company}"),
                    CrmKind::Deal => format!("Поставка для {company}"),
                };
                CrmRec {
                    kind,
                    id,
                    title,
                    name: if kind == CrmKind::Company || kind == CrmKind::Deal {
                        String::new()
                    } else {
                        name
                    },
                    last_name: if kind == CrmKind::Company || kind == CrmKind::Deal {
                        String::new()
                    } else {
                        last_name
                    },
                    second_name,
                    phone: phone(rng),
                    email: format!("client{id}@mail.example"),
                    assigned: rng.random_range(1..=n_users),
                    company_id: 0,
                    contact_id: 0,
                    created: created + ChronoDuration::minutes(rng.random_range(0..90 * 24 * 60)),
                }
            })
            .collect()
    };
    let companies = mk_crm(CrmKind::Company, cfg.companies, rng);
    let mut contacts = mk_crm(CrmKind::Contact, cfg.contacts, rng);
    let leads = mk_crm(CrmKind::Lead, cfg.leads, rng);
    let mut deals = mk_crm(CrmKind::Deal, cfg.deals, rng);
    for c in contacts.iter_mut() {
        if !companies.is_empty() && rng.random_bool(0.5) {
            c.company_id = rng.random_range(1..=companies.len() as u64);
        }
    }
    for d in deals.iter_mut() {
        if !companies.is_empty() {
            d.company_id = rng.random_range(1..=companies.len() as u64);
        }
        if !contacts.is_empty() {
            d.contact_id = rng.random_range(1..=contacts.len() as u64);
        }
    }
    People {
        users,
        contacts,
        companies,
        leads,
        deals,
    }
}
