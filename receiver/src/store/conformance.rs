//! What every engine must do, checked on each: the SQLite engine always, the PostgreSQL engine
//! when `FLOWPACK_TEST_POSTGRES` names a server (each test on a database of its own).

use std::any::Any;
use std::io::Read;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowpack_shared::names::{ContainerPath, Name};

use super::postgres::testdb::TestDb;
use super::{AuditRow, DeploymentId, Error, Reads, Result, Store, Visible, wall_clock};

/// A store of each engine, with what must live as long as it (a directory, a database).
fn engines() -> Vec<(&'static str, Store, Box<dyn Any>)> {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sqlite =
        Store::create(&tmp.path().join("store.db"), wall_clock()).unwrap_or_else(|e| panic!("{e}"));
    let mut all: Vec<(&'static str, Store, Box<dyn Any>)> = vec![("sqlite", sqlite, Box::new(tmp))];
    if let Some(db) = TestDb::new() {
        let pg = Store::create_postgres(&db.url, wall_clock()).unwrap_or_else(|e| panic!("{e}"));
        all.push(("postgres", pg, Box::new(db)));
    }
    all
}

/// Waits for a future outside any runtime of the store's.
fn wait<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
        .block_on(f)
}

fn path(s: &str) -> ContainerPath {
    ContainerPath::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Stored (name, value) pairs as a test writes them: grants or secrets' fingerprints.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn rows(r: Pairs<'_>) -> Vec<(String, String)> {
    r.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
}

/// Makes principal `name` with a token (its id derived from the name), so that
/// [`principals`] lists it.
fn principal_with_token(tx: &super::Tx<'_>, name: &str) -> Result<i64> {
    let pid = tx.ensure_principal(name)?;
    tx.insert_token(&format!("tok-{name}"), pid, b"x", None)?;
    Ok(pid)
}

/// The principals that have a token, by name, as committed.
fn principals(store: &Store) -> Vec<String> {
    let db = store.db().unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<String> = db
        .tokens()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|t| t.principal)
        .collect();
    names.dedup();
    names
}

#[test]
fn principal_by_token_gives_hash_name_and_every_grant() {
    for (engine, store, _keep) in engines() {
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let principals: [(&str, &str, Pairs<'_>); 3] = [
            ("0000000000000000", "none", &[]),
            ("0000000000000001", "one", &[("/a", "read")]),
            (
                "0000000000000002",
                "two",
                &[("/a", "read,use"), ("/b/c", "write")],
            ),
        ];
        for (id, name, grants) in principals {
            let pid = tx.ensure_principal(name).unwrap_or_else(|e| panic!("{e}"));
            for (prefix, perms) in grants {
                tx.add_grant(pid, prefix, perms)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            tx.insert_token(id, pid, name.as_bytes(), None)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // A second grant on a prefix is a union.
        let two = tx.ensure_principal("two").unwrap_or_else(|e| panic!("{e}"));
        tx.add_grant(two, "/a", "use,deploy")
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));

        for (id, name, grants) in principals {
            let mut got = db
                .principal_by_token(id)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("{engine}: token {id} not found"));
            got.grants.sort();
            assert_eq!(got.secret_sha256, name.as_bytes(), "{engine}");
            assert_eq!(got.principal, name, "{engine}");
            let want = if name == "two" {
                rows(&[("/a", "deploy,read,use"), ("/b/c", "write")])
            } else {
                rows(grants)
            };
            assert_eq!(got.grants, want, "{engine}: grants of {name}");
            assert_eq!((got.expires_at_ms, got.last_used_at_ms), (None, None));
        }
        assert!(
            db.principal_by_token("00000000000000ff")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none(),
            "{engine}"
        );
        // Deleting a principal's tokens leaves the principal.
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            tx.delete_tokens_of("two").unwrap_or_else(|e| panic!("{e}")),
            Some(vec!["0000000000000002".to_owned()]),
            "{engine}"
        );
        assert_eq!(
            tx.delete_tokens_of("nobody")
                .unwrap_or_else(|e| panic!("{e}")),
            None,
            "{engine}"
        );
        assert_eq!(
            tx.delete_token("0000000000000001")
                .unwrap_or_else(|e| panic!("{e}"))
                .as_deref(),
            Some("one"),
            "{engine}"
        );
        assert_eq!(
            tx.delete_token("0000000000000001")
                .unwrap_or_else(|e| panic!("{e}")),
            None,
            "{engine}"
        );
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        let left: Vec<String> = db
            .tokens()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(left, ["0000000000000000"], "{engine}");
    }
}

