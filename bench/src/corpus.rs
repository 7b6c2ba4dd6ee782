//! Deterministic corpora: flowpack projects of XML-like mapping files, and credential records.
//!
//! Content comes from SplitMix64 seeded per file (`seed`, file index), so files can be written
//! on all cores and still be identical from run to run. The XML-like text compresses about as
//! well as real mapping designs (deflate -6 shrinks it about 5:1): element names and attribute
//! names repeat, keys are drawn from a per-file pool, and some text is free words.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::Opts;

/// SplitMix64: small, fast, and good enough to make test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for stream `stream` of `seed`.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const SYLLABLES: &[&str] = &[
    "or", "der", "cus", "tom", "er", "in", "voice", "line", "item", "price", "net", "gross", "tax",
    "ship", "ment", "stock", "ware", "house", "part", "ner", "ac", "count", "led", "ger", "pay",
    "ment", "due", "date", "code", "ref", "batch", "lot",
];

const ELEMENTS: &[&str] = &[
    "component",
    "entry",
    "datapoint",
    "connection",
    "vertex",
    "edge",
    "property",
    "function",
    "input",
    "output",
    "constant",
    "filter",
    "sort",
    "group",
    "join",
    "lookup",
];

fn vocabulary() -> Vec<String> {
    let mut rng = Rng::new(0x5EED, 0);
    (0..256)
        .map(|_| {
            let n = 2 + rng.below(2);
            (0..n)
                .map(|_| SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize])
                .collect::<String>()
        })
        .collect()
}

/// Writes `size` bytes of XML-like mapping text for file `index` into `out`.
pub fn xml(seed: u64, index: u64, size: usize, words: &[String], out: &mut String) {
    out.clear();
    let mut rng = Rng::new(seed, index + 1);
    let keys: Vec<u32> = (0..512).map(|_| rng.below(10_000_000) as u32).collect();
    let word = |rng: &mut Rng| -> &str { &words[rng.below(words.len() as u64) as usize] };
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<mapping version=\"27\">\n");
    let mut depth = 1usize;
    while out.len() < size {
        for _ in 0..depth {
            out.push_str("  ");
        }
        let el = ELEMENTS[rng.below(ELEMENTS.len() as u64) as usize];
        let k1 = keys[rng.below(512) as usize];
        let k2 = keys[rng.below(512) as usize];
        // `write!` to a String cannot fail.
        let _ = match rng.below(8) {
            0 if depth < 6 => {
                depth += 1;
                writeln!(
                    out,
                    "<{el} name=\"{}_{}\" library=\"{}\" uid=\"{k1}\">",
                    word(&mut rng),
                    word(&mut rng),
                    word(&mut rng)
                )
            }
            1 | 2 => writeln!(
                out,
                "<{el} name=\"{}\" type=\"{}\" outkey=\"{k1}\" inpkey=\"{k2}\"/>",
                word(&mut rng),
                word(&mut rng)
            ),
            3 => writeln!(
                out,
                "<edge vertexkey=\"{k1}\"><edges><edge vertexkey=\"{k2}\"/></edges></edge>"
            ),
            4 => writeln!(out, "<datapoint pos=\"{}\" key=\"{k1}\"/>", rng.below(64)),
            5 => writeln!(
                out,
                "<text>{} {} {} {}</text>",
                word(&mut rng),
                word(&mut rng),
                word(&mut rng),
                word(&mut rng)
            ),
            6 => writeln!(
                out,
                "<value>{}.{:02}</value>",
                rng.below(100_000),
                rng.below(100)
            ),
            _ if depth > 1 => {
                depth -= 1;
                writeln!(out, "</component>")
            }
            _ => writeln!(
                out,
                "<property name=\"{}\" value=\"{k1}\"/>",
                word(&mut rng)
            ),
        };
    }
    out.truncate(size);
}

