//! Search by `userMeta.*` over pages, and the fresh `x-client-request-id` of every call.

use std::collections::{BTreeMap, HashSet};

use b24sense_speechsense::{Error, SearchScope};

use crate::{chat, client, emulator, fields, upload_mp3, AUDIO_CONN, CHAT_CONN};

#[tokio::test]
async fn search_by_user_meta_id_follows_pages() {
    let emu = emulator().await;
    let c = client(&emu);
    let mut talk_ids = BTreeMap::new();
    for call in ["101", "102", "103"] {
        let id = upload_mp3(&c, AUDIO_CONN, &fields(call), 64).await.unwrap();
        talk_ids.insert(call, id);
    }
    let scope = SearchScope {
        organization_id: "org".into(),
        space_id: "space".into(),
        project_id: "proj".into(),
        connection_id: AUDIO_CONN.into(),
    };
    for (case, calls) in [
        ("one id", vec!["102"]),
        ("either of two ids", vec!["101", "103"]),
        ("no match", vec!["999"]),
    ] {
        let values = calls.iter().map(|v| v.to_string()).collect();
        let found = c
            .search(&scope, &[("userMeta.id".into(), values)])
            .await
            .unwrap();
        let expected: Vec<&String> = calls.iter().filter_map(|v| talk_ids.get(v)).collect();
        assert_eq!(found.len(), expected.len(), "{case}: {found:?}");
        assert_eq!(
            found.iter().collect::<HashSet<_>>(),
            expected.into_iter().collect::<HashSet<_>>(),
            "{case}"
        );
    }

    // More matches than one page (100): all pages are followed.
    for _ in 0..130 {
        c.upload_text(CHAT_CONN, &fields("dup"), &chat())
            .await
            .unwrap();
    }
    let chat_scope = SearchScope {
        connection_id: CHAT_CONN.into(),
        ..scope.clone()
    };
    let found = c
        .search(&chat_scope, &[("userMeta.id".into(), vec!["dup".into()])])
        .await
        .unwrap();
    assert_eq!(found.len(), 130);
    assert_eq!(found.iter().collect::<HashSet<_>>().len(), 130);
    assert_eq!(emu.stats().searches, 3 + 2);

    let err = c
        .search(
            &SearchScope {
                connection_id: "conn-nope".into(),
                ..scope
            },
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownConnection(_)), "{err:?}");
}

#[tokio::test]
async fn client_request_ids_are_fresh_uuids() {
    let emu = emulator().await;
    let c = client(&emu);
    for call in ["1", "2"] {
        upload_mp3(&c, AUDIO_CONN, &fields(call), 10).await.unwrap();
    }
    c.check_connection(AUDIO_CONN).await.unwrap();
    c.upload_text(CHAT_CONN, &fields("3"), &chat())
        .await
        .unwrap();
    let scope = SearchScope {
        project_id: "p".into(),
        connection_id: AUDIO_CONN.into(),
        ..Default::default()
    };
    c.search(&scope, &[]).await.unwrap();
    let calls = emu.calls();
    assert_eq!(calls.len(), 5);
    let ids: HashSet<String> = calls
        .iter()
        .map(|c| c.client_request_id.clone().expect("x-client-request-id"))
        .collect();
    assert_eq!(ids.len(), 5, "every call has its own id: {calls:?}");
    assert!(
        ids.iter()
            .all(|id| id.len() == 36 && id.chars().nth(14) == Some('4')),
        "{ids:?}"
    );
}