#[test]
fn credential_at_gives_row_and_fingerprints_by_field() {
    for (engine, store, _keep) in engines() {
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let cid = tx
            .ensure_container(&path("/a/b"))
            .unwrap_or_else(|e| panic!("{e}"));
        let (bare, _) = tx
            .upsert_credential(cid, "bare", "basic", r#"{"name":"bare"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let (sealed, _) = tx
            .upsert_credential(cid, "sealed", "oauth2", r#"{"name":"sealed"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        // Written out of order: they come back sorted by field.
        tx.set_secret(sealed, "refresh_token", b"ct1", "00000000000000aa")
            .unwrap_or_else(|e| panic!("{e}"));
        tx.set_secret(sealed, "client_secret", b"ct2", "00000000000000bb")
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));

        let at = |c: &str, n: &str| {
            db.credential_at(&path(c), n)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (row, secrets) = at("/a/b", "bare").unwrap_or_else(|| panic!("bare not found"));
        assert_eq!(
            (row.id, row.kind.as_str(), row.public.as_str()),
            (bare, "basic", r#"{"name":"bare"}"#),
            "{engine}"
        );
        assert!(!row.needs_authorization, "{engine}");
        assert!(secrets.is_empty(), "{engine}");
        let (row, secrets) = at("/a/b", "sealed").unwrap_or_else(|| panic!("sealed not found"));
        let stored = db
            .credential(cid, "sealed")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("sealed not found"));
        assert_eq!(
            (row.id, row.token_version),
            (sealed, stored.token_version),
            "{engine}"
        );
        assert_eq!(row.kind, "oauth2", "{engine}");
        assert_eq!(
            secrets,
            rows(&[
                ("client_secret", "00000000000000bb"),
                ("refresh_token", "00000000000000aa")
            ]),
            "{engine}"
        );
        assert!(at("/a/b", "nope").is_none(), "{engine}");
        assert!(at("/a", "bare").is_none(), "{engine}");
        assert!(at("/x/b", "bare").is_none(), "{engine}");

        // The token version is a compare and swap.
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let v = stored.token_version;
        assert!(
            tx.claim_token_version(sealed, v)
                .unwrap_or_else(|e| panic!("{e}")),
            "{engine}"
        );
        assert!(
            !tx.claim_token_version(sealed, v)
                .unwrap_or_else(|e| panic!("{e}")),
            "{engine}"
        );
        // A changed type drops the old secrets.
        let (same, before) = tx
            .upsert_credential(cid, "sealed", "basic", r#"{"name":"sealed"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(same, sealed, "{engine}");
        assert_eq!(
            before.map(|b| b.kind).as_deref(),
            Some("oauth2"),
            "{engine}"
        );
        assert!(
            tx.secrets(sealed)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_empty(),
            "{engine}"
        );
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        let (_, _, by_id) = db
            .credential_by_id(sealed)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{engine}: by id"));
        assert_eq!(by_id.token_version, v + 2, "{engine}");
    }
}

#[test]
fn queued_jobs_commit_together_and_a_panicking_job_is_rolled_back_alone() {
    for (engine, store, _keep) in engines() {
        let (started, running) = mpsc::channel();
        let (release, gate) = mpsc::channel::<()>();
        // The first job holds the writer until released, so the next two queue behind it and
        // are taken as one batch.
        let first = store.write_grouped((), move |tx| {
            let _ = started.send(());
            let _ = gate.recv();
            principal_with_token(tx, "first")
        });
        running.recv().unwrap_or_else(|e| panic!("{e}"));
        let doomed = store.write_grouped((), |tx| -> Result<i64> {
            principal_with_token(tx, "doomed")?;
            panic!("a job panics after writing");
        });
        let keep = Arc::new(());
        let third = store.write_grouped(keep.clone(), |tx| principal_with_token(tx, "third"));
        release.send(()).unwrap_or_else(|e| panic!("{e}"));

        wait(first).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(wait(doomed), Err(Error::WriterGone)), "{engine}");
        wait(third).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Arc::strong_count(&keep),
            1,
            "{engine}: `keep` is dropped before the answer"
        );
        assert_eq!(store.batches_committed(), 2, "{engine}");
        assert_eq!(principals(&store), ["first", "third"], "{engine}");
    }
}

