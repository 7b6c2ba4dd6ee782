//! The receiver's OpenAPI document (`receiver/src/api/openapi.json`) as a validator of answers.
//!
//! Every answer the [`crate::Client`] receives goes through [`Validator::check`]: the operation
//! is found by method and path (the document's path templates, whose `{…}` parameters stand
//! for any text, slashes included), the response by status (or `default`), and the body is
//! validated against its schema (JSON Schema 2020-12, `$ref`s resolved inside the document).
//! An answer to a method or path the document lacks must be one of [`UNDOCUMENTED`].

use std::collections::BTreeMap;
use std::sync::Mutex;

pub use reqwest::Method;
use serde_json::Value;

use crate::client::Response;

/// The document as the receiver serves it.
pub const DOCUMENT: &str = include_str!("../../receiver/src/api/openapi.json");

/// The base URL the document is known by to the validator (never fetched).
const BASE: &str = "https://receiver.flowpack.invalid/openapi.json";

/// The HTTP methods an OpenAPI path item may have, as its keys.
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The only answers allowed to a request the document has no operation for: (whether the
/// path is documented, status, the response of `components/responses` it must be). A method
/// a documented path lacks is `405`, or `401` where the path needs a token and none valid
/// was given (the token is checked before the method); a path no template matches is `404`.
pub const UNDOCUMENTED: &[(bool, u16, &str)] = &[
    (true, 405, "MethodNotAllowed"),
    (true, 401, "Unauthorized"),
    (false, 404, "NotFoundEndpoint"),
];

/// The document, parsed.
pub fn document() -> Value {
    #[allow(clippy::expect_used)] // A constant of the build: every test would show it at once.
    serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
}

/// `s` escaped as one JSON Pointer token.
pub fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The value at a local reference (`#/a/b`), if there is one.
pub fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// Whether `path` is an instance of the template `template`, whose `{…}` parameters stand for
/// any text, slashes included, or none (`/v1/containers/` is the root container of
/// `/v1/containers/{path}`).
pub fn instance_of(template: &str, path: &str) -> bool {
    match template.find('{') {
        None => template == path,
        Some(i) => {
            let (lit, rest) = template.split_at(i);
            let after = rest.find('}').map_or("", |j| &rest[j + 1..]);
            path.strip_prefix(lit).is_some_and(|tail| {
                (0..=tail.len())
                    .filter(|j| tail.is_char_boundary(*j))
                    .any(|j| instance_of(after, &tail[j..]))
            })
        }
    }
}

/// How specific a template is: its literal characters, then the fewer parameters the better.
fn specificity(template: &str) -> (usize, std::cmp::Reverse<usize>) {
    let params = template.matches('{').count();
    let mut literal = 0;
    let mut inside = false;
    for c in template.chars() {
        match c {
            '{' => inside = true,
            '}' => inside = false,
            _ if !inside => literal += 1,
            _ => {}
        }
    }
    (literal, std::cmp::Reverse(params))
}

/// What a request names in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The operation of this path template.
    Operation(String),
    /// A documented path (this template) without this method.
    OtherMethod(String),
    /// No documented path.
    Nothing,
}

impl Target {
    /// The template, or the request path when the document has none.
    pub fn label<'a>(&'a self, path: &'a str) -> &'a str {
        match self {
            Target::Operation(t) | Target::OtherMethod(t) => t,
            Target::Nothing => path,
        }
    }
}

type Compiled = (
    boon::Compiler,
    boon::Schemas,
    BTreeMap<String, boon::SchemaIndex>,
);

/// Compiles schemas at locations of the document and validates answers against them.
pub struct Validator {
    doc: Value,
    compiled: Mutex<Compiled>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Validator")
    }
}