/// Sizes of `files` files adding up to `total`: log-uniform between 4 KiB and 1 MiB, scaled.
fn sizes(seed: u64, files: u64, total: u64) -> Vec<u64> {
    let mut rng = Rng::new(seed, 0);
    let (lo, hi) = ((4096f64).ln(), (1_048_576f64).ln());
    let raw: Vec<f64> = (0..files)
        .map(|_| (lo + (hi - lo) * rng.unit()).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    let mut out: Vec<u64> = raw
        .iter()
        .map(|r| ((r * total as f64 / sum) as u64).max(1))
        .collect();
    let used: u64 = out[..out.len() - 1].iter().sum();
    let last = out.len() - 1;
    out[last] = total.saturating_sub(used).max(1);
    out
}

/// Which mapping each file belongs to: the first quarter of the mappings (at least one) are
/// big and hold 80% of the files; the rest share what is left.
fn owners(files: u64, mappings: u64) -> Vec<u64> {
    let big = (mappings / 4).max(1);
    let small = mappings - big;
    let to_big = if small == 0 { files } else { files * 4 / 5 };
    (0..files)
        .map(|i| {
            if i < to_big {
                i * big / to_big
            } else {
                big + (i - to_big) * small / (files - to_big)
            }
        })
        .collect()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the files `jobs[i] = (path, index, size)` on all cores.
fn write_xml_files(seed: u64, jobs: &[(PathBuf, u64, usize)]) -> Result<(), String> {
    let words = vocabulary();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let words = &words;
                s.spawn(move || -> Result<(), String> {
                    let mut buf = String::new();
                    for (path, index, size) in jobs.iter().skip(t).step_by(threads) {
                        xml(seed, *index, *size, words, &mut buf);
                        write_file(path, buf.as_bytes())?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| "a writer thread panicked".to_owned())?
        })
    })
}

fn json_str(s: &str) -> String {
    // Names here are ASCII without quotes or backslashes; no escaping is needed.
    format!("\"{s}\"")
}

/// A credential record of one of the four types, with all its secrets filled in.
fn credential(name: &str, i: u64, include: bool, rng: &mut Rng) -> String {
    let secret = |rng: &mut Rng| format!("s3cr3t-{:016x}{:016x}", rng.next(), rng.next());
    let head = format!(
        "{{\n  \"name\": {},\n  \"description\": \"bench credential {i}\",\n  \"include_in_deployment\": {include},\n",
        json_str(name)
    );
    let body = match i % 4 {
        0 => format!(
            "  \"type\": \"password\",\n  \"username\": \"svc-{i}\",\n  \"password\": \"{}\",\n  \"allow_usage_for\": [\"http\", \"job_execution\"]\n",
            secret(rng)
        ),
        1 => format!(
            "  \"type\": \"oauth2\",\n  \"grant_type\": \"client_credentials\",\n  \"token_endpoint\": \"https://idp.example.com/oauth2/token\",\n  \"client_id\": \"client-{i}\",\n  \"scope\": \"orders.read\",\n  \"client_secret\": \"{}\",\n  \"allow_usage_for\": [\"http\"]\n",
            secret(rng)
        ),
        2 => format!(
            "  \"type\": \"api_key\",\n  \"placement\": \"header\",\n  \"parameter_name\": \"X-API-Key\",\n  \"key\": \"{}\",\n  \"allow_usage_for\": [\"http\"]\n",
            secret(rng)
        ),
        _ => format!(
            "  \"type\": \"database\",\n  \"host\": \"db{i}.example.com\",\n  \"port\": 5432,\n  \"database\": \"stock\",\n  \"username\": \"writer{i}\",\n  \"driver\": \"postgresql\",\n  \"password\": \"{}\",\n  \"allow_usage_for\": [\"database\"]\n",
            secret(rng)
        ),
    };
    format!("{head}{body}}}\n")
}