#[test]
fn a_job_keeps_what_it_wrote_outside_a_failed_savepoint() {
    for (engine, store, _keep) in engines() {
        let refused: Result<()> = wait(store.write_grouped((), |tx| {
            let inner = tx.savepoint(|tx| {
                principal_with_token(tx, "undone")?;
                Err(Error::Batch("refused".into()))
            })?;
            principal_with_token(tx, "audit")?;
            inner
        }));
        assert!(matches!(refused, Err(Error::Batch(_))), "{engine}");
        assert_eq!(principals(&store), ["audit"], "{engine}");
        // A statement that fails inside a savepoint is undone with it, and the job goes on
        // (PostgreSQL refuses every statement after a failed one until then).
        let failed: Result<()> = wait(store.write_grouped((), |tx| {
            let inner = tx.savepoint(|tx| {
                principal_with_token(tx, "partial")?;
                // The same token id again: a unique violation.
                let pid = tx.ensure_principal("partial")?;
                tx.insert_token("tok-partial", pid, b"x", None)
            })?;
            assert!(inner.is_err(), "the second insert fails");
            principal_with_token(tx, "after")?;
            Ok(())
        }));
        failed.unwrap_or_else(|e| panic!("{engine}: {e}"));
        assert_eq!(principals(&store), ["after", "audit"], "{engine}");
        // The failed jobs did not stop the writer.
        wait(store.write_grouped((), |tx| principal_with_token(tx, "later")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(principals(&store), ["after", "audit", "later"], "{engine}");
    }
}

#[test]
fn a_job_whose_statement_failed_is_answered_with_an_error_and_the_batch_commits() {
    for (engine, store, _keep) in engines() {
        let (started, running) = mpsc::channel();
        let (release, gate) = mpsc::channel::<()>();
        let first = store.write_grouped((), move |tx| {
            let _ = started.send(());
            let _ = gate.recv();
            principal_with_token(tx, "first")
        });
        running.recv().unwrap_or_else(|e| panic!("{e}"));
        // Fails on a unique violation, outside any savepoint of its own, and says so.
        let failing = store.write_grouped((), |tx| -> Result<()> {
            let pid = tx.ensure_principal("first")?;
            tx.insert_token("tok-first", pid, b"y", None)
        });
        let third = store.write_grouped((), |tx| principal_with_token(tx, "third"));
        release.send(()).unwrap_or_else(|e| panic!("{e}"));
        wait(first).unwrap_or_else(|e| panic!("{e}"));
        assert!(wait(failing).is_err(), "{engine}");
        wait(third).unwrap_or_else(|e| panic!("{engine}: {e}"));
        assert_eq!(principals(&store), ["first", "third"], "{engine}");
    }
}

#[test]
fn a_token_use_is_recorded_by_the_writer_once_while_queued() {
    for (engine, store, _keep) in engines() {
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let pid = tx.ensure_principal("ci").unwrap_or_else(|e| panic!("{e}"));
        tx.insert_token("00000000000000aa", pid, b"x", None)
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));

        // Hold the writer, so that the uses queue behind this job.
        let (started, running) = mpsc::channel();
        let (release, gate) = mpsc::channel::<()>();
        let held = store.write_grouped((), move |_| -> Result<()> {
            let _ = started.send(());
            let _ = gate.recv();
            Ok(())
        });
        running.recv().unwrap_or_else(|e| panic!("{e}"));
        db.note_token_used("00000000000000aa", 5_000);
        // Queued already: not queued again (this later time is not recorded).
        db.note_token_used("00000000000000aa", 6_000);
        let last_used = |db: &dyn Reads| {
            db.principal_by_token("00000000000000aa")
                .unwrap_or_else(|e| panic!("{e}"))
                .and_then(|t| t.last_used_at_ms)
        };
        assert_eq!(
            last_used(db.reads()),
            None,
            "{engine}: recorded off the caller's path"
        );
        release.send(()).unwrap_or_else(|e| panic!("{e}"));
        wait(held).unwrap_or_else(|e| panic!("{e}"));
        let flush = || {
            wait(store.write_grouped((), |_| -> Result<()> { Ok(()) }))
                .unwrap_or_else(|e| panic!("{e}"));
        };
        // The writer takes jobs in order: once a later job is answered, the use is committed.
        flush();
        assert_eq!(last_used(db.reads()), Some(5_000), "{engine}");
        // Committed: the next use is queued again; an earlier time never overwrites a later.
        db.note_token_used("00000000000000aa", 4_000);
        db.note_token_used("00000000000000ff", 4_000);
        flush();
        assert_eq!(last_used(db.reads()), Some(5_000), "{engine}");
        db.note_token_used("00000000000000aa", 7_000);
        flush();
        assert_eq!(last_used(db.reads()), Some(7_000), "{engine}");
    }
}