impl Validator {
    /// A validator of `doc` (tests of the validator itself give their own document).
    #[allow(clippy::expect_used)]
    pub fn new(doc: &Value) -> Validator {
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V2020_12);
        compiler.enable_format_assertions();
        compiler
            .add_resource(BASE, doc.clone())
            .expect("the document is a resource");
        Validator {
            doc: doc.clone(),
            compiled: Mutex::new((compiler, boon::Schemas::new(), BTreeMap::new())),
        }
    }

    /// Calls `f` with the validator of the receiver's document (one per thread: boon's
    /// compiler cannot be shared between threads).
    pub fn with<R>(f: impl FnOnce(&Validator) -> R) -> R {
        thread_local! {
            static V: Validator = Validator::new(&document());
        }
        V.with(f)
    }

    /// The document.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Compiled> {
        // A panic while holding the lock is a failed test; the schemas are still usable.
        self.compiled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compiled schema at `pointer` (`#/…`); panics when it does not compile.
    pub fn compile(&self, pointer: &str) -> boon::SchemaIndex {
        let mut guard = self.lock();
        let (compiler, schemas, done) = &mut *guard;
        if let Some(i) = done.get(pointer) {
            return *i;
        }
        let i = compiler
            .compile(&format!("{BASE}{pointer}"), schemas)
            .unwrap_or_else(|e| panic!("schema at {pointer} does not compile: {e:#}"));
        done.insert(pointer.to_owned(), i);
        i
    }

    /// Validates `v` against the schema at `pointer`.
    pub fn validate(&self, pointer: &str, v: &Value) -> Result<(), String> {
        let i = self.compile(pointer);
        let guard = self.lock();
        guard.1.validate(v, i).map_err(|e| format!("{e:#}"))
    }

    /// What `method path` (no query) names: the most specific documented template that
    /// `path` is an instance of and that has `method`, else whether any template matches.
    pub fn target(&self, method: &Method, path: &str) -> Target {
        let m = method.as_str().to_lowercase();
        let Some(paths) = self.doc["paths"].as_object() else {
            return Target::Nothing;
        };
        let matching: Vec<&String> = paths.keys().filter(|t| instance_of(t, path)).collect();
        let best = |ts: &mut dyn Iterator<Item = &&String>| {
            ts.max_by_key(|t| specificity(t)).map(|t| (*t).clone())
        };
        if let Some(t) = best(
            &mut matching
                .iter()
                .filter(|t| paths[t.as_str()].get(&m).is_some()),
        ) {
            return Target::Operation(t);
        }
        match best(&mut matching.iter()) {
            Some(t) => Target::OtherMethod(t),
            None => Target::Nothing,
        }
    }

    /// Checks an answer to `method path` (`path` without its query) against the document:
    /// its status is documented for the operation (or is one of [`UNDOCUMENTED`]), its media
    /// type is the documented one (`application/problem+json` for every error), its required
    /// headers are there, and its body validates against the documented schema. Returns
    /// the template the request named, or the error naming method, path, status and why.
    pub fn check(&self, method: &Method, path: &str, a: &Response) -> Result<Target, String> {
        let target = self.target(method, path);
        self.check_as(method, &target, a).map(|()| target)
    }

    /// [`Validator::check`] for a request already known to name `target`.
    pub fn check_as(&self, method: &Method, target: &Target, a: &Response) -> Result<(), String> {
        let status = a.status().as_u16();
        let label = match target {
            Target::Operation(t) | Target::OtherMethod(t) => t.clone(),
            Target::Nothing => "(no documented path)".to_owned(),
        };
        let at = format!("{method} {label} → {status}: {}", a.excerpt());
        let lower = method.as_str().to_lowercase();
        let (mut response, mut pointer) = match target {
            Target::Operation(t) => {
                let op = &self.doc["paths"][t][&lower];
                let code = status.to_string();
                let (key, r) = match op["responses"].get(&code) {
                    Some(r) => (code, r),
                    None => match op["responses"].get("default") {
                        Some(r) => ("default".to_owned(), r),
                        None => return Err(format!("{at}: status not documented")),
                    },
                };
                (r, format!("#/paths/{}/{lower}/responses/{key}", token(t)))
            }
            Target::OtherMethod(_) | Target::Nothing => {
                let documented = matches!(target, Target::OtherMethod(_));
                let Some((_, _, name)) = UNDOCUMENTED
                    .iter()
                    .find(|(d, s, _)| *d == documented && *s == status)
                else {
                    return Err(format!("{at}: not an operation of the document"));
                };
                let p = format!("#/components/responses/{name}");
                match resolve(&self.doc, &p) {
                    Some(r) => (r, p),
                    None => return Err(format!("{at}: {p} is not in the document")),
                }
            }
        };
        if let Some(Value::String(r)) = response.get("$ref") {
            pointer = r.clone();
            response = resolve(&self.doc, r).ok_or_else(|| format!("{at}: {r} unresolved"))?;
        }
        let content_type = a.media_type();
        if status >= 400 && content_type != "application/problem+json" {
            return Err(format!("{at}: an error answered as {content_type:?}"));
        }
        for (name, h) in response
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if h["required"] == true && !a.headers().contains_key(name.to_lowercase().as_str()) {
                return Err(format!("{at}: no {name} header"));
            }
        }
        if *method == Method::HEAD {
            return match a.bytes_ref().is_empty() {
                true => Ok(()),
                false => Err(format!("{at}: a body answering HEAD")),
            };
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return match a.bytes_ref().is_empty() {
                true => Ok(()),
                false => Err(format!("{at}: a body where none is documented")),
            };
        };
        let Some(media) = content.get(&content_type) else {
            return Err(format!(
                "{at}: media type {content_type:?} not documented ({:?})",
                content.keys().collect::<Vec<_>>()
            ));
        };
        if content_type.ends_with("json") {
            let v: Value = serde_json::from_slice(a.bytes_ref())
                .map_err(|e| format!("{at}: the body is not JSON: {e}"))?;
            if media.get("schema").is_none() {
                return Err(format!("{at}: no schema"));
            }
            let schema = format!("{pointer}/content/{}/schema", token(&content_type));
            self.validate(&schema, &v)
                .map_err(|e| format!("{at}: the body does not conform to {schema}:\n{e}"))?;
            if status >= 400 && v["status"] != status {
                return Err(format!("{at}: the problem's status is {}", v["status"]));
            }
        }
        Ok(())
    }
}

