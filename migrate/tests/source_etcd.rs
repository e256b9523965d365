//! The migrator's source side against a real etcd 3.5 (the cairn-e2e
//! harness starts it on free ports of 127.0.0.1 in a temp dir and kills it
//! when the test ends): compaction discovery, paginated Range at a
//! revision, watch grouping of a Txn, leases, the fence, and the errors
//! for bad input.
//!
//! Needs the etcd binary: `CAIRN_TEST_ETCD` (see cairn-e2e's `binaries`).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cairn_e2e::{Kind, Member};
use cairn_migrate::connect::EndpointConfig;
use cairn_migrate::source::Source;
use cairn_migrate::target::Target;
use cairn_migrate::watch::{SourceWatch, WatchItem};
use cairn_migrate::Error;
use cairn_proto::mvccpb::event::EventType;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

/// Every test is bounded.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn cfg(urls: &str) -> EndpointConfig {
    EndpointConfig {
        urls: urls.to_string(),
        dial_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn source(etcd: &Member) -> Result<Source> {
    let (src, info) = Source::connect(&cfg(&etcd.endpoint()), None).await?;
    ensure!(info.version.starts_with("3.5"), "version {}", info.version);
    ensure!(info.cluster_id != 0 && info.member_id != 0);
    Ok(src)
}

async fn bounded<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .context("test timed out")?
}

#[tokio::test]
async fn compact_revision_is_discovered() -> Result<()> {
    bounded(async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        let src = source(&etcd).await?;
        assert_eq!(src.compact_revision(-1).await?, -1, "never compacted");
        for i in 0..10 {
            c.put(format!("k{i}"), "v", None).await?;
        }
        // Revisions 2..=11.
        c.compact(6, None).await?;
        assert_eq!(src.compact_revision(-1).await?, 6);
        assert_eq!(
            src.compact_revision(6).await?,
            6,
            "a known compaction is confirmed cheaply"
        );
        c.compact(9, None).await?;
        assert_eq!(
            src.compact_revision(6).await?,
            9,
            "a later compaction is found"
        );
        // A watch from below the compact revision is canceled with it.
        match SourceWatch::open(&src, vec![0], vec![0], 3, false).await {
            Err(Error::Compacted {
                compact_revision, ..
            }) => assert_eq!(compact_revision, 9),
            Ok(mut w) => match w.next().await? {
                WatchItem::Compacted(c) => assert_eq!(c, 9),
                other => panic!("expected a compaction cancel, got {other:?}"),
            },
            Err(e) => return Err(e.into()),
        }
        Ok(())
    })
    .await
}

