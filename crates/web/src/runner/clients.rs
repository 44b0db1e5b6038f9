//! One Bitrix24 REST client per portal in this process, shared by its runs, events and page requests, so its
//! request limiter spans them all.

use std::sync::Arc;

use b24sense_bitrix24::{Bitrix24Client, ClientConfig, Credentials};
use b24sense_store::Portal;

use super::{RunEnv, Runner};

pub(super) struct PortalClient {
    /// The endpoints it was made for: a reinstall that changes them gets a new client.
    endpoints: (String, String),
    client: Bitrix24Client,
}

impl Runner {
    /// The portal's REST client: one per portal in this process, as long as its endpoints stay the same. Its request
    /// limiter then spans every run, event and page request of the portal, so runs that follow each other (an event
    /// during a run, a catch-up right after) never start with a fresh burst against a bucket the last run filled.
    pub fn portal_client(&self, env: &RunEnv, portal: &Portal) -> Result<Bitrix24Client, String> {
        let endpoints = (
            portal.client_endpoint.clone(),
            portal.server_endpoint.clone(),
        );
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&portal.member_id) {
            if c.endpoints == endpoints {
                return Ok(c.client.clone());
            }
        }
        let source = env.token_source(portal)?;
        let client = Bitrix24Client::new(
            Credentials::OAuth(Arc::new(source)),
            ClientConfig {
                rate: env.rate,
                public_hosts_only: env.public_hosts_only,
                ..ClientConfig::default()
            },
        )
        .map_err(|e| e.to_string())?;
        clients.insert(
            portal.member_id.clone(),
            PortalClient {
                endpoints,
                client: client.clone(),
            },
        );
        Ok(client)
    }

    /// Drops the portal's client (uninstalled).
    pub fn forget_client(&self, member_id: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(member_id);
    }
}