/// Checks an answer with the receiver's document; panics naming method, path, status and the
/// error. For answers read off a raw socket; the [`crate::Client`] calls it on every answer.
/// Each answer checked is recorded when [`COVERAGE_ENV`] is set ([`record`]).
pub fn check(method: &Method, path: &str, a: &Response) -> Target {
    let path = path.split('?').next().unwrap_or(path);
    let target = Validator::with(|v| v.check(method, path, a))
        .unwrap_or_else(|e| panic!("{method} {path}: the answer does not match openapi.json: {e}"));
    record(method, &target, a.status().as_u16());
    target
}

/// The environment variable naming a directory where every checked answer is recorded, one
/// file per test process, to see over a whole run which operations and statuses the suite
/// validated (`cargo run -p flowpack-testkit --bin openapi-coverage -- DIR` sums them up).
pub const COVERAGE_ENV: &str = "FLOWPACK_OPENAPI_COVERAGE";

/// Appends `METHOD<TAB>template<TAB>status` to `$FLOWPACK_OPENAPI_COVERAGE/<pid>.tsv` when the
/// variable is set (answers to no documented path are recorded as `-`).
pub fn record(method: &Method, target: &Target, status: u16) {
    use std::io::Write;
    let Some(dir) = std::env::var_os(COVERAGE_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let template = match target {
        Target::Operation(t) | Target::OtherMethod(t) => t.as_str(),
        Target::Nothing => "-",
    };
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.tsv", std::process::id())))?;
        // One write per line: appends of threads of the process do not interleave.
        f.write_all(format!("{method}\t{template}\t{status}\n").as_bytes())
    });
    if let Err(e) = written {
        panic!("recording coverage in {}: {e}", dir.display());
    }
}

/// Every (method, path template) operation of `doc`.
pub fn operations(doc: &Value) -> std::collections::BTreeSet<(String, String)> {
    let mut out = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}
