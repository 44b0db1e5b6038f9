//! The generated portal: users, CRM records and the call history, deterministic from the seed.
//!
//! Calls are kept typed (a 100,000-call portal as JSON objects would weigh hundreds of MB) and rendered to the
//! portal's wire shape on the way out.
//!
//! The parts:
//! - `call`: one call-history row ([`CallRec`]), its fields ([`FieldVal`]) and wire shape.
//! - `people`: users and CRM records ([`UserRec`], [`CrmRec`], [`CrmKind`]).
//! - `people_gen` and `call_gen`: their generation, in that order from one seeded generator; `names`: what
//!   they draw from.

mod call;
mod call_gen;
mod names;
mod people;
mod people_gen;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::SeedableRng;

pub use call::{CallRec, FieldVal};
pub use people::{CrmKind, CrmRec, UserRec};

use crate::bitrix24::config::PortalConfig;

/// The whole generated portal.
#[derive(Debug)]
pub struct PortalData {
    /// Ascending by ID.
    pub calls: Vec<CallRec>,
    pub users: Vec<UserRec>,
    pub contacts: Vec<CrmRec>,
    pub companies: Vec<CrmRec>,
    pub leads: Vec<CrmRec>,
    pub deals: Vec<CrmRec>,
    /// Disk file id → index into `calls`.
    pub files: HashMap<u64, usize>,
    /// CALL_ID → index into `calls`.
    pub by_call_id: HashMap<String, usize>,
    /// Open Lines sessions ([`crate::bitrix24::openlines`]).
    pub open_lines: crate::bitrix24::openlines::OpenLinesData,
}

impl PortalData {
    pub fn crm(&self, kind: CrmKind) -> &[CrmRec] {
        match kind {
            CrmKind::Contact => &self.contacts,
            CrmKind::Company => &self.companies,
            CrmKind::Lead => &self.leads,
            CrmKind::Deal => &self.deals,
        }
    }

    /// Records are generated with IDs 1..=n, so lookups are by position.
    pub fn crm_by_id(&self, kind: CrmKind, id: u64) -> Option<&CrmRec> {
        let list = self.crm(kind);
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| list.get(i))
    }

    pub fn user_by_id(&self, id: u64) -> Option<&UserRec> {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.users.get(i))
    }
}

/// Generates the whole portal from `cfg.seed`: the same configuration always gives the same portal.
pub fn generate(cfg: &PortalConfig) -> PortalData {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let people = people_gen::generate(cfg, &mut rng);
    let calls = call_gen::generate(cfg, &mut rng, &people);
    let crm_counts = [
        people.contacts.len(),
        people.companies.len(),
        people.leads.len(),
        people.deals.len(),
    ];
    let open_lines = crate::bitrix24::openlines::generate(cfg, &people.users, crm_counts);
    PortalData {
        calls: calls.calls,
        users: people.users,
        contacts: people.contacts,
        companies: people.companies,
        leads: people.leads,
        deals: people.deals,
        files: calls.files,
        by_call_id: calls.by_call_id,
        open_lines,
    }
}
