//! Command-line behaviour of `flowpack`: each test runs the built binary in its own temporary
//! directory and checks exit status, output and files. A fake one-shot HTTP server stands in
//! for the receiver where a test needs an answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flowpack_shared::bundle::read::{OpenBundle, TrustedSigner};
use flowpack_shared::keys::VerifyingKey;
use flowpack_shared::names::ContainerPath;
use flowpack_shared::seal::SealingIdentity;
use flowpack_shared::zipfmt::Limits;

const RECIPIENT: &str = "age1hqsftcjpasp9rhgg2xm7j56j7wdah67msrjchyal649aus0z6dgq5qam3v";
/// The sample's secret values; the first belongs to the one credential with the flag set.
const ERP_PASSWORD: &str = "canary-erp-password-7f3a";
const FLAG_OFF_SECRETS: [&str; 3] = [
    "canary-crm-client-secret-2b9c",
    "canary-shipping-api-key-5d1e",
    "canary-warehouse-db-password-8c4e",
];
const ENV_SECRETS: [&str; 2] = [
    "canary-reporting-staging-password-3e0d",
    "canary-reporting-production-password-9a1b",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(p: &str) -> PathBuf {
    repo().join("fixtures").join(p)
}

/// What a run printed and how it ended.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Out {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    fn fails(self, code: i32) -> Out {
        assert_eq!(self.code, code, "expected exit {code}: {self:#?}");
        self
    }

    /// Exit 1 with exactly one line `flowpack: …` on stderr.
    fn fails_with_one_line(self) -> Out {
        let out = self.fails(1);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {out:#?}");
        assert!(lines[0].starts_with("flowpack: "), "{out:#?}");
        out
    }

    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A temporary directory per test, with the fixture signing key copied in (mode 0600).
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signer.key");
        fs::copy(fixture("keys/signer.key"), &key).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        Env { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run<I, S>(&self, args: I) -> Out
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with(args, &[])
    }

    fn run_with<I, S>(&self, args: I, env: &[(&str, &str)]) -> Out
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowpack"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("FLOWPACK_TOKEN")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `flowpack package DIR -k signer.key -c /public/orders -o OUT` plus `extra`.
    fn package(&self, dir: &Path, out: &str, extra: &[&str]) -> Out {
        let mut args: Vec<&OsStr> = vec![
            "package".as_ref(),
            dir.as_os_str(),
            "-k".as_ref(),
            "signer.key".as_ref(),
            "-c".as_ref(),
            "/public/orders".as_ref(),
            "-o".as_ref(),
            out.as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        self.run(args)
    }

    /// Copies fixtures/<name> into the temp dir, for tests that change a project.
    fn copy_project(&self, name: &str) -> PathBuf {
        let to = self.path(name);
        copy_dir(&fixture(name), &to);
        to
    }

    /// Entries left in the temp dir besides the key (to find leftovers of a failed write).
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "signer.key")
            .collect();
        v.sort();
        v
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

fn inspect_json(env: &Env, bundle: &str) -> serde_json::Value {
    let out = env.run(["inspect", bundle, "--json"]).ok();
    serde_json::from_str(&out.stdout).unwrap()
}

fn unzip(bundle: &Path, entry: Option<&str>) -> Vec<u8> {
    let mut cmd = Command::new("unzip");
    cmd.arg("-p").arg(bundle);
    if let Some(e) = entry {
        cmd.arg(e);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "unzip -p {entry:?}");
    out.stdout
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// keygen

#[test]
fn keygen_writes_private_key_0600_and_public_key_and_prints_key_id() {
    let env = Env::new();
    let out = env.run(["keygen", "-o", "my.key"]).ok();
    let mode = fs::metadata(env.path("my.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let pem = fs::read_to_string(env.path("my.key.pub")).unwrap();
    let id = VerifyingKey::from_pem(&pem).unwrap().key_id().to_string();
    assert!(out.stdout.contains(&format!("key id: {id}")), "{out:#?}");
    assert!(
        fs::read_to_string(env.path("my.key"))
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    // The new key signs bundles that verify with its public half.
    let out = env
        .run([
            "package-credentials",
            fixture("sample/shipping-api.credential.json")
                .to_str()
                .unwrap(),
            "-k",
            "my.key",
            "-c",
            "/c",
            "-o",
            "c.fpk",
        ])
        .ok();
    assert!(out.stdout.contains(&id), "{out:#?}");
    env.run(["verify", "c.fpk", "--trust", "my.key.pub"]).ok();
}

#[test]
fn keygen_refuses_to_overwrite_an_existing_key_unless_forced() {
    let env = Env::new();
    env.run(["keygen", "-o", "my.key"]).ok();
    let before = fs::read(env.path("my.key")).unwrap();
    let out = env.run(["keygen", "-o", "my.key"]).fails_with_one_line();
    assert!(out.stderr.contains("--force"), "{out:#?}");
    assert_eq!(fs::read(env.path("my.key")).unwrap(), before);
    env.run(["keygen", "-o", "my.key", "--force"]).ok();
    assert_ne!(fs::read(env.path("my.key")).unwrap(), before);
    let mode = fs::metadata(env.path("my.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn group_readable_signing_key_warns_but_is_used() {
    let env = Env::new();
    fs::set_permissions(env.path("signer.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let out = env
        .package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    assert!(
        out.stderr.contains("warning") && out.stderr.contains("0644"),
        "{out:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// package

#[test]
fn package_sample_sealed_verifies_and_opens_with_the_receiver_identity() {
    let env = Env::new();
    let out = env
        .package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    assert!(
        out.stdout.contains("erp (password), secrets sealed"),
        "{out:#?}"
    );
    let out = env
        .run([
            "verify",
            "o.fpk",
            "--trust",
            fixture("keys/signer.pub").to_str().unwrap(),
        ])
        .ok();
    assert!(out.stdout.starts_with("valid: bundle "), "{out:#?}");
    assert_eq!(env.files(), ["o.fpk"], "no temporary file left behind");

    // The receiver's identity opens the sealed password; flag-off credentials carry none.
    let key =
        VerifyingKey::from_pem(&fs::read_to_string(fixture("keys/signer.pub")).unwrap()).unwrap();
    let trust = |_: &_| {
        Some(TrustedSigner {
            key: key.clone(),
            containers: vec![ContainerPath::root()],
        })
    };
    let identity =
        SealingIdentity::parse(&fs::read_to_string(fixture("keys/receiver.agekey")).unwrap())
            .unwrap();
    let file = fs::File::open(env.path("o.fpk")).unwrap();
    let mut b = OpenBundle::open(file, &Limits::default(), &trust).unwrap();
    let payload = b
        .read_payload(Some(&identity), &mut |_, _, _, r| {
            std::io::copy(r, &mut std::io::sink()).map(|_| ())
        })
        .unwrap();
    let erp = payload
        .credentials
        .iter()
        .find(|c| c.name.as_str() == "erp")
        .unwrap();
    assert_eq!(erp.plain_secret("password").unwrap().expose(), ERP_PASSWORD);
    for c in payload
        .credentials
        .iter()
        .filter(|c| c.name.as_str() != "erp")
    {
        assert!(c.secrets.is_empty(), "{} carries secrets", c.name);
    }
    assert_eq!(payload.mappings.len(), 1);
}

#[test]
fn package_refuses_flag_set_secrets_without_seal_to_and_leaves_nothing() {
    let env = Env::new();
    let out = env
        .package(&fixture("sample"), "o.fpk", &[])
        .fails_with_one_line();
    assert!(
        out.stderr.contains("erp") && out.stderr.contains("include_in_deployment"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("--seal-to"), "{out:#?}");
    assert!(env.files().is_empty(), "left behind: {:?}", env.files());
}

#[test]
fn plaintext_secrets_warns_and_marks_the_credential_plaintext() {
    let env = Env::new();
    let out = env
        .package(&fixture("sample"), "o.fpk", &["--plaintext-secrets"])
        .ok();
    assert!(
        out.stderr.contains("warning") && out.stderr.contains("IN CLEAR"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("erp"), "{out:#?}");
    let doc = inspect_json(&env, "o.fpk");
    let erp = doc["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "erp")
        .unwrap();
    assert_eq!(erp["secrets"], "plaintext");
    // A bundle with secrets in clear is readable by its owner alone.
    let mode = fs::metadata(env.path("o.fpk"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn package_credentials_makes_a_standalone_credential_bundle() {
    let env = Env::new();
    env.run([
        "package-credentials",
        fixture("sample/erp.credential.json").to_str().unwrap(),
        fixture("sample/crm-oauth.credential.json")
            .to_str()
            .unwrap(),
        "-k",
        "signer.key",
        "-c",
        "/public/shared",
        "--seal-to",
        RECIPIENT,
        "-o",
        "creds.fpk",
    ])
    .ok();
    let doc = inspect_json(&env, "creds.fpk");
    assert_eq!(doc["kind"], "credentials");
    assert_eq!(doc["target_container"], "/public/shared");
    assert_eq!(doc["mappings"].as_array().unwrap().len(), 0);
    assert_eq!(doc["credentials"].as_array().unwrap().len(), 2);
}

#[test]
fn missing_credential_reference_names_mapping_and_credential() {
    let env = Env::new();
    let project = env.copy_project("sample");
    fs::remove_file(project.join("shipping-api.credential.json")).unwrap();
    let out = env
        .package(&project, "o.fpk", &["--seal-to", RECIPIENT])
        .fails_with_one_line();
    assert!(
        out.stderr.contains("orders-to-erp") && out.stderr.contains("shipping-api"),
        "{out:#?}"
    );
    assert!(!env.path("o.fpk").exists());
}

#[test]
fn credential_with_environments_needs_env_and_the_error_lists_them() {
    let env = Env::new();
    let out = env
        .package(&fixture("envs"), "o.fpk", &["--seal-to", RECIPIENT])
        .fails_with_one_line();
    assert!(
        out.stderr.contains("production, staging") && out.stderr.contains("--env"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("reporting-db.credential.json"),
        "{out:#?}"
    );
}

#[test]
fn unknown_environment_is_refused_naming_the_ones_there_are() {
    let env = Env::new();
    let out = env
        .package(
            &fixture("envs"),
            "o.fpk",
            &["--seal-to", RECIPIENT, "--env", "qa"],
        )
        .fails_with_one_line();
    assert!(
        out.stderr.contains("\"qa\"") && out.stderr.contains("production, staging"),
        "{out:#?}"
    );
}

#[test]
fn chosen_environment_is_applied_and_recorded() {
    let env = Env::new();
    env.package(
        &fixture("envs"),
        "o.fpk",
        &["--seal-to", RECIPIENT, "--env", "production"],
    )
    .ok();
    let doc = inspect_json(&env, "o.fpk");
    assert_eq!(doc["environment"], "production");
    assert_eq!(doc["credentials"][0]["secrets"], "sealed");
    let fields = doc["credentials"][0]["fields"].to_string();
    assert!(!fields.contains("environments"), "{fields}");
}

#[test]
fn unknown_field_error_names_file_and_field() {
    let env = Env::new();
    let project = env.copy_project("sample");
    let path = project.join("erp.credential.json");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"username\"", "\"usrname\"");
    fs::write(&path, text).unwrap();
    let out = env
        .package(&project, "o.fpk", &["--seal-to", RECIPIENT])
        .fails_with_one_line();
    assert!(
        out.stderr.contains("erp.credential.json") && out.stderr.contains("field `usrname`"),
        "{out:#?}"
    );
    assert!(!out.stderr.contains(ERP_PASSWORD));
}

#[test]
fn a_credential_parameter_of_another_type_than_it_needs_is_refused() {
    let env = Env::new();
    let project = env.copy_project("sample");
    let path = project.join("orders-to-erp.mapping.json");
    let text = fs::read_to_string(&path).unwrap().replace(
        r#""credential": "erp","#,
        r#""credential": "erp", "credential_type": "oauth2","#,
    );
    fs::write(&path, text).unwrap();
    let out = env
        .package(&project, "o.fpk", &["--seal-to", RECIPIENT])
        .fails_with_one_line();
    assert!(
        out.stderr.contains("`orders-to-erp`")
            && out.stderr.contains("`erp.credentials`")
            && out.stderr.contains("needs a credential of type oauth2")
            && out.stderr.contains("of type password"),
        "{out:#?}"
    );
    assert!(!env.path("o.fpk").exists());
    // The type it needs, stated rightly, packages.
    let text = fs::read_to_string(&path).unwrap().replace(
        r#""credential_type": "oauth2""#,
        r#""credential_type": "password""#,
    );
    fs::write(&path, text).unwrap();
    env.package(&project, "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
}

/// A canary in files outside the project, which no bundle may ever carry.
const OUTSIDE_CANARY: &str = "canary-outside-the-project-61f0";

/// A directory `outside/` beside the project holding `secret.txt` (the canary) and a valid
/// credential record `extra.credential.json`, as a signing key or /etc would be.
fn outside(env: &Env) -> PathBuf {
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.txt"), OUTSIDE_CANARY).unwrap();
    fs::write(
        outside.join("extra.credential.json"),
        format!(r#"{{"name":"extra","type":"password","description":"{OUTSIDE_CANARY}"}}"#),
    )
    .unwrap();
    outside
}

/// `package` of `project` is refused: exit 1, one line naming `link`, no canary, and no
/// bundle (nor a temporary file) left behind.
fn assert_refused_naming(env: &Env, project: &Path, link: &Path) {
    let out = env
        .package(project, "o.fpk", &["--seal-to", RECIPIENT])
        .fails_with_one_line();
    assert!(
        out.stderr
            .contains(&format!("{} is a symbolic link", link.display())),
        "{out:#?}"
    );
    assert!(!out.all().contains(OUTSIDE_CANARY), "{out:#?}");
    assert!(
        !env.files()
            .iter()
            .any(|f| f.ends_with(".fpk") || f.contains(".tmp")),
        "{:?}",
        env.files()
    );
}

#[test]
fn package_refuses_a_symlinked_directory_in_a_mapping_file_path() {
    let env = Env::new();
    let project = env.copy_project("sample");
    let outside = outside(&env);
    std::os::unix::fs::symlink(&outside, project.join("linked")).unwrap();
    fs::write(
        project.join("leak.mapping.json"),
        r#"{"name":"leak","files":["linked/secret.txt"]}"#,
    )
    .unwrap();
    assert_refused_naming(&env, &project, &project.join("linked"));
    // The same link one level down, below a real directory.
    fs::remove_file(project.join("linked")).unwrap();
    std::os::unix::fs::symlink(&outside, project.join("schemas/linked")).unwrap();
    fs::write(
        project.join("leak.mapping.json"),
        r#"{"name":"leak","files":["schemas/linked/secret.txt"]}"#,
    )
    .unwrap();
    assert_refused_naming(&env, &project, &project.join("schemas/linked"));
}

#[test]
fn package_refuses_a_symlinked_file() {
    let env = Env::new();
    let project = env.copy_project("sample");
    let outside = outside(&env);
    // A file a mapping carries.
    fs::remove_file(project.join("orders.mfd")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), project.join("orders.mfd")).unwrap();
    assert_refused_naming(&env, &project, &project.join("orders.mfd"));
    // A record the walk finds.
    fs::remove_file(project.join("orders.mfd")).unwrap();
    fs::copy(fixture("sample/orders.mfd"), project.join("orders.mfd")).unwrap();
    let link = project.join("extra.credential.json");
    std::os::unix::fs::symlink(outside.join("extra.credential.json"), &link).unwrap();
    assert_refused_naming(&env, &project, &link);
}

#[test]
fn package_refuses_a_symlink_found_deep_in_the_walk() {
    let env = Env::new();
    let project = env.copy_project("sample");
    let outside = outside(&env);
    fs::create_dir_all(project.join("schemas/old/v1")).unwrap();
    let link = project.join("schemas/old/v1/linked");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    assert_refused_naming(&env, &project, &link);
    // Dangling links are refused too: what they point to could appear at any time.
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(env.path("nowhere"), &link).unwrap();
    assert_refused_naming(&env, &project, &link);
}

#[test]
fn package_refuses_a_symlink_loop() {
    let env = Env::new();
    let project = env.copy_project("sample");
    let link = project.join("loop");
    std::os::unix::fs::symlink("loop", &link).unwrap();
    assert_refused_naming(&env, &project, &link);
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("b", project.join("a")).unwrap();
    std::os::unix::fs::symlink("a", project.join("b")).unwrap();
    assert_refused_naming(&env, &project, &project.join("a"));
    // A directory link back up to the project: a loop for a walker that follows links.
    fs::remove_file(project.join("a")).unwrap();
    fs::remove_file(project.join("b")).unwrap();
    let up = project.join("schemas/up");
    std::os::unix::fs::symlink("..", &up).unwrap();
    assert_refused_naming(&env, &project, &up);
}

/// The project directory named on the command line may itself be a link: the user chose it.
#[test]
fn package_follows_a_symlinked_project_directory() {
    let env = Env::new();
    let project = env.copy_project("sample");
    std::os::unix::fs::symlink(&project, env.path("project-link")).unwrap();
    let out = env
        .package(
            &env.path("project-link"),
            "o.fpk",
            &["--seal-to", RECIPIENT],
        )
        .ok();
    assert!(out.stderr.is_empty(), "{out:#?}");
    let doc = inspect_json(&env, "o.fpk");
    assert_eq!(doc["mappings"][0]["files"].as_array().unwrap().len(), 2);
}

#[test]
fn package_credentials_refuses_a_file_that_is_a_symlink() {
    let env = Env::new();
    let outside = outside(&env);
    fs::create_dir(env.path("creds")).unwrap();
    let link = env.path("creds/extra.credential.json");
    std::os::unix::fs::symlink(outside.join("extra.credential.json"), &link).unwrap();
    let args = |file: &Path| {
        vec![
            "package-credentials".to_owned(),
            file.to_str().unwrap().to_owned(),
            "-k".into(),
            "signer.key".into(),
            "-c".into(),
            "/public/orders".into(),
            "-o".into(),
            "c.fpk".into(),
        ]
    };
    let out = env.run(args(&link)).fails_with_one_line();
    assert!(out.stderr.contains(&link.display().to_string()), "{out:#?}");
    assert!(out.stderr.contains("symbolic link"), "{out:#?}");
    assert!(!out.all().contains(OUTSIDE_CANARY), "{out:#?}");
    assert!(!env.path("c.fpk").exists());
    // A link on the way to the file is the user's choice, as the project directory is.
    std::os::unix::fs::symlink(&outside, env.path("outside-link")).unwrap();
    env.run(args(&env.path("outside-link/extra.credential.json")))
        .ok();
}

// ---------------------------------------------------------------------------------------------
// inspect and verify

#[test]
fn inspect_says_whether_the_signature_was_verified() {
    let env = Env::new();
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    let out = env.run(["inspect", "o.fpk"]).ok();
    assert!(out.stdout.contains("signature NOT verified"), "{out:#?}");
    assert!(out.stdout.contains("schemas/order.xsd ("), "{out:#?}");
    assert!(
        out.stdout.contains("notify.smtp (credential) -> external"),
        "{out:#?}"
    );
    let pubkey = fixture("keys/signer.pub");
    let out = env
        .run(["inspect", "o.fpk", "--trust", pubkey.to_str().unwrap()])
        .ok();
    assert!(out.stdout.contains("signature verified"), "{out:#?}");
    let other = fixture("keys/other.pub");
    let out = env
        .run(["inspect", "o.fpk", "--trust", other.to_str().unwrap()])
        .fails_with_one_line();
    assert!(out.stderr.contains("unknown-signer"), "{out:#?}");
}

#[test]
fn inspect_never_prints_secret_values_even_of_plaintext_bundles() {
    let env = Env::new();
    env.package(&fixture("sample"), "p.fpk", &["--plaintext-secrets"])
        .ok();
    for args in [vec!["inspect", "p.fpk"], vec!["inspect", "p.fpk", "--json"]] {
        let out = env.run(args).ok();
        assert!(out.stdout.contains("password"), "field names are shown");
        assert!(!out.all().contains(ERP_PASSWORD), "{out:#?}");
        assert!(!out.all().contains("canary-"), "{out:#?}");
    }
}

#[test]
fn verify_with_a_wrong_trust_key_reports_unknown_signer() {
    let env = Env::new();
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    let other = fixture("keys/other.pub");
    let out = env
        .run(["verify", "o.fpk", "--trust", other.to_str().unwrap()])
        .fails_with_one_line();
    assert!(out.stderr.contains("refused (unknown-signer)"), "{out:#?}");
    let out = env
        .run([
            "verify",
            "o.fpk",
            "--trust",
            other.to_str().unwrap(),
            "--json",
        ])
        .fails(1);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["code"], "unknown-signer");
    assert!(doc["bundle_id"].is_string());
}

#[test]
fn tampered_bundle_fails_verification() {
    let env = Env::new();
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    let mut bytes = fs::read(env.path("o.fpk")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(env.path("t.fpk"), bytes).unwrap();
    let pubkey = fixture("keys/signer.pub");
    let out = env
        .run(["verify", "t.fpk", "--trust", pubkey.to_str().unwrap()])
        .fails_with_one_line();
    assert!(out.stderr.contains("refused ("), "{out:#?}");
}

#[test]
fn verify_accepts_the_shared_valid_fixture_and_refuses_a_malicious_one() {
    let env = Env::new();
    let pubkey = fixture("keys/signer.pub");
    let good = fixture("malicious/valid-sealed.fpk");
    let out = env.run([
        "verify",
        good.to_str().unwrap(),
        "--trust",
        pubkey.to_str().unwrap(),
    ]);
    // The fixture may have expired since it was generated; either way it is judged, not crashed on.
    assert!(
        out.code == 0 || out.stderr.contains("refused (expired)"),
        "{out:#?}"
    );
    let bad = fixture("malicious/traversal-dotdot.fpk");
    let out = env
        .run([
            "verify",
            bad.to_str().unwrap(),
            "--trust",
            pubkey.to_str().unwrap(),
        ])
        .fails_with_one_line();
    assert!(out.stderr.contains("refused ("), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// deploy

/// Reads one HTTP/1.1 request from `stream`, answers `status` and `body` (problem+json for
/// errors), and returns the request head and body length.
fn serve_one<S: std::io::Read + std::io::Write>(
    stream: S,
    status: &str,
    body: &str,
) -> (String, usize) {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut buf = vec![0; len];
    reader.read_exact(&mut buf).unwrap();
    let ctype = if status.starts_with('2') {
        "application/json"
    } else {
        "application/problem+json"
    };
    let stream = reader.get_mut();
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream.flush().unwrap();
    (head, len)
}

/// A one-shot plain HTTP server standing in for the receiver.
fn fake_receiver(status: &str, body: &str) -> (String, std::thread::JoinHandle<(String, usize)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (status, body) = (status.to_owned(), body.to_owned());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        serve_one(stream, &status, &body)
    });
    (url, handle)
}

/// Makes a CA and a server certificate for 127.0.0.1 with openssl, in `dir`.
fn make_ca(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flowpack test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
}

/// A one-shot HTTPS server with the certificate made by [`make_ca`].
fn fake_tls_receiver(
    dir: &Path,
    status: &str,
    body: &str,
) -> (String, std::thread::JoinHandle<Option<(String, usize)>>) {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("leaf.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let config = std::sync::Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (status, body) = (status.to_owned(), body.to_owned());
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // A client that refuses the certificate ends the handshake: no request to report.
        let mut probe = [0u8; 0];
        if std::io::Read::read(&mut tls, &mut probe).is_err() {
            return None;
        }
        Some(serve_one(tls, &status, &body))
    });
    (url, handle)
}

#[test]
fn deploy_over_tls_trusts_the_given_ca_and_refuses_an_unknown_one() {
    let env = Env::new();
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    make_ca(env.dir.path());
    let record = r#"{"id":"d-2","bundle_id":"b2","container":"/public/orders","created":[],
        "updated":["/public/orders/erp"],"needs_secrets":[],"replayed":true}"#;
    let (url, server) = fake_tls_receiver(env.dir.path(), "200 OK", record);
    let out = env
        .run_with(
            [
                "deploy",
                "o.fpk",
                "--server",
                &url,
                "--ca-cert",
                "ca.pem",
                "--json",
            ],
            &[("FLOWPACK_TOKEN", "tok")],
        )
        .ok();
    assert!(server.join().unwrap().is_some());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["replayed"], true);

    // Without --ca-cert the private CA is not trusted.
    let (url, server) = fake_tls_receiver(env.dir.path(), "200 OK", record);
    let out = env
        .run_with(
            ["deploy", "o.fpk", "--server", &url],
            &[("FLOWPACK_TOKEN", "tok")],
        )
        .fails_with_one_line();
    let _ = server.join();
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "{out:#?}"
    );
}

#[test]
fn deploy_streams_the_bundle_with_token_and_prints_the_record() {
    let env = Env::new();
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    let size = fs::metadata(env.path("o.fpk")).unwrap().len() as usize;
    let record = r#"{"id":"d-1","bundle_id":"b1","container":"/public/orders",
        "created":["/public/orders/orders-to-erp","/public/orders/erp"],"updated":[],
        "needs_secrets":["/public/orders/crm-oauth"],"replayed":false}"#;
    let (url, server) = fake_receiver("201 Created", record);
    fs::write(env.path("token"), "tok-123\n").unwrap();
    let out = env
        .run(["deploy", "o.fpk", "--server", &url, "--token-file", "token"])
        .ok();
    let (head, len) = server.join().unwrap();
    let lower = head.to_lowercase();
    assert!(head.starts_with("POST /v1/deployments HTTP/1.1"), "{head}");
    assert!(lower.contains("content-type: application/zip"), "{head}");
    assert!(lower.contains("authorization: bearer tok-123"), "{head}");
    assert_eq!(len, size);
    assert!(
        out.stdout.contains("/public/orders/orders-to-erp"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("needs secrets"), "{out:#?}");
    assert!(!out.all().contains("tok-123"), "the token is never printed");
}

#[test]
fn deploy_reads_a_record_of_a_large_bundle() {
    // A bundle of many credentials yields a record listing every path: several MiB.
    let env = Env::new();
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    let paths: Vec<String> = (0..60_000)
        .map(|i| format!("\"/public/bulk/credential-{i:06}\""))
        .collect();
    let record = format!(
        r#"{{"id":7,"bundle_id":"b2","container":"/public/bulk","created":[{}],"updated":[],"needs_secrets":[],"replayed":false}}"#,
        paths.join(",")
    );
    assert!(record.len() > 1 << 20, "over the old 1 MiB answer limit");
    let (url, server) = fake_receiver("201 Created", &record);
    fs::write(env.path("token"), "tok-123\n").unwrap();
    let out = env
        .run([
            "deploy",
            "o.fpk",
            "--server",
            &url,
            "--token-file",
            "token",
            "--json",
        ])
        .ok();
    server.join().unwrap();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["created"].as_array().map(Vec::len), Some(60_000));
}

#[test]
fn deploy_shows_the_problem_detail_not_the_raw_body() {
    let env = Env::new();
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    let problem = r#"{"type":"about:blank","title":"Unprocessable Entity","status":422,
        "detail":"signer key 7ae14ee21833d49b is not trusted","code":"unknown-signer"}"#;
    let (url, server) = fake_receiver("422 Unprocessable Entity", problem);
    let out = env
        .run_with(
            ["deploy", "o.fpk", "--server", &url],
            &[("FLOWPACK_TOKEN", "tok-456")],
        )
        .fails_with_one_line();
    server.join().unwrap();
    assert!(
        out.stderr.contains("deploy refused (HTTP 422")
            && out.stderr.contains("unknown-signer")
            && out
                .stderr
                .contains(": signer key 7ae14ee21833d49b is not trusted"),
        "{out:#?}"
    );
    assert!(!out.stderr.contains("about:blank"), "{out:#?}");
}

#[test]
fn deploy_to_a_closed_port_gives_a_one_line_error() {
    let env = Env::new();
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = env
        .run_with(
            ["deploy", "o.fpk", "--server", &url],
            &[("FLOWPACK_TOKEN", "tok")],
        )
        .fails(3);
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert!(out.stderr.contains("cannot connect"), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// The packager in release scripts: environment, exit statuses, timeouts, retries, reads

/// Packages the sample into `o.fpk` for a deploy test.
fn sample_bundle(env: &Env) {
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
}

#[test]
fn deploy_takes_server_ca_and_token_from_the_environment() {
    let env = Env::new();
    sample_bundle(&env);
    let record = r#"{"id":1,"bundle_id":"b1","container":"/public/orders","created":[],"updated":[],"needs_secrets":[],"replayed":false}"#;
    let (url, server) = fake_receiver("201 Created", record);
    let out = env.run_with(
        ["deploy", "o.fpk", "--json"],
        &[
            ("FLOWPACK_SERVER", url.as_str()),
            ("FLOWPACK_TOKEN", "tok-env"),
        ],
    );
    let out = out.ok();
    let (head, _) = server.join().unwrap();
    assert!(
        head.to_lowercase()
            .contains("authorization: bearer tok-env"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["bundle_id"], "b1");
    // FLOWPACK_CA_CERT names the CA: a missing file is an error naming it.
    let out = env.run_with(
        ["deploy", "o.fpk"],
        &[
            ("FLOWPACK_SERVER", "https://127.0.0.1:9"),
            ("FLOWPACK_TOKEN", "tok"),
            ("FLOWPACK_CA_CERT", "no-such-ca.pem"),
        ],
    );
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("no-such-ca.pem"), "{out:#?}");
}

#[test]
fn failures_exit_with_a_status_per_kind_and_json_prints_the_problem() {
    let env = Env::new();
    sample_bundle(&env);
    for (status, code, exit) in [
        ("401 Unauthorized", "unauthorized", 4),
        ("403 Forbidden", "forbidden", 4),
        ("409 Conflict", "stale", 5),
        ("422 Unprocessable Entity", "bad-signature", 1),
    ] {
        let problem = format!(
            r#"{{"type":"urn:flowpack:problem:{code}","title":"x","status":{},"detail":"refused: {code}","code":"{code}"}}"#,
            &status[..3]
        );
        let (url, server) = fake_receiver(status, &problem);
        let out = env.run_with(
            ["deploy", "o.fpk", "--server", &url, "--json"],
            &[("FLOWPACK_TOKEN", "tok")],
        );
        server.join().unwrap();
        assert_eq!(out.code, exit, "{status}: {out:#?}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{status}: stdout is not the problem: {e}: {out:#?}"));
        assert_eq!(v["code"], code, "{out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    }
}

#[test]
fn a_receiver_that_never_answers_ends_at_the_timeout_with_exit_3() {
    let env = Env::new();
    sample_bundle(&env);
    // Accepts and reads, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let started = std::time::Instant::now();
    let out = env.run_with(
        [
            "deploy",
            "o.fpk",
            "--server",
            &url,
            "--timeout",
            "1s",
            "--json",
        ],
        &[("FLOWPACK_TOKEN", "tok")],
    );
    let took = started.elapsed();
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["code"], "unreachable", "{out:#?}");
}

#[test]
fn retries_try_again_when_the_receiver_cannot_be_reached() {
    let env = Env::new();
    sample_bundle(&env);
    // Accepts each connection and closes it at once: counted, never answered.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let out = env.run_with(
        ["deploy", "o.fpk", "--server", &url, "--retries", "2"],
        &[("FLOWPACK_TOKEN", "tok")],
    );
    assert_eq!(out.code, 3, "{out:#?}");
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "{out:#?}"
    );
    assert!(out.stderr.contains("try 1 of 3"), "{out:#?}");
    // Refusals are not retried.
    let (url, server) = fake_receiver(
        "409 Conflict",
        r#"{"type":"t","title":"x","status":409,"detail":"d","code":"stale"}"#,
    );
    let out = env.run_with(
        ["deploy", "o.fpk", "--server", &url, "--retries", "3"],
        &[("FLOWPACK_TOKEN", "tok")],
    );
    server.join().unwrap();
    assert_eq!(out.code, 5, "{out:#?}");
}

#[test]
fn bad_timeout_and_retries_values_are_usage_errors() {
    let env = Env::new();
    for bad in [
        ["--timeout", "0s"],
        ["--timeout", "2h"],
        ["--timeout", "60"],
        ["--timeout", "1д"],
        ["--retries", "11"],
        ["--retries", "-1"],
    ] {
        let mut args = vec!["deploy", "o.fpk", "--server", "http://127.0.0.1:9"];
        args.extend(bad);
        let out = env.run_with(args, &[("FLOWPACK_TOKEN", "tok")]);
        assert_eq!(out.code, 2, "{bad:?}: {out:#?}");
    }
}

#[test]
fn ls_get_audit_and_history_read_the_receiver() {
    let env = Env::new();
    let cases: [(&[&str], &str, &str, &str); 4] = [
        (
            &["ls", "/public"],
            r#"{"path":"/public","containers":["orders"],"mappings":["m1"],"credentials":["c1"]}"#,
            "GET /v1/containers/public ",
            "orders/",
        ),
        (
            &["get", "/public/orders/erp", "--kind", "credential"],
            r#"{"path":"/public/orders/erp","name":"erp","type":"password","password":{"set":true,"fingerprint":"ab12"},"needs_secrets":false}"#,
            "GET /v1/credentials/public/orders/erp ",
            "ab12",
        ),
        (
            &["audit", "--container", "/public/orders", "--limit", "5"],
            r#"{"audit":[{"id":7,"at":"2026-11-30T00:00:00.000Z","principal":"ci","action":"deploy","outcome":"applied","status":201,"container":"/public/orders"}],"next":3}"#,
            "GET /v1/audit?limit=5&container=/public/orders ",
            "--before 3",
        ),
        (
            &["history", "--before", "9"],
            r#"{"deployments":[{"id":8,"bundle_id":"b8","container":"/public/orders","created":["x"],"updated":[],"needs_secrets":[]}],"next":null}"#,
            "GET /v1/deployments?limit=100&before=9 ",
            "bundle b8",
        ),
    ];
    for (args, answer, request, shown) in cases {
        let (url, server) = fake_receiver("200 OK", answer);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &url]);
        let out = env.run_with(all, &[("FLOWPACK_TOKEN", "tok")]).ok();
        let (head, _) = server.join().unwrap();
        assert!(head.starts_with(request), "{args:?}: {head}");
        assert!(out.stdout.contains(shown), "{args:?}: {out:#?}");
    }
    // Escaped: the receiver's text cannot drive the terminal.
    let (url, server) = fake_receiver(
        "200 OK",
        r#"{"path":"/p","containers":["evil[2J"],"mappings":[],"credentials":[]}"#,
    );
    let out = env
        .run_with(["ls", "/p", "--server", &url], &[("FLOWPACK_TOKEN", "tok")])
        .ok();
    server.join().unwrap();
    assert!(!out.stdout.contains('\u{1b}'), "{out:#?}");
}

#[test]
fn deploy_without_any_token_says_where_to_put_one() {
    let env = Env::new();
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    // stdin is /dev/null here: not a terminal, and empty.
    let out = env
        .run(["deploy", "o.fpk", "--server", "http://127.0.0.1:9"])
        .fails_with_one_line();
    assert!(out.stderr.contains("token"), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// completions, man, usage

#[test]
fn completions_for_bash_and_man_page_are_printed() {
    let env = Env::new();
    let out = env.run(["completions", "bash"]).ok();
    assert!(out.stdout.contains("_flowpack()"), "{out:#?}");
    let out = env.run(["man"]).ok();
    assert!(out.stdout.contains(".TH flowpack"), "{out:#?}");
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    env.run(["package"]).fails(2);
    env.run(["frobnicate"]).fails(2);
    let out = env
        .package(&fixture("sample"), "o.fpk", &["--expires", "7x"])
        .fails(2);
    assert!(out.stderr.contains("--expires"), "{out:#?}");
    env.run([
        "package",
        "x",
        "-k",
        "signer.key",
        "-c",
        "relative",
        "-o",
        "o.fpk",
    ])
    .fails(2);
}

// ---------------------------------------------------------------------------------------------
// canaries and interop

/// No command ever prints a secret value, and the secrets of credentials whose flag is off
/// appear nowhere in any bundle, compressed or not.
#[test]
fn canary_secrets_never_printed_and_flag_off_secrets_never_bundled() {
    let env = Env::new();
    let pubkey = fixture("keys/signer.pub");
    let pubkey = pubkey.to_str().unwrap();
    let mut outs = vec![
        env.package(&fixture("sample"), "sealed.fpk", &["--seal-to", RECIPIENT])
            .ok(),
        env.package(&fixture("sample"), "plain.fpk", &["--plaintext-secrets"])
            .ok(),
        env.package(&fixture("sample"), "refused.fpk", &[]).fails(1),
        env.package(
            &fixture("envs"),
            "env.fpk",
            &["--plaintext-secrets", "--env", "production"],
        )
        .ok(),
        env.package(&fixture("envs"), "env2.fpk", &["--env", "staging"])
            .fails(1),
    ];
    let credentials: Vec<String> = fs::read_dir(fixture("sample"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".credential.json"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["package-credentials".to_owned()];
    args.extend(credentials);
    args.extend(
        [
            "-k",
            "signer.key",
            "-c",
            "/c",
            "--plaintext-secrets",
            "-o",
            "creds.fpk",
        ]
        .map(String::from),
    );
    outs.push(env.run(&args).ok());
    for b in ["sealed.fpk", "plain.fpk", "env.fpk", "creds.fpk"] {
        outs.push(env.run(["inspect", b]).ok());
        outs.push(env.run(["inspect", b, "--json"]).ok());
        outs.push(env.run(["inspect", b, "--trust", pubkey]).ok());
        outs.push(env.run(["verify", b, "--trust", pubkey]).ok());
        outs.push(env.run(["verify", b, "--trust", pubkey, "--json"]).ok());
        let (url, server) = fake_receiver(
            "422 Unprocessable Entity",
            r#"{"title":"x","status":422,"detail":"refused","code":"bad-record"}"#,
        );
        outs.push(
            env.run_with(["deploy", b, "--server", &url], &[("FLOWPACK_TOKEN", "t")])
                .fails(1),
        );
        server.join().unwrap();
    }
    let all_secrets: Vec<&str> = std::iter::once(ERP_PASSWORD)
        .chain(FLAG_OFF_SECRETS)
        .chain(ENV_SECRETS)
        .collect();
    for out in &outs {
        for s in &all_secrets {
            assert!(!out.all().contains(s), "{s} printed: {out:#?}");
        }
    }
    for b in ["sealed.fpk", "plain.fpk", "creds.fpk"] {
        let raw = fs::read(env.path(b)).unwrap();
        let inflated = unzip(&env.path(b), None);
        for s in FLAG_OFF_SECRETS {
            assert!(!contains(&raw, s) && !contains(&inflated, s), "{s} in {b}");
        }
    }
    // Sealed: the flag-set secret is not in the bundle in clear either.
    assert!(!contains(
        &unzip(&env.path("sealed.fpk"), None),
        ERP_PASSWORD
    ));
    // Plaintext: it is, as asked (this proves the check above can see a secret).
    assert!(contains(&unzip(&env.path("plain.fpk"), None), ERP_PASSWORD));
    let env_bundle = unzip(&env.path("env.fpk"), None);
    assert!(contains(&env_bundle, ENV_SECRETS[1]) && !contains(&env_bundle, ENV_SECRETS[0]));
}

/// A third party verifies a bundle with unzip, openssl and sha256sum alone.
#[test]
fn bundle_verifies_with_openssl_and_sha256sum() {
    let env = Env::new();
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    let bundle = env.path("o.fpk");
    let manifest = unzip(&bundle, Some("manifest.json"));
    fs::write(env.path("manifest.json"), &manifest).unwrap();
    fs::write(
        env.path("manifest.sig"),
        unzip(&bundle, Some("manifest.sig")),
    )
    .unwrap();
    let status = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(fixture("keys/signer.pub"))
        .args(["-rawin", "-in", "manifest.json", "-sigfile", "manifest.sig"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let entries = doc["entries"].as_array().unwrap();
    assert!(entries.len() >= 7, "mapping, 2 files, 4 credentials");
    for e in entries {
        let path = e["path"].as_str().unwrap();
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&unzip(&bundle, Some(path)))
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let sum = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            sum.split_whitespace().next(),
            e["sha256"].as_str(),
            "{path}"
        );
    }
    // The mapping's files are carried byte for byte.
    assert_eq!(
        unzip(
            &bundle,
            Some("mappings/orders-to-erp/files/schemas/order.xsd")
        ),
        fs::read(fixture("sample/schemas/order.xsd")).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// hostile input: untrusted text in inspect, bad command-line values, hostile bundles

/// What must never reach a terminal raw: C0 (but the line feeds that end lines), DEL, C1, and
/// the invisible characters that reorder or hide text.
fn raw_control(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
        )
}

fn assert_no_raw_control(what: &str, text: &str) {
    let bad: Vec<(usize, char)> = text
        .char_indices()
        .filter(|(_, c)| raw_control(*c))
        .collect();
    assert!(bad.is_empty(), "{what}: raw {bad:?} in {text:?}");
}

/// A forged line: what the real signer line of a verified bundle says.
const FORGED: &str = "  signer:      0123456789abcdef (signature verified with a trusted key)";

/// Packages a signed bundle `h.fpk` whose mapping description, file names and environment
/// carry terminal escapes, CR, LF, bidi overrides and a forged "signature verified" line.
fn hostile_text_bundle(env: &Env) -> (String, String) {
    let project = env.path("hostile");
    fs::create_dir(&project).unwrap();
    let description =
        format!("harmless\u{1b}[2K\r{FORGED}\n{FORGED}\r\n\u{1b}]0;title\u{7}\u{9b}2J\u{7f}end");
    let files = [
        "evil\u{202e}txt.exe",
        "line\u{2028}sep.txt",
        "iso\u{2066}late.txt",
    ];
    for f in files {
        fs::write(project.join(f), "data").unwrap();
    }
    let mapping = serde_json::json!({
        "name": "leak",
        "description": description,
        "parameters": [{"name": "in", "type": "file", "description": format!("\r{FORGED}")}],
        "files": files,
    });
    fs::write(project.join("leak.mapping.json"), mapping.to_string()).unwrap();
    let environment = format!("prod\u{1b}[1A\u{1b}[2K\r{FORGED}\u{202e}");
    let out = env
        .package(&project, "h.fpk", &["--env", &environment])
        .ok();
    assert_no_raw_control("package summary", &out.all());
    (description, environment)
}

#[test]
fn inspect_escapes_control_characters_in_untrusted_text() {
    let env = Env::new();
    let (description, environment) = hostile_text_bundle(&env);
    let pubkey = fixture("keys/signer.pub");
    for trust in [false, true] {
        let mut args = vec!["inspect", "h.fpk"];
        if trust {
            args.extend(["--trust", pubkey.to_str().unwrap()]);
        }
        let out = env.run(&args).ok();
        assert_no_raw_control("inspect", &out.all());
        // Exactly one signer line, the real one; the forged text stays inside the lines of
        // the description and the environment, escaped.
        let signer_lines: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("signer:"))
            .collect();
        assert_eq!(signer_lines.len(), 1, "{out:#?}");
        assert_eq!(
            signer_lines[0].contains("(signature verified with a trusted key)"),
            trust,
            "{out:#?}"
        );
        for line in out.stdout.lines() {
            if line.contains("signature verified") && !line.starts_with("  signer:") {
                assert!(
                    line.starts_with("mapping leak: harmless\\u{1b}[2K\\u{d}")
                        || line.starts_with("  environment: prod\\u{1b}[1A"),
                    "forged text escaped its line: {line:?}\n{out:#?}"
                );
            }
        }
        assert!(
            out.stdout.contains("evil\\u{202e}txt.exe (4 bytes)"),
            "{out:#?}"
        );
        assert!(out.stdout.contains("line\\u{2028}sep.txt"), "{out:#?}");
    }
    // JSON keeps the exact strings, and its text is as safe as the human output.
    let out = env.run(["inspect", "h.fpk", "--json"]).ok();
    assert_no_raw_control("inspect --json", &out.all());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["mappings"][0]["description"], description.as_str());
    assert_eq!(doc["environment"], environment.as_str());
    assert_eq!(
        doc["mappings"][0]["files"][0]["path"],
        "evil\u{202e}txt.exe"
    );
    // verify's answers, human and JSON, carry no raw control either.
    let out = env
        .run(["verify", "h.fpk", "--trust", pubkey.to_str().unwrap()])
        .ok();
    assert_no_raw_control("verify", &out.all());
}

/// Every hostile bundle of the corpus, inspected and verified every way: never a panic, never
/// a raw control character (their names and details are untrusted text too).
#[test]
fn inspect_and_verify_never_panic_or_print_raw_controls_on_hostile_bundles() {
    let env = Env::new();
    let pubkey = fixture("keys/signer.pub");
    let pubkey = pubkey.to_str().unwrap();
    let mut seen = 0;
    for e in fs::read_dir(fixture("malicious")).unwrap() {
        let path = e.unwrap().path();
        if path.extension() != Some(OsStr::new("fpk")) {
            continue;
        }
        seen += 1;
        let b = path.to_str().unwrap();
        for args in [
            vec!["inspect", b],
            vec!["inspect", b, "--json"],
            vec!["inspect", b, "--trust", pubkey],
            vec!["verify", b, "--trust", pubkey],
            vec!["verify", b, "--trust", pubkey, "--json"],
        ] {
            let out = env.run(&args);
            assert!(out.code == 0 || out.code == 1, "{args:?}: {out:#?}");
            assert!(!out.stderr.contains("panicked"), "{args:?}: {out:#?}");
            assert_no_raw_control(&format!("{args:?}"), &out.all());
        }
    }
    assert!(seen > 40, "the corpus is there: {seen}");
}

#[test]
fn bad_expires_values_are_usage_errors_never_panics() {
    let env = Env::new();
    for bad in [
        "7д",
        "9999999999999999d",
        "99999999999999999999999999d",
        "18446744073709551615m",
        "0d",
        "0m",
        "-1d",
        "+1d",
        "",
        "d",
        "7",
        "1e9d",
        " 7d",
        "7d ",
        "7 d",
        "30s",
        "7x",
        "7D",
        "3651d",
        "87601h",
        "5256001m",
        "٧d",
        "7\u{1b}",
    ] {
        let flag = format!("--expires={bad}");
        let out = env.package(&fixture("sample"), "o.fpk", &[&flag]).fails(2);
        assert!(!out.stderr.contains("panicked"), "{bad:?}: {out:#?}");
        // clap shows the value, less any escape sequence in it.
        let shown = if bad.contains('\u{1b}') { "7" } else { bad };
        assert!(
            out.stderr.contains(&format!(
                "invalid value '{shown}' for '--expires <DURATION>'"
            )),
            "{bad:?}: {out:#?}"
        );
        assert!(!env.path("o.fpk").exists());
    }
}

#[test]
fn expires_accepts_durations_from_a_minute_to_ten_years_weeks_too() {
    let env = Env::new();
    for (value, seconds) in [
        ("1m", 60i64),
        ("12h", 12 * 3600),
        ("1h30m", 90 * 60),
        ("1w", 7 * 86400),
        ("3650d", 3650 * 86400),
    ] {
        let flag = format!("--expires={value}");
        env.package(
            &fixture("sample"),
            "o.fpk",
            &[&flag, "--seal-to", RECIPIENT],
        )
        .ok();
        let doc = inspect_json(&env, "o.fpk");
        let at = |k: &str| {
            time::OffsetDateTime::parse(
                doc[k].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        assert_eq!(
            (at("expires_at") - at("created_at")).whole_seconds(),
            seconds,
            "{value}"
        );
        fs::remove_file(env.path("o.fpk")).unwrap();
    }
}

#[test]
fn help_documents_the_expires_range_and_the_symlink_rule() {
    let env = Env::new();
    // Help is wrapped to the terminal: compare with the line breaks undone.
    let help = |cmd: &str| {
        let out = env.run([cmd, "--help"]).ok();
        out.stdout.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let package = help("package");
    assert!(package.contains("from 1m to 3650d"), "{package}");
    assert!(
        package.contains("A symbolic link anywhere below DIR"),
        "{package}"
    );
    let credentials = help("package-credentials");
    assert!(
        credentials.contains("itself a symbolic link is refused"),
        "{credentials}"
    );
}

#[test]
fn oversized_or_endless_key_files_are_refused_not_read_forever() {
    let env = Env::new();
    fs::write(env.path("big.key"), vec![b'A'; 1 << 20]).unwrap();
    for key in ["big.key", "/dev/zero"] {
        let out = env
            .run([
                "package",
                fixture("sample").to_str().unwrap(),
                "-k",
                key,
                "-c",
                "/public/orders",
                "-o",
                "o.fpk",
                "--seal-to",
                RECIPIENT,
            ])
            .fails_with_one_line();
        assert!(out.stderr.contains("not a PEM key"), "{out:#?}");
    }
    let out = env
        .run(["verify", "x.fpk", "--trust", "/dev/zero"])
        .fails_with_one_line();
    assert!(out.stderr.contains("not a PEM key"), "{out:#?}");
}

#[test]
fn seal_to_server_fetches_the_recipient_from_the_receivers_keys() {
    let env = Env::new();
    let (url, server) = fake_receiver(
        "200 OK",
        &format!(r#"{{"sealing_recipient":"{RECIPIENT}"}}"#),
    );
    let out = env
        .package(&fixture("sample"), "o.fpk", &["--seal-to-server", &url])
        .ok();
    let (head, _) = server.join().unwrap();
    assert!(head.starts_with("GET /v1/keys HTTP/1.1"), "{head}");
    assert!(
        out.stderr.contains(RECIPIENT),
        "says which recipient it sealed to: {out:#?}"
    );
    let v = inspect_json(&env, "o.fpk");
    assert_eq!(v["sealed_to"], RECIPIENT, "{v}");
    // Plain http to another host is refused before anything is sent.
    let out = env.package(
        &fixture("sample"),
        "p.fpk",
        &["--seal-to-server", "http://receiver.example"],
    );
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("https://"), "{out:#?}");
    assert!(!env.path("p.fpk").exists());
    // And it cannot be combined with --seal-to.
    let out = env.package(
        &fixture("sample"),
        "q.fpk",
        &["--seal-to", RECIPIENT, "--seal-to-server", &url],
    );
    assert_eq!(out.code, 2, "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// Found by an attacker's review of the release-script features

/// A server that sends a head announcing `len` bytes, then one byte a second.
fn trickling_receiver(len: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
                );
                if std::io::Write::write_all(&mut s, head.as_bytes()).is_err() {
                    return;
                }
                for _ in 0..len {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    if std::io::Write::write_all(&mut s, b" ").is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn a_receiver_trickling_its_answer_is_cut_off_at_the_timeout() {
    let env = Env::new();
    let url = trickling_receiver(100_000);
    let started = std::time::Instant::now();
    let out = env.run_with(
        ["ls", "/apps", "--server", &url, "--timeout", "2s"],
        &[("FLOWPACK_TOKEN", "tok")],
    );
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn values_of_any_type_from_the_receiver_are_escaped() {
    let env = Env::new();
    let evil = "\u{1b}[2J\u{202e}\u{2028}\u{9b}";
    let audit = serde_json::json!({
        "audit": [{"id": {"x": evil}, "status": [evil], "at": "t", "action": "deploy"}],
        "next": null
    });
    let (url, server) = fake_receiver("200 OK", &audit.to_string());
    let out = env
        .run_with(["audit", "--server", &url], &[("FLOWPACK_TOKEN", "tok")])
        .ok();
    server.join().unwrap();
    assert_no_raw_control("audit", &out.stdout);
    let record = serde_json::json!({"id": [evil], "bundle_id": "b", "container": "/c",
        "created": [], "updated": [], "needs_secrets": [], "replayed": false});
    env.package(&fixture("sample"), "o.fpk", &["--seal-to", RECIPIENT])
        .ok();
    let (url, server) = fake_receiver("201 Created", &record.to_string());
    let out = env
        .run_with(
            ["deploy", "o.fpk", "--server", &url],
            &[("FLOWPACK_TOKEN", "tok")],
        )
        .ok();
    server.join().unwrap();
    assert_no_raw_control("deploy", &out.stdout);
}

#[test]
fn a_password_in_the_server_url_is_refused_and_never_shown() {
    let env = Env::new();
    let out = env.run_with(
        ["ls", "/apps", "--server", "http://:hunter2@127.0.0.1:1"],
        &[("FLOWPACK_TOKEN", "tok")],
    );
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(!out.all().contains("hunter2"), "{out:#?}");
    let out = env.package(
        &fixture("sample"),
        "o.fpk",
        &["--seal-to-server", "http://:hunter2@127.0.0.1:1"],
    );
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(!out.all().contains("hunter2"), "{out:#?}");
}

#[test]
fn seal_to_server_reads_a_bounded_answer() {
    let env = Env::new();
    let huge = format!(r#"{{"sealing_recipient":"{}"}}"#, "a".repeat(100_000));
    let (url, server) = fake_receiver("200 OK", &huge);
    let out = env.package(&fixture("sample"), "o.fpk", &["--seal-to-server", &url]);
    let _ = server.join();
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("larger than 16 KiB"), "{out:#?}");
}

#[test]
fn more_recipients_than_a_receiver_can_open_are_a_usage_error() {
    let env = Env::new();
    let mut args: Vec<String> = Vec::new();
    for _ in 0..21 {
        args.extend(["--seal-to".to_owned(), RECIPIENT.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.package(&fixture("sample"), "o.fpk", &args);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("at most 20"), "{out:#?}");
    assert!(!env.path("o.fpk").exists());
}

// ---------------------------------------------------------------------------------------------
// Errors that say what to do

#[test]
fn a_server_without_a_scheme_is_told_to_add_https() {
    let env = Env::new();
    sample_bundle(&env);
    for args in [
        &["ls", "/", "--server", "receiver.local:8443"][..],
        &["deploy", "o.fpk", "--server", "receiver.local:8443"],
        &["ls", "/", "--server", "receiver.local"],
    ] {
        let out = env
            .run_with(args, &[("FLOWPACK_TOKEN", "tok")])
            .fails_with_one_line();
        assert!(out.stderr.contains("--server"), "{out:#?}");
        assert!(out.stderr.contains("add https://"), "{out:#?}");
        assert!(
            out.stderr
                .contains(&format!("(https://{})", args[args.len() - 1])),
            "{out:#?}"
        );
    }
    // A password before @ is never echoed, even to help.
    let out = env
        .run_with(
            [
                "ls",
                "/",
                "--server",
                "ops:canary-pw-81c2@receiver.local:8443",
            ],
            &[("FLOWPACK_TOKEN", "tok")],
        )
        .fails_with_one_line();
    assert!(out.stderr.contains("add https://"), "{out:#?}");
    assert!(!out.all().contains("canary-pw-81c2"), "{out:#?}");
    // --seal-to-server says the same.
    let out = env
        .package(
            &fixture("sample"),
            "o2.fpk",
            &["--seal-to-server", "receiver.local:8443"],
        )
        .fails_with_one_line();
    assert!(
        out.stderr.contains("--seal-to-server") && out.stderr.contains("add https://"),
        "{out:#?}"
    );
}

/// A one-shot plain HTTP server that answers whatever arrives, a TLS ClientHello included, with
/// `400 Bad Request` and closes, as an HTTP server does.
fn plain_http_server() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        let _ = s.write_all(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    });
    (url, handle)
}

#[test]
fn https_to_a_plain_http_server_says_it_speaks_plain_http() {
    let env = Env::new();
    sample_bundle(&env);
    let (url, server) = plain_http_server();
    let out = env
        .run_with(
            ["deploy", "o.fpk", "--server", &url],
            &[("FLOWPACK_TOKEN", "tok")],
        )
        .fails_with_one_line();
    server.join().unwrap();
    assert!(
        out.stderr.contains(
            "the server speaks plain HTTP, not TLS; use http:// (loopback only) or enable TLS on it"
        ),
        "{out:#?}"
    );
    let (url, server) = plain_http_server();
    let out = env
        .package(&fixture("sample"), "o2.fpk", &["--seal-to-server", &url])
        .fails_with_one_line();
    server.join().unwrap();
    assert!(out.stderr.contains("speaks plain HTTP"), "{out:#?}");
}

#[test]
fn a_certificate_from_an_unknown_issuer_says_to_pass_ca_cert() {
    let env = Env::new();
    sample_bundle(&env);
    make_ca(env.dir.path());
    let (url, server) = fake_tls_receiver(env.dir.path(), "200 OK", "{}");
    let out = env
        .run_with(["ls", "/", "--server", &url], &[("FLOWPACK_TOKEN", "tok")])
        .fails_with_one_line();
    assert!(server.join().unwrap().is_none());
    assert!(
        out.stderr.contains(
            "the server's certificate is not signed by a trusted CA; pass --ca-cert PEM or set FLOWPACK_CA_CERT"
        ),
        "{out:#?}"
    );
    // Another CA given: it is named.
    let other = env.path("other");
    fs::create_dir(&other).unwrap();
    make_ca(&other);
    let (url, server) = fake_tls_receiver(env.dir.path(), "200 OK", "{}");
    let out = env
        .run_with(
            ["ls", "/", "--server", &url, "--ca-cert", "other/ca.pem"],
            &[("FLOWPACK_TOKEN", "tok")],
        )
        .fails_with_one_line();
    assert!(server.join().unwrap().is_none());
    assert!(
        out.stderr
            .contains("not signed by the CA in --ca-cert other/ca.pem"),
        "{out:#?}"
    );
    // And --seal-to-server, which fetches the recipient over TLS, says the same.
    let (url, server) = fake_tls_receiver(env.dir.path(), "200 OK", "{}");
    let out = env
        .package(&fixture("sample"), "o2.fpk", &["--seal-to-server", &url])
        .fails_with_one_line();
    assert!(server.join().unwrap().is_none());
    assert!(out.stderr.contains("pass --ca-cert PEM"), "{out:#?}");
}

#[test]
fn a_public_key_given_as_k_names_the_private_key_to_give() {
    let env = Env::new();
    env.run(["keygen", "-o", "mine"]).ok();
    let out = env
        .run([
            "package",
            fixture("sample").to_str().unwrap(),
            "-k",
            "mine.pub",
            "-c",
            "/public/orders",
            "--seal-to",
            RECIPIENT,
            "-o",
            "o.fpk",
        ])
        .fails_with_one_line();
    assert!(
        out.stderr
            .contains("mine.pub is a public key; -k takes the private key mine"),
        "{out:#?}"
    );
    assert!(!env.path("o.fpk").exists());
    // A public key under another name: still told what -k takes.
    fs::copy(fixture("keys/signer.pub"), env.path("signing-key.pem")).unwrap();
    let out = env
        .run([
            "package-credentials",
            fixture("sample/erp.credential.json").to_str().unwrap(),
            "-k",
            "signing-key.pem",
            "-c",
            "/public/orders",
            "--seal-to",
            RECIPIENT,
            "-o",
            "o.fpk",
        ])
        .fails_with_one_line();
    assert!(
        out.stderr
            .contains("signing-key.pem is a public key; -k takes the private key"),
        "{out:#?}"
    );
}

#[test]
fn an_empty_standard_input_and_no_token_says_the_three_ways_to_give_one() {
    let env = Env::new();
    sample_bundle(&env);
    // stdin is /dev/null: empty, not a terminal; FLOWPACK_TOKEN is removed by `run`.
    for args in [
        &["deploy", "o.fpk", "--server", "http://127.0.0.1:9"][..],
        &["ls", "/", "--server", "http://127.0.0.1:9"],
    ] {
        let out = env.run(args).fails_with_one_line();
        assert!(
            out.stderr.contains(
                "no token: standard input is empty; pass --token-file FILE, set FLOWPACK_TOKEN, or pipe the token on standard input"
            ),
            "{out:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bundles through pipes: -o -, inspect -, verify -

/// Runs flowpack with `input` on standard input; returns the result and the raw stdout.
fn run_piped(env: &Env, args: &[&str], input: &[u8]) -> (Out, Vec<u8>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowpack"))
        .args(args)
        .current_dir(env.dir.path())
        .env_remove("FLOWPACK_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // A refusal may close stdin before all is written: not an error of the test.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        out.stdout,
    )
}

#[test]
fn package_to_stdout_pipes_into_verify_and_inspect_from_stdin() {
    let env = Env::new();
    let sample = fixture("sample");
    let pubkey = fixture("keys/signer.pub");
    let (out, bundle) = run_piped(
        &env,
        &[
            "package",
            sample.to_str().unwrap(),
            "-k",
            "signer.key",
            "-c",
            "/public/orders",
            "--seal-to",
            RECIPIENT,
            "-o",
            "-",
        ],
        b"",
    );
    let out = out.ok();
    assert!(bundle.starts_with(b"PK\x03\x04"), "{out:#?}");
    // The summary went to stderr, and no file named "-" was made.
    assert!(out.stderr.contains("wrote standard output ("), "{out:#?}");
    assert!(!env.path("-").exists());
    assert_eq!(env.files(), Vec::<String>::new());
    let (out, _) = run_piped(
        &env,
        &["verify", "-", "--trust", pubkey.to_str().unwrap()],
        &bundle,
    );
    let out = out.ok();
    assert!(out.stdout.starts_with("valid: bundle "), "{out:#?}");
    let (out, _) = run_piped(
        &env,
        &["inspect", "-", "--trust", pubkey.to_str().unwrap()],
        &bundle,
    );
    let out = out.ok();
    assert!(
        out.stdout.starts_with("bundle (standard input)\n"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("signature verified"), "{out:#?}");

    // package-credentials too; the bytes are a bundle `verify` accepts from a file as well.
    let (out, creds) = run_piped(
        &env,
        &[
            "package-credentials",
            sample.join("erp.credential.json").to_str().unwrap(),
            "-k",
            "signer.key",
            "-c",
            "/public/orders",
            "--seal-to",
            RECIPIENT,
            "-o",
            "-",
        ],
        b"",
    );
    out.ok();
    fs::write(env.path("c.fpk"), &creds).unwrap();
    env.run(["verify", "c.fpk", "--trust", pubkey.to_str().unwrap()])
        .ok();

    // A damaged bundle on stdin is refused as a file would be, naming standard input.
    let mut bad = bundle.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x55;
    let (out, _) = run_piped(
        &env,
        &["verify", "-", "--trust", pubkey.to_str().unwrap()],
        &bad,
    );
    let out = out.fails_with_one_line();
    assert!(
        out.stderr.contains("bundle (standard input): refused ("),
        "{out:#?}"
    );
    // Nothing on stdin: said so.
    let (out, _) = run_piped(&env, &["inspect", "-"], b"");
    let out = out.fails_with_one_line();
    assert!(out.stderr.contains("standard input is empty"), "{out:#?}");
}

#[test]
fn a_failed_package_to_stdout_writes_nothing_there() {
    let env = Env::new();
    // Secrets with the flag set and no --seal-to: refused after the project was read.
    let (out, bytes) = run_piped(
        &env,
        &[
            "package",
            fixture("sample").to_str().unwrap(),
            "-k",
            "signer.key",
            "-c",
            "/public/orders",
            "-o",
            "-",
        ],
        b"",
    );
    out.fails_with_one_line();
    assert!(bytes.is_empty(), "{} bytes on stdout", bytes.len());
}

#[test]
fn package_to_stdout_refuses_a_terminal() {
    let env = Env::new();
    // `script` gives the command a pseudo-terminal as its standard output.
    let cmd = format!(
        "{} package {} -k signer.key -c /public/orders --seal-to {RECIPIENT} -o -",
        env!("CARGO_BIN_EXE_flowpack"),
        fixture("sample").display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(env.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("-o -: standard output is a terminal, and a bundle is binary"),
        "{text}"
    );
    assert!(!text.contains("PK\u{3}\u{4}"), "{text}");
}