/// Bytes of a test file: not a repetition of one chunk, so that misordered chunks show.
fn file_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect()
}

fn read_file(db: &dyn Reads, version: i64, p: &str) -> Option<Vec<u8>> {
    let mut f = db
        .mapping_file(version, p)
        .unwrap_or_else(|e| panic!("{e}"))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.len() as u64, f.len());
    Some(out)
}

#[test]
fn mapping_versions_stream_their_files_and_a_dropped_transaction_leaves_nothing() {
    let big = file_bytes(5 * 1024 * 1024 / 2);
    for (engine, store, _keep) in engines() {
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        let name = Name::parse("m").unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let cid = tx
            .ensure_container(&path("/x"))
            .unwrap_or_else(|e| panic!("{e}"));
        let dep = tx
            .insert_deployment("b1", "/x", 1_000, Some(b"digest"))
            .unwrap_or_else(|e| panic!("{e}"));
        let v1 = tx
            .new_mapping_version(cid, &name, dep)
            .unwrap_or_else(|e| panic!("{e}"));
        tx.write_mapping_file(v1, "big.bin", big.len() as u64, &[1; 32], &mut &big[..])
            .unwrap_or_else(|e| panic!("{e}"));
        tx.write_mapping_file(v1, "empty", 0, &[2; 32], &mut &[][..])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !tx.finish_mapping_version(cid, &name, v1, "{\"v\":1}")
                .unwrap_or_else(|e| panic!("{e}")),
            "{engine}"
        );
        tx.record_deployment_mapping(dep, "m", v1)
            .unwrap_or_else(|e| panic!("{e}"));
        tx.set_deployment_record(dep, "{\"id\":\"b1\"}")
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));

        let live = db
            .mapping(cid, "m")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{engine}: no live mapping"));
        assert_eq!((live.version_id, live.version), (v1, 1), "{engine}");
        assert!(
            read_file(db.reads(), v1, "big.bin") == Some(big.clone()),
            "{engine}"
        );
        assert_eq!(
            read_file(db.reads(), v1, "empty"),
            Some(Vec::new()),
            "{engine}"
        );
        assert!(read_file(db.reads(), v1, "nope").is_none(), "{engine}");
        assert_eq!(
            db.mapping_file_digests(v1)
                .unwrap_or_else(|e| panic!("{e}")),
            [
                ("big.bin".to_owned(), Some(vec![1; 32])),
                ("empty".to_owned(), Some(vec![2; 32]))
            ],
            "{engine}"
        );
        let replay = db
            .deployment_by_bundle("b1")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{engine}: no replay"));
        assert_eq!(replay.manifest_sha256.as_deref(), Some(&b"digest"[..]));
        assert_eq!(
            db.deployment_mappings(dep)
                .unwrap_or_else(|e| panic!("{e}")),
            [("m".to_owned(), v1)],
            "{engine}"
        );

        // A second version copies the files; it is dropped before commit: nothing of it stays.
        {
            let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
            let dep2 = tx
                .insert_deployment("b2", "/x", 2_000, None)
                .unwrap_or_else(|e| panic!("{e}"));
            let v2 = tx
                .new_mapping_version(cid, &name, dep2)
                .unwrap_or_else(|e| panic!("{e}"));
            tx.copy_mapping_files(v1, v2)
                .unwrap_or_else(|e| panic!("{e}"));
            tx.finish_mapping_version(cid, &name, v2, "{\"v\":2}")
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                read_file(tx.reads(), v2, "big.bin") == Some(big.clone()),
                "{engine}: a transaction reads its own writes"
            );
            assert_eq!(
                db_newest(&store, "/x"),
                Some(1_000),
                "{engine}: others see committed data only"
            );
        }
        assert!(
            db.deployment_by_bundle("b2")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none(),
            "{engine}"
        );
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let dep3 = tx
            .insert_deployment("b3", "/x", 3_000, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let v3 = tx
            .new_mapping_version(cid, &name, dep3)
            .unwrap_or_else(|e| panic!("{e}"));
        tx.copy_mapping_files(v1, v3)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            tx.finish_mapping_version(cid, &name, v3, "{\"v\":3}")
                .unwrap_or_else(|e| panic!("{e}")),
            "{engine}"
        );
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        let live = db
            .mapping(cid, "m")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{engine}: no live mapping"));
        // The dropped version's number is free again: versions count committed ones.
        assert_eq!((live.version_id, live.version), (v3, 2), "{engine}");
        assert!(
            read_file(db.reads(), v3, "big.bin") == Some(big.clone()),
            "{engine}"
        );
        assert_eq!(db_newest(&store, "/x"), Some(3_000), "{engine}");
        assert_eq!(
            db.mappings_in(cid).unwrap_or_else(|e| panic!("{e}")),
            [("m".to_owned(), "{\"v\":3}".to_owned())],
            "{engine}"
        );
        // A rollback makes the first version live again.
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        tx.set_live_mapping(cid, "m", v1)
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        let live = db
            .mapping(cid, "m")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{engine}: no live mapping"));
        assert_eq!(live.definition, "{\"v\":1}", "{engine}");
    }
}

