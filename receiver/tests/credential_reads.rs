//! Credential reads under concurrency: they queue for a few blocking threads (`http.rs`,
//! `Reads`), so every one must still get its own answer, none may be left waiting, and the
//! server must shut down afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowpack_shared::bundle::BundleKind;
use flowpack_testkit::*;
use serde_json::Value;

const SECRET: &str = "canary-concurrent-reads-5d1e";

/// What one read asks and what it must get.
#[derive(Clone, Copy, Debug)]
enum Case {
    Allowed,
    Forbidden,
    BadToken,
    Missing,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_credential_reads_each_get_their_own_answer() {
    let (s, _, _) = deployed(SECRET).await;
    let outsider = s.token("outsider", &[("/other", "read,write,use")]);
    let (st, reference) = s.get(&s.admin, "/v1/credentials/public/orders/erp").await;
    assert_eq!(st, 200, "{reference}");
    assert_eq!(reference["password"]["set"], true);
    assert!(!reference.to_string().contains(SECRET));

    const CLIENTS: usize = 64;
    const READS: usize = 40;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        // One keep-alive connection per client, as a load generator has.
        let http = Client::from_reqwest(
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap(),
        );
        let base = s.base.clone();
        let (admin, outsider) = (s.admin.clone(), outsider.clone());
        let reference = reference.clone();
        clients.spawn(async move {
            for i in 0..READS {
                let case = [
                    Case::Allowed,
                    Case::Forbidden,
                    Case::BadToken,
                    Case::Missing,
                ][(c + i) % 4];
                let (token, path) = match case {
                    Case::Allowed => (admin.as_str(), "/v1/credentials/public/orders/erp"),
                    Case::Forbidden => (outsider.as_str(), "/v1/credentials/public/orders/erp"),
                    Case::BadToken => (
                        "fpt_0123456789abcdef_not-a-token",
                        "/v1/credentials/public/orders/erp",
                    ),
                    Case::Missing => (admin.as_str(), "/v1/credentials/public/orders/nope"),
                };
                let r = http
                    .get(format!("{base}{path}"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                let (st, v) = answer(r).await;
                assert!(!v.to_string().contains(SECRET), "{case:?}: {v}");
                match case {
                    Case::Allowed => {
                        assert_eq!(st, 200, "{v}");
                        assert_eq!(v, reference);
                    }
                    Case::Forbidden => {
                        assert_eq!((st, &v["code"]), (403, &Value::from("forbidden")))
                    }
                    Case::BadToken => {
                        assert_eq!((st, &v["code"]), (401, &Value::from("unauthorized")));
                    }
                    Case::Missing => assert_eq!((st, &v["code"]), (404, &Value::from("not-found"))),
                }
            }
        });
    }
    // A read left in the queue would leave its client waiting for ever.
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(done) = clients.join_next().await {
            done.unwrap();
        }
    })
    .await
    .expect("every read is answered");

    // The queue is drained: a read after the burst is answered, and shutdown (which waits for
    // every read's tracker token) completes.
    let (st, v) = s.get(&s.admin, "/v1/credentials/public/orders/erp").await;
    assert_eq!((st, &v), (200, &reference));
    tokio::time::timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("the server stops once its reads are done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_reads_answer_while_listings_and_deploys_run() {
    let (s, k, _) = deployed(SECRET).await;
    // Other kinds of work keep their own blocking threads beside the queued reads.
    let mut others = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (base, admin) = (s.base.clone(), s.admin.clone());
        // A container each: deploys to one container in another order than created are stale.
        let container = ["/public/x0", "/public/x1", "/public/x2", "/public/x3"][i / 2];
        let bundle = (i % 2 == 0).then(|| {
            let c = credential(serde_json::json!({
                "name": format!("c{i}"), "type": "password", "username": "u",
                "password": SECRET, "include_in_deployment": true,
            }));
            let mut opts = Opts::new(container).sealed(s.recipient());
            opts.kind = BundleKind::Credentials;
            bundle(&k, &opts, &[], &[c])
        });
        others.spawn(async move {
            let http = Client::new();
            let r = match bundle {
                Some(b) => http
                    .post(format!("{base}/v1/deployments"))
                    .bearer_auth(&admin)
                    .header("content-type", "application/zip")
                    .body(b),
                None => http.get(format!("{base}/v1/audit")).bearer_auth(&admin),
            };
            let (st, v) = answer(r.send().await.unwrap()).await;
            assert!(st == 200 || st == 201, "{st} {v}");
        });
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        for _ in 0..50 {
            let (st, v) = s.get(&s.admin, "/v1/credentials/public/orders/erp").await;
            assert_eq!(st, 200, "{v}");
        }
        while let Some(done) = others.join_next().await {
            done.unwrap();
        }
        s.stop().await;
    })
    .await
    .expect("reads, deploys and listings are answered and the server stops");
}
