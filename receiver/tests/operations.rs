//! Operating the receiver: `GET /readyz` and `GET /metrics` (in process), and over the real
//! binary the configuration (`config.json` and the flags over it), the JSON log with request
//! ids, and `SIGHUP` reloading the TLS certificate while an upload is in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowpack_shared::keys::SigningKey;
use flowpack_testkit::process::{run, serve_with};
use flowpack_testkit::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// A strict reader of the Prometheus text exposition format (version 0.0.4)

type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value {s:?}")),
    }
}

/// `{a="x",b="y"}` → the labels and what follows the closing brace.
fn parse_labels(s: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').unwrap();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let eq = rest.find('=').unwrap_or_else(|| panic!("no = in {s:?}"));
        let name = &rest[..eq];
        assert!(valid_label_name(name), "bad label name {name:?} in {s:?}");
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("unquoted value in {s:?}"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?} in {s:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => panic!("newline in a label value: {s:?}"),
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {s:?}"),
            }
        };
        assert!(
            labels.insert(name.to_owned(), value).is_none(),
            "label {name} twice in {s:?}"
        );
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else {
            assert!(rest.starts_with('}'), "expected , or }} in {s:?}");
        }
    }
}

/// Parses an exposition strictly: HELP and TYPE at most once per family and before its
/// samples, every sample's family typed, no series twice, histograms whole and cumulative.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut sampled: HashSet<String> = HashSet::new();
    let mut samples: Vec<Sample> = Vec::new();
    let family_of = |name: &str, types: &HashMap<String, String>| -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && types.get(base).map(String::as_str) == Some("histogram")
            {
                return base.to_owned();
            }
        }
        name.to_owned()
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(valid_metric_name(name), "{line}");
            assert!(!help.is_empty(), "empty help: {line}");
            assert!(helps.insert(name.to_owned()), "HELP twice: {line}");
            assert!(!sampled.contains(name), "HELP after samples: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(valid_metric_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            assert!(!sampled.contains(name), "TYPE after samples: {line}");
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{line}"));
            let name = &line[..name_end];
            assert!(valid_metric_name(name), "{line}");
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..])
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let rest = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line}"));
            let mut parts = rest.split(' ');
            let value = parse_value(parts.next().unwrap());
            if let Some(ts) = parts.next() {
                ts.parse::<i64>()
                    .unwrap_or_else(|_| panic!("bad timestamp: {line}"));
            }
            assert!(parts.next().is_none(), "{line}");
            let family = family_of(name, &types);
            let kind = types
                .get(&family)
                .unwrap_or_else(|| panic!("sample of an untyped family: {line}"));
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "a counter's name ends in _total: {line}"
                );
                assert!(value >= 0.0, "{line}");
            }
            sampled.insert(family);
            let s = Sample {
                name: name.to_owned(),
                labels,
                value,
            };
            assert!(
                !samples
                    .iter()
                    .any(|o| o.name == s.name && o.labels == s.labels),
                "series twice: {line}"
            );
            samples.push(s);
        }
    }
    // Histograms: per series, buckets cumulative up to +Inf, which equals _count; a _sum.
    for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
        // Per series (its labels but `le`): (le, count) of each bucket.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = parse_value(&s.labels["le"]);
            let mut key = s.labels.clone();
            key.remove("le");
            series.entry(key).or_default().push((le, s.value));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} {labels:?}: buckets not cumulative"
            );
            let last = buckets.last().unwrap();
            assert!(last.0.is_infinite(), "{family} {labels:?}: no +Inf bucket");
            let find = |suffix: &str| {
                samples
                    .iter()
                    .find(|s| s.name == format!("{family}{suffix}") && s.labels == labels)
                    .unwrap_or_else(|| panic!("{family}{suffix} {labels:?} missing"))
                    .value
            };
            assert_eq!(find("_count"), last.1, "{family} {labels:?}");
            assert!(find("_sum") >= 0.0);
        }
    }
    samples
}

/// The value of series `name{labels}` (0 when absent: a counter not yet counted).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map_or(0.0, |s| s.value)
}

async fn metrics(s: &Server) -> (String, Vec<Sample>) {
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();
    let samples = parse_exposition(&text);
    (text, samples)
}