fn db_newest(store: &Store, container: &str) -> Option<i64> {
    store
        .db()
        .and_then(|db| db.newest_created(container))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn pages_are_newest_first_and_only_what_is_visible() {
    for (engine, store, _keep) in engines() {
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let containers = ["/a", "/a/b", "/a_b", "/c", "/a"];
        for (i, c) in containers.iter().enumerate() {
            tx.insert_deployment(&format!("b{i}"), c, 1, None)
                .unwrap_or_else(|e| panic!("{e}"));
            tx.insert_audit(&AuditRow {
                action: "deploy".into(),
                container: Some((*c).into()),
                outcome: "applied".into(),
                status: 200,
                verified: Some(i % 2 == 0),
                ..AuditRow::default()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        }
        tx.insert_audit(&AuditRow {
            action: "oauth-token".into(),
            outcome: "refused".into(),
            status: 409,
            code: Some("x".into()),
            ..AuditRow::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));

        let under = Visible::Under(vec!["/a".into()]);
        let deployed = |v: &Visible, c: Option<&str>, before: Option<i64>, limit| -> Vec<String> {
            db.deployments_page(v, c, before, limit)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|(id, _)| {
                    let row = db
                        .deployment(DeploymentId(id))
                        .unwrap_or_else(|e| panic!("{e}"))
                        .unwrap_or_else(|| panic!("deployment {id}"));
                    row.container
                })
                .collect()
        };
        assert_eq!(
            deployed(&Visible::All, None, None, 10),
            ["/a", "/c", "/a_b", "/a/b", "/a"],
            "{engine}"
        );
        assert_eq!(
            deployed(&under, None, None, 10),
            ["/a", "/a/b", "/a"],
            "{engine}"
        );
        assert_eq!(deployed(&under, None, None, 2), ["/a", "/a/b"], "{engine}");
        assert_eq!(
            deployed(&under, Some("/a/b"), None, 10),
            ["/a/b"],
            "{engine}"
        );
        assert!(
            deployed(&Visible::Under(Vec::new()), None, None, 10).is_empty(),
            "{engine}"
        );
        let newest = db
            .deployments_page(&Visible::All, None, None, 1)
            .unwrap_or_else(|e| panic!("{e}"))[0]
            .0;
        assert_eq!(
            deployed(&under, None, Some(newest), 10),
            ["/a/b", "/a"],
            "{engine}"
        );

        let audit = db
            .audit_page(&Visible::All, None, None, 10)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(audit.len(), 6, "{engine}");
        assert_eq!(
            (audit[0].status, audit[0].code.as_deref(), audit[0].verified),
            (409, Some("x"), None),
            "{engine}"
        );
        assert_eq!(audit[1].verified, Some(true), "{engine}");
        let seen: Vec<Option<String>> = db
            .audit_page(&under, None, None, 10)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|a| a.container)
            .collect();
        assert_eq!(
            seen,
            [Some("/a".into()), Some("/a/b".into()), Some("/a".into())],
            "{engine}: a row that names no container only with every container visible"
        );
    }
}

#[test]
fn writers_wait_for_each_other_and_readers_for_none() {
    for (engine, store, _keep) in engines() {
        let mut first = store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = first.write().unwrap_or_else(|e| panic!("{e}"));
        principal_with_token(&tx, "one").unwrap_or_else(|e| panic!("{e}"));
        // A reader does not wait, and sees nothing uncommitted.
        assert!(principals(&store).is_empty(), "{engine}");
        let order = Arc::new(Mutex::new(Vec::new()));
        let second = {
            let (store, order) = (store.clone(), order.clone());
            std::thread::spawn(move || {
                let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
                let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
                // Serialized from its first read: the first writer's commit is visible.
                let seen = principals_in(&tx);
                order
                    .lock()
                    .unwrap_or_else(|e| panic!("{e}"))
                    .push("second");
                principal_with_token(&tx, "two").unwrap_or_else(|e| panic!("{e}"));
                tx.commit().unwrap_or_else(|e| panic!("{e}"));
                seen
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        order.lock().unwrap_or_else(|e| panic!("{e}")).push("first");
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        let seen = second.join().unwrap_or_else(|_| panic!("second writer"));
        assert_eq!(seen, ["one"], "{engine}");
        assert_eq!(
            *order.lock().unwrap_or_else(|e| panic!("{e}")),
            ["first", "second"],
            "{engine}"
        );
        assert_eq!(principals(&store), ["one", "two"], "{engine}");
    }
}

/// The principals with a token, as transaction `tx` sees them.
fn principals_in(tx: &super::Tx<'_>) -> Vec<String> {
    tx.tokens()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|t| t.principal)
        .collect()
}

#[test]
fn a_credential_lock_is_held_by_one_caller_at_a_time() {
    for (engine, store, _keep) in engines() {
        let id = super::CredentialId(42);
        let held = wait(store.lock_credential(id)).unwrap_or_else(|e| panic!("{e}"));
        let (got, waiting) = mpsc::channel();
        let other = {
            let store = store.clone();
            std::thread::spawn(move || {
                let lock = wait(store.lock_credential(id)).unwrap_or_else(|e| panic!("{e}"));
                let _ = got.send(());
                drop(lock);
            })
        };
        assert!(
            waiting.recv_timeout(Duration::from_millis(300)).is_err(),
            "{engine}: taken twice"
        );
        // Another credential's lock is free meanwhile.
        drop(
            wait(store.lock_credential(super::CredentialId(43))).unwrap_or_else(|e| panic!("{e}")),
        );
        drop(held);
        waiting
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{engine}: never released: {e}"));
        other.join().unwrap_or_else(|_| panic!("other"));
    }
}

#[test]
fn the_at_rest_key_id_and_encrypted_values_round_trip() {
    for (engine, store, _keep) in engines() {
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.at_rest_key_id().unwrap_or_else(|e| panic!("{e}")), None);
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        tx.set_at_rest_key_id("k1")
            .unwrap_or_else(|e| panic!("{e}"));
        tx.set_at_rest_key_id("k2")
            .unwrap_or_else(|e| panic!("{e}"));
        let cid = tx
            .ensure_container(&path("/p"))
            .unwrap_or_else(|e| panic!("{e}"));
        let (cred, _) = tx
            .upsert_credential(cid, "c", "basic", "{}")
            .unwrap_or_else(|e| panic!("{e}"));
        tx.set_secret(cred, "password", b"old", "00000000000000aa")
            .unwrap_or_else(|e| panic!("{e}"));
        let dep = tx
            .insert_deployment("b", "/p", 1, None)
            .unwrap_or_else(|e| panic!("{e}"));
        tx.record_credential_version(dep, cid, "c")
            .unwrap_or_else(|e| panic!("{e}"));
        let state = super::OAuthState {
            credential_id: cred,
            path: "/p/c".into(),
            verifier: b"v".to_vec(),
            principal: "ci".into(),
            expires_at_ms: 10,
        };
        tx.insert_oauth_state(b"s", &state, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        let values = tx.encrypted_values().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(values.len(), 3, "{engine}");
        for v in &values {
            let fp = match v.at {
                super::EncryptedAt::PkceVerifier { .. } => None,
                _ => Some("00000000000000bb"),
            };
            tx.reencrypt(v, b"new", fp)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            db.at_rest_key_id()
                .unwrap_or_else(|e| panic!("{e}"))
                .as_deref(),
            Some("k2"),
            "{engine}"
        );
        let versions = db
            .credential_versions(dep)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(versions[0].secrets[0].ciphertext, b"new", "{engine}");
        assert_eq!(
            db.secrets(cred).unwrap_or_else(|e| panic!("{e}"))[0].ciphertext,
            b"new"
        );
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let taken = tx
            .take_oauth_state(b"s")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{engine}: no state"));
        assert_eq!(taken.verifier, b"new", "{engine}");
        assert!(
            tx.take_oauth_state(b"s")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none(),
            "{engine}: a state is used once"
        );
        // Deleting a credential erases the secrets its versions recorded.
        tx.delete_credential(cred).unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        let versions = db
            .credential_versions(dep)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(versions[0].secrets.is_empty(), "{engine}");
    }
}