/// `project`: a flowpack project of `--files` XML-like files totalling `--bytes`, listed by
/// `--mappings` mapping definitions, plus `--credentials` credential records (half of them
/// with `include_in_deployment`), each mapping referencing up to four of them.
pub fn project(o: &Opts) -> Result<(), String> {
    let dir = PathBuf::from(o.str("dir")?);
    let bytes = o.num("bytes")?;
    let files = o.num("files")?.max(1);
    let mappings = o.num("mappings")?.clamp(1, files);
    let ncreds = o.num("credentials")?;
    let seed = o.num_or("seed", 1)?;
    let sizes = sizes(seed, files, bytes);
    let owners = owners(files, mappings);
    let mut listed: Vec<Vec<String>> = vec![Vec::new(); mappings as usize];
    let mut jobs = Vec::with_capacity(files as usize);
    for i in 0..files {
        let m = owners[i as usize];
        let local = listed[m as usize].len();
        let rel = format!("files/d{:03}/f{i:06}.xml", local / 100);
        jobs.push((
            dir.join(format!("m{m:03}")).join(&rel),
            i,
            sizes[i as usize] as usize,
        ));
        listed[m as usize].push(rel);
    }
    write_xml_files(seed, &jobs)?;
    for (m, rels) in listed.iter().enumerate() {
        let mut params = vec![r#"{"name": "input", "type": "file", "required": true}"#.to_owned()];
        if ncreds > 0 {
            for k in 0..4u64.min(ncreds) {
                let c = (m as u64 * 4 + k) % ncreds;
                params.push(format!(
                    r#"{{"name": "cred{k}", "type": "credential", "credential": "c{c:04}"}}"#
                ));
            }
        }
        let list: Vec<String> = rels.iter().map(|r| json_str(r)).collect();
        let json = format!(
            "{{\n  \"name\": \"m{m:03}\",\n  \"description\": \"bench mapping {m}\",\n  \"parameters\": [\n    {}\n  ],\n  \"files\": [\n    {}\n  ]\n}}\n",
            params.join(",\n    "),
            list.join(",\n    ")
        );
        write_file(
            &dir.join(format!("m{m:03}/m{m:03}.mapping.json")),
            json.as_bytes(),
        )?;
    }
    let mut rng = Rng::new(seed, u64::MAX);
    for c in 0..ncreds {
        let name = format!("c{c:04}");
        let text = credential(&name, c, c % 2 == 0, &mut rng);
        write_file(
            &dir.join(format!("credentials/{name}.credential.json")),
            text.as_bytes(),
        )?;
    }
    Ok(())
}

/// `small`: `--files` files of exactly `--size` bytes, listed by `--mappings` mappings of equal
/// size; no credentials.
pub fn small(o: &Opts) -> Result<(), String> {
    let dir = PathBuf::from(o.str("dir")?);
    let files = o.num("files")?.max(1);
    let size = o.num("size")? as usize;
    let mappings = o.num("mappings")?.clamp(1, files);
    let seed = o.num_or("seed", 1)?;
    let per = files.div_ceil(mappings);
    let mut listed: Vec<Vec<String>> = vec![Vec::new(); mappings as usize];
    let mut jobs = Vec::with_capacity(files as usize);
    for i in 0..files {
        let m = i / per;
        let local = listed[m as usize].len();
        let rel = format!("files/d{:03}/f{i:06}.xml", local / 100);
        jobs.push((dir.join(format!("s{m:03}")).join(&rel), i, size));
        listed[m as usize].push(rel);
    }
    write_xml_files(seed, &jobs)?;
    for (m, rels) in listed.iter().enumerate() {
        let list: Vec<String> = rels.iter().map(|r| json_str(r)).collect();
        let json = format!(
            "{{\n  \"name\": \"s{m:03}\",\n  \"parameters\": [{{\"name\": \"input\", \"type\": \"file\"}}],\n  \"files\": [\n    {}\n  ]\n}}\n",
            list.join(",\n    ")
        );
        write_file(
            &dir.join(format!("s{m:03}/s{m:03}.mapping.json")),
            json.as_bytes(),
        )?;
    }
    Ok(())
}

/// `creds`: `--count` credential records `PREFIX000000.credential.json` … in `--dir`, of the
/// four types in turn; with `--secrets` they are included in deployments (and so sealed).
pub fn creds(o: &Opts) -> Result<(), String> {
    let dir = PathBuf::from(o.str("dir")?);
    let count = o.num("count")?;
    let prefix = o.str("prefix")?;
    let include = o.flag("secrets");
    let seed = o.num_or("seed", 1)?;
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut rng = Rng::new(seed, 0xC0FFEE);
    let mut list = fs::File::create(dir.join("list.txt")).map_err(|e| e.to_string())?;
    for i in 0..count {
        let name = format!("{prefix}{i:06}");
        let text = credential(&name, i, include, &mut rng);
        let file = format!("{name}.credential.json");
        fs::write(dir.join(&file), text).map_err(|e| format!("{file}: {e}"))?;
        writeln!(list, "{file}").map_err(|e| e.to_string())?;
    }
    Ok(())
}
