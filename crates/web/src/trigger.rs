//! What started an export run. Stored in the run's journal and shown on the page as its lowercase name
//! (`page`, `event`, `schedule`, `recheck`, `resume`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// "Start export" on the settings page: every qualifying call from the start.
    Page,
    /// A call-end event (or one that arrived during the last run).
    Event,
    /// The periodic catch-up pass of continuous sync.
    Schedule,
    /// Late recordings due for another check.
    Recheck,
    /// A run that a restart interrupted, taken up again.
    Resume,
}

impl Trigger {
    /// Every trigger but the page's is continuous sync's incremental pass.
    pub fn is_incremental(self) -> bool {
        self != Trigger::Page
    }
}

/// Serde for a progress's `trigger`: `""` while none is known (a progress read back from a damaged journal).
pub mod or_empty {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<Trigger>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => t.serialize(s),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Trigger>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Known(Trigger),
            Other(serde::de::IgnoredAny),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Known(t) => Some(t),
            Stored::Other(_) => None,
        })
    }
}
