//! `Search` and `Get` over the stored talks: scope by connection and principal, `userMeta.*` filters, paging, and
//! the search index's lag.

use b24sense_speechsense::proto::{
    filter, Field, FieldType, Filter, GetTalkRequest, GetTalkResponse, ProcessingState,
    SearchTalkRequest, SearchTalkResponse, Talk, TalkState,
};
use chrono::Utc;
use tonic::{Request, Status};

use super::service::{from_timestamp, timestamp, TalkServiceImpl};
use super::validate;
use super::StoredTalk;

impl TalkServiceImpl {
    pub(super) fn search_inner(
        &self,
        request: Request<SearchTalkRequest>,
    ) -> Result<SearchTalkResponse, Status> {
        let principal = validate::auth(request.metadata(), &self.state.config)?;
        let req = request.into_inner();
        if req.project_id.is_empty() {
            return Err(Status::invalid_argument("project_id is required"));
        }
        let config = &self.state.config;
        let scope: Vec<&str> = if req.connection_id.is_empty() {
            config
                .connections
                .iter()
                .filter(|c| validate::allowed(c, &principal).is_ok())
                .map(|c| c.id.as_str())
                .collect()
        } else {
            vec![
                validate::connection(config, &principal, &req.connection_id)?
                    .id
                    .as_str(),
            ]
        };
        let page_size = match req.page_size {
            0 => 100,
            n @ 1..=1000 => n as usize,
            _ => return Err(Status::invalid_argument("page_size must be 1..1000")),
        };
        let offset: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("invalid page_token"))?
        };
        for f in &req.filters {
            check_filter(f)?;
        }
        let lag = chrono::Duration::from_std(self.state.config.search_lag).unwrap_or_default();
        let indexed_before = Utc::now() - lag;
        let mut inner = self.state.lock();
        inner.stats.searches += 1;
        let matching: Vec<&StoredTalk> = inner
            .talks
            .iter()
            .filter(|t| t.created_at <= indexed_before)
            .filter(|t| scope.contains(&t.connection_id.as_str()))
            .filter(|t| req.filters.iter().all(|f| matches(f, t)))
            .collect();
        let total = matching.len();
        let talk_ids: Vec<String> = matching
            .iter()
            .skip(offset)
            .take(page_size)
            .map(|t| t.id.clone())
            .collect();
        let next = offset + page_size;
        Ok(SearchTalkResponse {
            talk_ids,
            talks_count: total as i64,
            next_page_token: if next < total {
                next.to_string()
            } else {
                String::new()
            },
        })
    }

    pub(super) fn get_inner(
        &self,
        request: Request<GetTalkRequest>,
    ) -> Result<GetTalkResponse, Status> {
        let principal = validate::auth(request.metadata(), &self.state.config)?;
        let req = request.into_inner();
        let config = &self.state.config;
        let mut inner = self.state.lock();
        inner.stats.gets += 1;
        let talk = inner
            .talks
            .iter()
            .filter(|t| req.talk_ids.contains(&t.id))
            .filter(|t| {
                config
                    .connections
                    .iter()
                    .any(|c| c.id == t.connection_id && validate::allowed(c, &principal).is_ok())
            })
            .map(|t| Talk {
                id: t.id.clone(),
                organization_id: req.organization_id.clone(),
                space_id: req.space_id.clone(),
                connection_id: t.connection_id.clone(),
                project_ids: if req.project_id.is_empty() {
                    vec![]
                } else {
                    vec![req.project_id.clone()]
                },
                created_at: Some(timestamp(t.created_at)),
                modified_at: Some(timestamp(t.modified_at)),
                talk_fields: t
                    .fields
                    .iter()
                    .map(|(name, value)| Field {
                        name: name.clone(),
                        value: value.clone(),
                        r#type: field_type(name) as i32,
                    })
                    .collect(),
                talk_state: Some(TalkState {
                    processing_state: ProcessingState::Success as i32,
                    algorithm_processing_infos: vec![],
                }),
                ..Default::default()
            })
            .collect();
        Ok(GetTalkResponse { talk })
    }
}

fn field_type(name: &str) -> FieldType {
    match name {
        "date" => FieldType::Date,
        "direction_outgoing" => FieldType::Boolean,
        _ => FieldType::String,
    }
}

fn check_filter(f: &Filter) -> Result<(), Status> {
    if !f.key.starts_with("userMeta.") {
        return Err(Status::invalid_argument(format!(
            "the emulator supports only userMeta.* filters, got {}",
            f.key
        )));
    }
    match f.filter {
        Some(
            filter::Filter::AnyMatch(_)
            | filter::Filter::BooleanMatch(_)
            | filter::Filter::DateRange(_),
        ) => Ok(()),
        _ => Err(Status::invalid_argument(
            "the emulator supports any_match, boolean_match and date_range filters",
        )),
    }
}

fn matches(f: &Filter, talk: &StoredTalk) -> bool {
    let key = f.key.trim_start_matches("userMeta.");
    let value = talk.fields.get(key);
    let hit = match (&f.filter, value) {
        (_, None) => false,
        (Some(filter::Filter::AnyMatch(m)), Some(v)) => m.values.iter().any(|x| x == v),
        (Some(filter::Filter::BooleanMatch(b)), Some(v)) => {
            v.parse::<bool>().is_ok_and(|x| x == b.value)
        }
        (Some(filter::Filter::DateRange(r)), Some(v)) => {
            let Some(d) = validate::parse_date(v) else {
                return f.inverse;
            };
            let (from_incl, to_incl) = r
                .bounds_inclusive
                .as_ref()
                .map_or((true, true), |b| (b.from_inclusive, b.to_inclusive));
            let after_from = r
                .from_value
                .as_ref()
                .and_then(from_timestamp)
                .is_none_or(|from| if from_incl { d >= from } else { d > from });
            let before_to = r
                .to_value
                .as_ref()
                .and_then(from_timestamp)
                .is_none_or(|to| if to_incl { d <= to } else { d < to });
            after_from && before_to
        }
        _ => false,
    };
    hit != f.inverse
}