/// Windowed pages (kvread::Cursor) read every key once, in order, at one
/// revision, across prefixes of every density, keys that end in 0xff, and
/// windows that narrow and widen.
#[tokio::test]
async fn windowed_pages_read_every_key_once_in_order() -> Result<()> {
    bounded(async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        let src = source(&etcd).await?;
        let mut want: Vec<Vec<u8>> = Vec::new();
        // A dense prefix (1,500 keys), sparse ones, and byte edge cases.
        let mut ops = Vec::new();
        for i in 0..1500 {
            ops.push(format!("/registry/pods/ns/p{i:05}").into_bytes());
        }
        for i in 0..40 {
            ops.push(format!("/registry/c{i}/x").into_bytes());
        }
        ops.push(vec![0x01]);
        ops.push(vec![b'a', 0xff]);
        ops.push(vec![b'a', 0xff, 0xff, 0x00]);
        ops.push(vec![0xff, 0xff]);
        for chunk in ops.chunks(100) {
            let t = etcd_client::Txn::new().and_then(
                chunk
                    .iter()
                    .map(|k| etcd_client::TxnOp::put(k.clone(), "v", None))
                    .collect::<Vec<_>>(),
            );
            c.txn(t).await?;
        }
        want.extend(ops);
        want.sort();
        let at = src.current_revision().await?;
        c.put("/registry/pods/ns/p00007b", "later", None).await?;
        let mut cursor = cairn_migrate::kvread::Cursor::default();
        let mut keys = Vec::new();
        let mut pages = 0;
        for _ in 0..10_000 {
            let (page, next) = src.range_window(&cursor, at, 10).await?;
            cursor = next;
            ensure!(page.kvs.len() <= 10);
            keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
            pages += 1;
            if !page.more {
                break;
            }
        }
        assert_eq!(keys.len(), want.len(), "after {pages} pages");
        assert_eq!(keys, want);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn pages_at_a_fixed_revision() -> Result<()> {
    bounded(async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        let src = source(&etcd).await?;
        for i in 0..50 {
            c.put(format!("k{i:03}"), format!("v{i}"), None).await?;
        }
        let at = src.current_revision().await?;
        assert_eq!(at, 51);
        // Later writes must not show in pages read at `at`.
        for i in 0..10 {
            c.put(format!("k{i:03}"), "changed", None).await?;
        }
        c.delete("k049", None).await?;
        c.put("k500", "new", None).await?;
        assert_eq!(src.count(at).await?, 50);
        let mut cursor = cairn_migrate::kvread::Cursor::default();
        let mut keys = Vec::new();
        for _ in 0..100 {
            let (page, next) = src.range_window(&cursor, at, 7).await?;
            cursor = next;
            ensure!(page.kvs.len() <= 7);
            for kv in &page.kvs {
                let i: usize = std::str::from_utf8(&kv.key[1..])?.parse()?;
                assert_eq!(
                    kv.value,
                    format!("v{i}").into_bytes(),
                    "value of {i} at {at}"
                );
                assert_eq!(kv.mod_revision, i as i64 + 2);
                assert_eq!(kv.create_revision, i as i64 + 2);
                assert_eq!(kv.version, 1);
                keys.push(kv.key.clone());
            }
            if !page.more {
                break;
            }
        }
        let want: Vec<Vec<u8>> = (0..50).map(|i| format!("k{i:03}").into_bytes()).collect();
        assert_eq!(keys, want);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_txn_is_one_revision_in_order() -> Result<()> {
    bounded(async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        let src = source(&etcd).await?;
        c.put("c", "0", None).await?;
        let from = src.current_revision().await? + 1;
        let mut w = SourceWatch::open(&src, vec![0], vec![0], from, true).await?;
        c.put("solo", "1", None).await?;
        let txn = Txn::new()
            .when(vec![Compare::version("c", CompareOp::Greater, 0)])
            .and_then(vec![
                TxnOp::put("b", "2", None),
                TxnOp::put("a", "3", None),
                TxnOp::delete("c", None),
            ]);
        c.txn(txn).await?;
        let mut revs = Vec::new();
        for _ in 0..20 {
            if revs.len() >= 2 {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(10), w.next()).await?? {
                WatchItem::Revisions(r) => revs.extend(r),
                WatchItem::Progress => {}
                WatchItem::Compacted(c) => panic!("compacted at {c}"),
            }
        }
        assert_eq!(revs.len(), 2);
        assert_eq!(revs[0].revision, from);
        assert_eq!(revs[0].events.len(), 1);
        let txn_rev = &revs[1];
        assert_eq!(txn_rev.revision, from + 1);
        let got: Vec<(i32, Vec<u8>)> = txn_rev
            .events
            .iter()
            .map(|e| (e.r#type, e.kv.clone().unwrap_or_default().key))
            .collect();
        assert_eq!(
            got,
            vec![
                (EventType::Put as i32, b"b".to_vec()),
                (EventType::Put as i32, b"a".to_vec()),
                (EventType::Delete as i32, b"c".to_vec()),
            ]
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn leases_are_read_with_their_ttls() -> Result<()> {
    bounded(async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        let src = source(&etcd).await?;
        let lease = c.lease_grant(120, None).await?.id();
        c.put("leased", "v", Some(PutOptions::new().with_lease(lease)))
            .await?;
        let (ids, rev) = src.leases().await?;
        assert_eq!(ids, vec![lease]);
        assert!(rev >= 2);
        let l = src.lease(lease).await?.context("lease missing")?;
        assert_eq!(l.granted_ttl, 120);
        assert!(l.remaining_ttl > 100 && l.remaining_ttl <= 120, "{l:?}");
        c.lease_revoke(lease).await?;
        assert!(
            src.lease(lease).await?.is_none(),
            "a revoked lease reads as gone"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_fence_refuses_puts_and_lets_deletes_through() -> Result<()> {
    bounded(async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        let src = source(&etcd).await?;
        c.put("a", "1", None).await?;
        c.put("b", "1", None).await?;
        let member = src.status().await?.member_id;
        src.fence(member).await?;
        let alarms = src.alarms().await?;
        assert_eq!(alarms.len(), 1);
        assert_eq!(alarms[0].member_id, member);
        let err = c
            .put("a", "2", None)
            .await
            .expect_err("a put passed the fence");
        assert!(err.to_string().contains("database space exceeded"), "{err}");
        // Deletes pass a NOSPACE fence: cutover watches for them.
        let before = src.current_revision().await?;
        c.delete("b", None).await?;
        assert_eq!(src.current_revision().await?, before + 1);
        let lines =
            cairn_migrate::cutover::writes_after_fence(&src, before, Duration::from_millis(500))
                .await?;
        assert_eq!(
            lines,
            vec![format!(
                "source accepted a write after the fence: DELETE b at revision {}",
                before + 1
            )]
        );
        assert_eq!(src.unfence_all().await?, vec![member]);
        assert!(src.alarms().await?.is_empty());
        c.put("a", "3", None).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn bad_input_gets_one_clear_error() -> Result<()> {
    bounded(async {
        let etcd = Member::start(Kind::Etcd).await?;
        // Nothing listens there.
        let port = cairn_e2e::ports::free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let e = Source::connect(&cfg(&url), None)
            .await
            .err()
            .context("connected to nothing")?;
        assert!(
            e.to_string()
                .starts_with(&format!("cannot reach the source at {url}: ")),
            "{e}"
        );
        let e = Target::connect(&cfg(&url))
            .await
            .err()
            .context("connected to nothing")?;
        assert!(
            e.to_string()
                .starts_with(&format!("cannot reach the target at {url}: ")),
            "{e}"
        );
        // etcd is not Cairn.
        let e = Target::connect(&cfg(&etcd.endpoint()))
            .await
            .err()
            .context("etcd served Migration")?;
        assert_eq!(
            e.to_string(),
            format!(
                "the target at {} is not Cairn: it does not serve cairnpb.migrate.v1.Migration",
                etcd.endpoint()
            )
        );
        // https to a plaintext server: a TLS error.
        let tls_url = etcd.endpoint().replace("http://", "https://");
        let e = Source::connect(&cfg(&tls_url), None)
            .await
            .err()
            .context("TLS to plaintext worked")?;
        println!("{e}");
        assert!(
            e.to_string()
                .starts_with("TLS handshake with the source at "),
            "{e}"
        );
        // A bad URL.
        let e = Source::connect(&cfg("127.0.0.1:2379"), None)
            .await
            .err()
            .context("bad url accepted")?;
        assert!(
            e.to_string()
                .contains("must start with http:// or https://"),
            "{e}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_server_that_is_not_etcd_is_refused() -> Result<()> {
    bounded(async {
        // An HTTP/1 server: answers anything with 400.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming().take(16) {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            }
        });
        let e = Source::connect(&cfg(&url), None)
            .await
            .err()
            .context("connected")?;
        println!("{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("the source at {url} is not etcd v3")),
            "{e}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn calls_are_balanced_over_the_endpoints_that_answer() -> Result<()> {
    bounded(async {
        let etcd = Member::start(Kind::Etcd).await?;
        let mut c = etcd.client().await?;
        c.put("k", "v", None).await?;
        let dead = format!("http://127.0.0.1:{}", cairn_e2e::ports::free_port()?);
        let urls = format!("{dead},{}", etcd.endpoint());
        let (src, _) = Source::connect(&cfg(&urls), None).await?;
        for _ in 0..20 {
            let (page, _) = src.range_window(&Default::default(), 0, 10).await?;
            assert_eq!(page.kvs.len(), 1);
        }
        // Every endpoint down: named, with the first one's reason.
        let dead2 = format!("http://127.0.0.1:{}", cairn_e2e::ports::free_port()?);
        let both = format!("{dead},{dead2}");
        let e = Source::connect(&cfg(&both), None)
            .await
            .err()
            .context("connected to nothing")?;
        assert!(
            e.to_string()
                .starts_with(&format!("cannot reach the source at {both}: {dead}: ")),
            "{e}"
        );
        Ok(())
    })
    .await
}