#[test]
fn the_exposition_reader_refuses_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    assert_eq!(parse_exposition(good).len(), 1);
    for bad in [
        "a_total 1\n",                                                      // untyped
        "# TYPE a_total counter\na_total{x=\"1} 2\n",                       // unterminated
        "# TYPE a_total counter\na_total{x=\"1\"} 2\na_total{x=\"1\"} 3\n", // twice
        "# TYPE a_total counter\na_total 1",                                // no final newline
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n",
    ] {
        let refused = std::panic::catch_unwind(|| parse_exposition(bad)).is_err();
        assert!(refused, "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// /readyz and /metrics

#[tokio::test]
async fn readyz_answers_ready_after_a_round_trip_to_the_store() {
    let s = Server::start().await;
    let (st, v) = s.get("", "/readyz").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({"status": "ready", "version": env!("CARGO_PKG_VERSION"), "store": "sqlite"})
    );
    // Like /healthz: no query parameter.
    let (st, v) = s.get("", "/readyz?verbose=1").await;
    assert_eq!((st, v["code"].as_str()), (400, Some("bad-query")), "{v}");
    s.stop().await;
}

#[tokio::test]
async fn readyz_is_503_while_the_store_file_is_not_the_one_opened() {
    flowpack_testkit::store::embedded_only("the store's file");
    let s = Server::start().await;
    let (st, _) = s.get("", "/readyz").await;
    assert_eq!(st, 200);

    // The database moved away under the running receiver (a restore into the wrong place,
    // a cleanup): what it would write now, nobody would read.
    let db = s.data_dir().join("store.db");
    let aside = s.data_dir().join("store.db.aside");
    std::fs::rename(&db, &aside).unwrap();
    let (st, v) = s.get("", "/readyz").await;
    assert_eq!((st, v["code"].as_str()), (503, Some("not-ready")), "{v}");
    // Liveness is not readiness.
    let (st, _) = s.get("", "/healthz").await;
    assert_eq!(st, 200);
    // Back in place: ready again.
    std::fs::rename(&aside, &db).unwrap();
    let (st, v) = s.get("", "/readyz").await;
    assert_eq!(st, 200, "{v}");
    // Replaced by a copy: not the file the receiver has open.
    std::fs::copy(&db, &aside).unwrap();
    std::fs::rename(&aside, &db).unwrap();
    let (st, v) = s.get("", "/readyz").await;
    assert_eq!((st, v["code"].as_str()), (503, Some("not-ready")), "{v}");
    s.stop().await;
}

#[tokio::test]
async fn metrics_parse_and_count_requests_by_route_template_and_deployments_by_outcome() {
    let (s, _key, _) = deployed("canary-metrics-password").await;
    let (_, before) = metrics(&s).await;
    let series = |route: &str, method: &str, status: &str| {
        [("method", method), ("route", route), ("status", status)].map(|(k, v)| (k, v.to_owned()))
    };
    let get = |samples: &[Sample], route: &str, method: &str, status: &str| {
        let l = series(route, method, status);
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        value(samples, "flowpack_http_requests_total", &l)
    };
    let cred = "/v1/credentials/{path}";
    assert_eq!(
        value(
            &before,
            "flowpack_deployments_total",
            &[("outcome", "applied")]
        ),
        1.0
    );

    let (st, _) = s.get(&s.admin, "/v1/credentials/public/orders/erp").await;
    assert_eq!(st, 200);
    let (st, _) = s.get(&s.admin, "/v1/credentials/a/b/c").await;
    assert_eq!(st, 404);
    let (st, _) = s.get(&s.admin, "/no/such/thing/at-all").await;
    assert_eq!(st, 404);
    // A refused deploy (not a bundle).
    let (st, _) = s.deploy(&s.admin, b"PK\x03\x04 not a bundle").await;
    assert!((400..500).contains(&st), "{st}");

    let (text, after) = metrics(&s).await;
    assert_eq!(
        get(&after, cred, "GET", "200") - get(&before, cred, "GET", "200"),
        1.0
    );
    assert_eq!(
        get(&after, cred, "GET", "404") - get(&before, cred, "GET", "404"),
        1.0
    );
    assert_eq!(
        get(&after, "unmatched", "", "404") - get(&before, "unmatched", "", "404"),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "flowpack_deployments_total",
            &[("outcome", "refused")]
        ) - value(
            &before,
            "flowpack_deployments_total",
            &[("outcome", "refused")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "flowpack_deployments_total",
            &[("outcome", "applied")]
        ),
        1.0
    );
    // The duration histogram has the route too.
    assert!(
        value(
            &after,
            "flowpack_http_request_duration_seconds_count",
            &[("method", "GET"), ("route", cred)]
        ) >= 2.0
    );
    for outcome in ["ok", "needs_authorization", "failed"] {
        assert!(text.contains(&format!(
            "flowpack_oauth_refreshes_total{{outcome=\"{outcome}\"}}"
        )));
    }
    // Never a path asked for as a label, never a secret.
    for never in [
        "a/b/c",
        "/no/such",
        "public/orders/erp",
        "canary-metrics-password",
    ] {
        assert!(!text.contains(never), "{never} in\n{text}");
    }
    // The metrics asked before are counted too.
    assert!(get(&after, "/metrics", "GET", "200") >= 1.0);
    s.stop().await;
}

#[tokio::test]
async fn answers_carry_a_request_id_a_sane_incoming_one_kept() {
    let s = Server::start().await;
    let r = s
        .client
        .get(s.url("/healthz"))
        .header("x-request-id", "proxy-7f3a.1_b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "proxy-7f3a.1_b");
    let mut seen = HashSet::new();
    for bad in ["", "has space", "quote\"d", &"x".repeat(65)] {
        let r = s
            .client
            .get(s.url("/nothing"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(seen.insert(id));
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The real binary: configuration and logs

/// `serve` must fail at start: its one line of error.
fn serve_fails(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["serve", "--data-dir", dir.to_str().unwrap()];
    all.extend(args);
    let (code, out, err) = run(&all);
    assert_eq!(code, 1, "{out} {err}");
    err
}

#[test]
fn config_json_sets_listen_and_log_format_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    flowpack_testkit::init(&dir);

    // From the file: a port of its own choosing (0) and JSON lines.
    write_config(
        &dir,
        &json!({"listen": "127.0.0.1:0", "log_format": "json"}),
    );
    let srv = serve_with(&dir, &[]);
    assert!(srv.base.starts_with("http://127.0.0.1:"), "{}", srv.base);
    assert!(!srv.base.ends_with(":7443"), "{}", srv.base);
    let log = srv.stop();
    assert!(!log.is_empty());
    for line in log.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    // The flags over the file: the file's address is not used, and the log is text.
    write_config(
        &dir,
        &json!({"listen": "127.0.0.1:9", "log_format": "json"}),
    );
    let srv = serve_with(&dir, &["--listen", "127.0.0.1:0", "--log-format", "text"]);
    assert!(!srv.base.ends_with(":9"), "{}", srv.base);
    let log = srv.stop();
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{log}"
    );
    assert!(log.contains("INFO"), "{log}");
}

#[test]
fn config_json_errors_name_the_file_and_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    flowpack_testkit::init(&dir);
    let file = dir.join("config.json");
    let file = file.to_str().unwrap();

    write_config(&dir, &json!({"lissten": "127.0.0.1:0"}));
    let err = serve_fails(&dir, &["--listen", "127.0.0.1:0"]);
    assert!(err.contains(file) && err.contains("lissten"), "{err}");

    write_config(&dir, &json!({"limits": {"max_bundle_sise": 1}}));
    let err = serve_fails(&dir, &[]);
    assert!(
        err.contains(file) && err.contains("limits.max_bundle_sise"),
        "{err}"
    );

    write_config(&dir, &json!({"log_format": "xml"}));
    let err = serve_fails(&dir, &[]);
    assert!(err.contains(file) && err.contains("log_format"), "{err}");

    let initial = std::fs::read(dir.join("config.json")).unwrap();
    write_config(
        &dir,
        &json!({"store": "postgres://flowpack:pg-canary-password@db.internal/flowpack"}),
    );
    let err = serve_fails(&dir, &[]);
    // A PostgreSQL store is opened; an unreachable one is named without its URL.
    assert!(
        err.contains("opening the store: PostgreSQL database flowpack on db.internal"),
        "{err}"
    );
    assert!(!err.contains("pg-canary-password"), "{err}");
    std::fs::write(dir.join("config.json"), initial).unwrap();

    write_config(&dir, &json!({"tls_cert": "cert.pem"}));
    let err = serve_fails(&dir, &[]);
    assert!(err.contains(file) && err.contains("tls_key"), "{err}");

    // A certificate the file names, relative to the data directory, that is not there.
    write_config(
        &dir,
        &json!({"tls_cert": "tls/cert.pem", "tls_key": "tls/key.pem"}),
    );
    let err = serve_fails(&dir, &[]);
    let expected = dir.join("tls/cert.pem");
    assert!(err.contains(expected.to_str().unwrap()), "{err}");

    // Without TLS, only loopback.
    write_config(&dir, &json!({"listen": "0.0.0.0:0"}));
    let err = serve_fails(&dir, &[]);
    assert!(err.contains("without TLS"), "{err}");
}

#[tokio::test]
async fn json_log_lines_carry_the_request_and_never_a_secret_or_token() {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let flowpack_testkit::Init {
        recipient,
        admin_token: admin,
    } = flowpack_testkit::init(&dir);
    let key = SigningKey::generate().unwrap();
    let pub_file = tmp.path().join("signer.pub");
    std::fs::write(&pub_file, key.verifying_key().to_pem()).unwrap();
    let (code, _, err) = run(&[
        "trust",
        "add",
        pub_file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let srv = serve_with(&dir, &["--listen", "127.0.0.1:0", "--log-format", "json"]);

    let canary = "canary-json-log-secret-4f1e";
    let p = project(Some(canary), true, b"mfd");
    let recipient = flowpack_shared::seal::SealingRecipient::parse(&recipient).unwrap();
    let b = bundle(
        &key,
        &Opts::new("/public/orders").sealed(recipient),
        &p.mappings,
        &p.credentials,
    );
    let client = Client::new();
    let r = client
        .post(format!("{}/v1/deployments", srv.base))
        .bearer_auth(&admin)
        .header("content-type", "application/zip")
        .header("x-request-id", "deploy-1")
        .body(b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "deploy-1");
    let (st, v) = answer(r).await;
    assert_eq!(st, 201, "{v}");
    let r = client
        .get(format!("{}/v1/credentials/public/orders/erp", srv.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let made_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(r.status(), 200);
    // A query can carry a secret (an OAuth code): it is never logged.
    let r = client
        .get(format!(
            "{}/v1/oauth/callback?state=canary-state-9c2&code=canary-code-77a",
            srv.base
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    // A wrong token is not logged either.
    let r = client
        .get(format!("{}/v1/credentials/public/orders/erp", srv.base))
        .bearer_auth("fpt_0000000000000000_canary-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let log = srv.stop();

    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let requests: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request").collect();
    assert_eq!(requests.len(), 4, "{log}");
    for r in &requests {
        for field in [
            "timestamp",
            "level",
            "request_id",
            "client",
            "method",
            "route",
            "path",
            "status",
            "principal",
            "ms",
        ] {
            assert!(!r[field].is_null(), "{field} missing: {r}");
        }
        assert!(
            r["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{r}"
        );
    }
    let deploy = requests
        .iter()
        .find(|r| r["request_id"] == "deploy-1")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(deploy["route"], "/v1/deployments");
    assert_eq!(deploy["method"], "POST");
    assert_eq!(deploy["status"], 201);
    assert_eq!(deploy["principal"], "admin");
    let read = requests
        .iter()
        .find(|r| r["request_id"] == made_id.as_str())
        .unwrap_or_else(|| panic!("{made_id} not in {log}"));
    assert_eq!(read["route"], "/v1/credentials/{path}");
    assert_eq!(read["status"], 200);
    let refused = requests.iter().find(|r| r["status"] == 401).unwrap();
    assert_eq!(refused["principal"], "-");
    for never in [
        canary,
        admin.as_str(),
        &admin[21..],
        "canary-state-9c2",
        "canary-code-77a",
        "canary-wrong-token",
    ] {
        assert!(!log.contains(never), "{never} in the log:\n{log}");
    }
}

#[test]
fn text_log_lines_carry_the_request_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    flowpack_testkit::init(&dir);
    let srv = serve_with(&dir, &["--listen", "127.0.0.1:0"]);
    let addr = srv.base.strip_prefix("http://").unwrap();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: text-id-42\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let parsed = Response::parse(answer.as_bytes()).expect("an HTTP answer");
    flowpack_testkit::openapi::check(&reqwest::Method::GET, "/healthz", &parsed);
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-request-id: text-id-42"),
        "{answer}"
    );
    let log = srv.stop();
    let line = log
        .lines()
        .find(|l| l.contains("request_id=text-id-42"))
        .unwrap_or_else(|| panic!("{log}"));
    for field in [
        "method=GET",
        "path=/healthz",
        "status=200",
        "route=/healthz",
        "client=127.0.0.1:",
    ] {
        assert!(line.contains(field), "{field}: {line}");
    }
}

// ---------------------------------------------------------------------------------------------
// SIGHUP: a new certificate for new connections, the upload in flight completes

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA of its own and a certificate for 127.0.0.1 from it.
fn pki(name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A client trusting only `ca_pem`, opening a new connection with a full handshake for each
/// request (a resumed TLS session presents no certificate).
fn client_trusting(ca_pem: &str) -> Client {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.resumption = rustls::client::Resumption::disabled();
    Client::from_reqwest(
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    )
}

fn install(dir: &Path, p: &Pki) {
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(dir.join("tls/cert.pem"), &p.cert_pem).unwrap();
    std::fs::write(dir.join("tls/key.pem"), &p.key_pem).unwrap();
}

#[tokio::test]
async fn sighup_gives_new_connections_the_new_certificate_while_an_upload_completes() {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let admin = flowpack_testkit::init(&dir).admin_token;
    let key = SigningKey::generate().unwrap();
    let pub_file = tmp.path().join("signer.pub");
    std::fs::write(&pub_file, key.verifying_key().to_pem()).unwrap();
    let (code, _, err) = run(&[
        "trust",
        "add",
        pub_file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");

    let (old, new) = (pki("old CA"), pki("new CA"));
    install(&dir, &old);
    // Paths relative to the data directory.
    write_config(
        &dir,
        &json!({"tls_cert": "tls/cert.pem", "tls_key": "tls/key.pem", "listen": "127.0.0.1:0"}),
    );
    let srv = serve_with(&dir, &[]);
    let base = srv.base.replace("https://127.0.0.1", "https://localhost");
    assert!(base.starts_with("https://localhost:"), "{}", srv.base);
    let (old_client, new_client) = (client_trusting(&old.ca_pem), client_trusting(&new.ca_pem));
    assert!(
        new_client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );

    // An upload on a connection made before the reload, its body held back until after it.
    let p = project(None, false, b"mfd-sighup");
    let b = bundle(
        &key,
        &Opts::new("/public/orders"),
        &p.mappings,
        &p.credentials,
    );
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let (started, has_started) = tokio::sync::oneshot::channel::<()>();
    // A body whose second half waits for `go`.
    let held = HeldBody {
        parts: vec![b[..b.len() / 2].to_vec(), b[b.len() / 2..].to_vec()],
        go: Some(wait),
        started: Some(started),
    };
    let upload = tokio::spawn({
        let client = old_client.clone();
        let url = format!("{base}/v1/deployments");
        let admin = admin.clone();
        async move {
            let r = client
                .post(url)
                .bearer_auth(&admin)
                .header("content-type", "application/zip")
                .body(reqwest::Body::wrap_stream(held.into_stream()))
                .send()
                .await
                .unwrap();
            answer(r).await
        }
    });
    has_started.await.unwrap();

    install(&dir, &new);
    srv.signal("HUP");
    // New connections get the new certificate once the reload is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    while new_client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        old_client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );

    // The upload begun before the reload completes.
    go.send(()).unwrap();
    let (st, v) = upload.await.unwrap();
    assert_eq!(st, 201, "{v}");

    // Limits apply from the next request on.
    write_config(
        &dir,
        &json!({"tls_cert": "tls/cert.pem", "tls_key": "tls/key.pem", "listen": "127.0.0.1:0",
                "limits": {"max_bundle_size": 1000}}),
    );
    srv.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = new_client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        let samples = parse_exposition(&r.text().await.unwrap());
        if value(&samples, "flowpack_reloads_total", &[("outcome", "ok")]) == 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second reload was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.len() > 1000);
    let r = new_client
        .post(format!("{base}/v1/deployments"))
        .bearer_auth(&admin)
        .header("content-type", "application/zip")
        .body(b.clone())
        .send()
        .await
        .unwrap();
    let (st, v) = answer(r).await;
    assert_eq!((st, v["code"].as_str()), (413, Some("too-large")), "{v}");

    // A reload with a broken certificate keeps the one in force, and says which file.
    std::fs::write(
        dir.join("tls/cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    srv.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = new_client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        let samples = parse_exposition(&r.text().await.unwrap());
        if value(&samples, "flowpack_reloads_total", &[("outcome", "failed")]) == 1.0 {
            assert_eq!(
                value(&samples, "flowpack_reloads_total", &[("outcome", "ok")]),
                2.0
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failed reload was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = new_client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // And a config.json that does not parse keeps the configuration in force.
    std::fs::write(dir.join("config.json"), "{\"listen\": ").unwrap();
    srv.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = new_client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        let samples = parse_exposition(&r.text().await.unwrap());
        if value(&samples, "flowpack_reloads_total", &[("outcome", "failed")]) == 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second failed reload was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = srv.stop();
    let cert_file = dir.join("tls/cert.pem");
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("TLS certificate not applied")
            && l.contains(cert_file.to_str().unwrap())),
        "{log}"
    );
    let config_file = dir.join("config.json");
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("configuration not applied")
            && l.contains(config_file.to_str().unwrap())),
        "{log}"
    );
}

/// A request body in parts: the first sent at once, the others only once `go` fires.
struct HeldBody {
    parts: Vec<Vec<u8>>,
    go: Option<tokio::sync::oneshot::Receiver<()>>,
    started: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HeldBody {
    fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static
    {
        futures_util::stream::unfold((self, 0usize), |(mut held, i)| async move {
            if i >= held.parts.len() {
                return None;
            }
            if i == 1 {
                if let Some(s) = held.started.take() {
                    let _ = s.send(());
                }
                if let Some(go) = held.go.take() {
                    let _ = go.await;
                }
            }
            let part = bytes::Bytes::from(std::mem::take(&mut held.parts[i]));
            Some((Ok(part), (held, i + 1)))
        })
    }
}

#[tokio::test]
async fn sighup_switches_the_log_format_and_warns_that_listen_needs_a_restart() {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    flowpack_testkit::init(&dir);
    write_config(&dir, &json!({"listen": "127.0.0.1:0"}));
    let srv = serve_with(&dir, &[]);
    let client = Client::new();
    let reloads = || async {
        let r = client
            .get(format!("{}/metrics", srv.base))
            .send()
            .await
            .unwrap();
        let samples = parse_exposition(&r.text().await.unwrap());
        value(&samples, "flowpack_reloads_total", &[("outcome", "ok")])
    };
    assert_eq!(reloads().await, 0.0);

    write_config(
        &dir,
        &json!({"listen": "127.0.0.1:9", "log_format": "json"}),
    );
    srv.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads().await != 1.0 {
        assert!(Instant::now() < deadline, "the reload was not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still on the address it started with.
    let r = client
        .get(format!("{}/healthz", srv.base))
        .header("x-request-id", "after-reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = srv.stop();

    let warned = log
        .lines()
        .position(|l| l.contains("WARN") && l.contains("`listen` changed"))
        .unwrap_or_else(|| panic!("no warning about listen:\n{log}"));
    let first_json = log
        .lines()
        .position(|l| serde_json::from_str::<Value>(l).is_ok())
        .unwrap_or_else(|| panic!("no JSON line after the reload:\n{log}"));
    assert!(warned < first_json, "{log}");
    // Text before the reload, JSON from it on.
    for (i, line) in log.lines().enumerate() {
        assert_eq!(
            serde_json::from_str::<Value>(line).is_ok(),
            i >= first_json,
            "line {i}: {line}\n{log}"
        );
    }
    let request = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["request_id"] == "after-reload")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(request["route"], "/healthz");
}
