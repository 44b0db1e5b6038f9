//! What tests read and steer: every session as the portal knows it ([`ChatSessionInfo`], the oracle the client
//! is checked against) and closing an open session while a run goes on (which sends `ONCRMACTIVITYUPDATE` to the
//! application's handlers, as the portal does).

use chrono::{DateTime, FixedOffset};

use super::render::role;
use super::script;
use crate::bitrix24::app::{activity_update_data, send_event_in};
use crate::bitrix24::Bitrix24Emulator;

/// One session as the portal knows it now.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatSessionInfo {
    pub activity_id: u64,
    pub session_id: u64,
    pub chat_id: u64,
    pub line_id: u32,
    pub connector: String,
    pub user_code: String,
    /// `COMPLETED=Y`.
    pub completed: bool,
    pub responsible_id: u64,
    /// Operators in the order they took the session (transfers add one).
    pub operators: Vec<u64>,
    pub bot_id: Option<u64>,
    /// The connector user writing for the client.
    pub client_user: u64,
    pub client_name: String,
    /// The activity's owner: CRM kind (`CONTACT`…) and ID.
    pub owner: (String, u64),
    /// The owner was deleted from the CRM.
    pub owner_deleted: bool,
    pub start: DateTime<FixedOffset>,
    /// The history as `imopenlines.session.history.get` shows it now, in message order:
    /// (message ID, `client`/`operator`/`bot`/`system`, sender ID, BB-code text, attached file name).
    pub messages: Vec<(u64, &'static str, u64, String, Option<String>)>,
    pub unanswered: bool,
    pub long_text: bool,
    pub long_history: bool,
}

impl Bitrix24Emulator {
    /// Every Open Lines session, ascending activity ID.
    pub fn chat_sessions(&self) -> Vec<ChatSessionInfo> {
        let data = &self.inner.data.open_lines;
        let users = &self.inner.data.users;
        data.sessions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let st = data.status(i);
                let mut messages = script::script(r, &data.config, users);
                if !st.completed {
                    messages.pop();
                }
                ChatSessionInfo {
                    activity_id: r.activity_id,
                    session_id: r.session_id,
                    chat_id: r.chat_id,
                    line_id: r.line_id(),
                    connector: r.connector().to_string(),
                    user_code: r.user_code.clone(),
                    completed: st.completed,
                    responsible_id: r.responsible(),
                    operators: r.operators.clone(),
                    bot_id: r.bot,
                    client_user: r.client_user,
                    client_name: r.client_name.clone(),
                    owner: (r.owner.0.as_str().to_string(), r.owner.1),
                    owner_deleted: r.owner_deleted,
                    start: r.start,
                    messages: messages
                        .into_iter()
                        .map(|m| {
                            let file = m.file.as_ref().map(|f| f.name.to_string());
                            (m.id, role(m.author), m.author.sender_id(r), m.text, file)
                        })
                        .collect(),
                    unanswered: r.shape.unanswered,
                    long_text: r.shape.long_text,
                    long_history: r.shape.long_history,
                }
            })
            .collect()
    }

    /// Closes an open session now (`COMPLETED=Y`, `END_TIME` and `LAST_UPDATED` = now, the closing notice
    /// appears), as when an operator finishes a dialog during a run, and sends `ONCRMACTIVITYUPDATE` for its
    /// activity to the application's bound handlers from a task of its own (inside a Tokio runtime; the portal's
    /// event queue does not wait either). False when unknown or already closed.
    /// [`Bitrix24Emulator::close_chat_session_notify`] waits for the handlers instead.
    pub fn close_chat_session(&self, session_id: u64) -> bool {
        let Some(activity_id) = self.close_session(session_id) else {
            return false;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            rt.spawn(async move {
                send_event_in(
                    inner,
                    "ONCRMACTIVITYUPDATE",
                    &activity_update_data(activity_id),
                )
                .await
            });
        }
        true
    }

    /// [`Bitrix24Emulator::close_chat_session`], then `ONCRMACTIVITYUPDATE` for the session's activity to every
    /// bound handler (with the application token, as the portal sends it); their HTTP statuses. `None` when the
    /// session is unknown or already closed.
    pub async fn close_chat_session_notify(&self, session_id: u64) -> Option<Vec<u16>> {
        let activity_id = self.close_session(session_id)?;
        Some(self.send_activity_update(activity_id).await)
    }

    /// Closes the session; its activity's ID, `None` when unknown or already closed.
    fn close_session(&self, session_id: u64) -> Option<u64> {
        let now = super::now(&self.inner);
        let data = &self.inner.data.open_lines;
        let activity_id = data
            .sessions
            .iter()
            .find(|r| r.session_id == session_id)?
            .activity_id;
        data.close(session_id, now).then_some(activity_id)
    }
}
