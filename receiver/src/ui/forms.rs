//! What a browser sends the admin page, parsed: cookies, `application/x-www-form-urlencoded`
//! form bodies and the one `multipart/form-data` form (a bundle's upload), each read within a
//! bound before it is parsed.

use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, StatusCode};
use zeroize::Zeroizing;

use crate::App;
use crate::api::{declared_length, next_frame};
use crate::problem::{Problem, ProblemCode};
use crate::service::upload::Spooled;

/// Largest urlencoded form body.
const MAX_FORM: usize = 64 * 1024;

/// Room for the multipart framing and the small fields around an uploaded bundle.
const MULTIPART_SLACK: u64 = 64 * 1024;

/// The value of cookie `name`, if the request carries it.
pub fn cookie(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The request's media type, lower case, without parameters.
fn media_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn too_large(max: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ProblemCode::TooLarge,
        format!("the form is larger than {max} bytes"),
    )
}

/// Reads the body, at most `max` bytes (the declared length is checked first).
async fn read_body(
    app: &App,
    req: Request<Incoming>,
    max: u64,
) -> Result<Zeroizing<Vec<u8>>, Problem> {
    if declared_length(&req).is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let mut body = req.into_body();
    let mut out = Zeroizing::new(Vec::new());
    while let Some(frame) = next_frame(app, &mut body).await {
        if let Ok(data) = frame?.into_data() {
            if (out.len() + data.len()) as u64 > max {
                return Err(too_large(max));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// A submitted form's fields, in order. Values may be secrets: they are wiped on drop.
#[derive(Default)]
pub struct Form {
    fields: Vec<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a value may be a secret.
        f.debug_list()
            .entries(self.fields.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Form {
    /// The first value of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parses an urlencoded body.
    pub fn parse(body: &[u8]) -> Form {
        Form {
            fields: url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
                .collect(),
        }
    }
}

/// Reads an `application/x-www-form-urlencoded` body.
pub async fn urlencoded(app: &App, req: Request<Incoming>) -> Result<Form, Problem> {
    if media_type(&req) != "application/x-www-form-urlencoded" {
        return Err(unsupported("application/x-www-form-urlencoded"));
    }
    let body = read_body(app, req, MAX_FORM as u64).await?;
    Ok(Form::parse(&body))
}

fn unsupported(what: &str) -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ProblemCode::UnsupportedMediaType,
        format!("this form is sent as {what}"),
    )
}

/// An uploaded file, spooled.
#[derive(Debug)]
pub struct Upload {
    /// The file field's content (empty when no file was chosen).
    pub file: Spooled,
    /// How many bytes the file has.
    pub size: u64,
}

/// Reads a `multipart/form-data` body whose file part, named `file_field`, is streamed to a
/// spool file (at most `max_file` bytes); the text fields must come before it, and
/// `before_file` checks them (the CSRF token) before a byte of the file is written.
pub async fn multipart(
    app: &App,
    req: Request<Incoming>,
    file_field: &str,
    max_file: u64,
    before_file: impl Fn(&Form) -> Result<(), Problem>,
) -> Result<Upload, Problem> {
    if media_type(&req) != "multipart/form-data" {
        return Err(unsupported("multipart/form-data"));
    }
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(boundary_of)
        .ok_or_else(|| bad_multipart("the Content-Type names no boundary"))?;
    let max = max_file.saturating_add(MULTIPART_SLACK);
    if declared_length(&req).is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let (spooled, mut file) = Spooled::create(app).await?;
    let mut parser = Multipart::new(&boundary, file_field);
    let mut body = req.into_body();
    let mut total: u64 = 0;
    let mut checked = false;
    while let Some(frame) = next_frame(app, &mut body).await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > max {
            return Err(too_large(max));
        }
        let out = parser.feed(&data)?;
        if !out.is_empty() || parser.in_file() {
            if !checked {
                before_file(&parser.form)?;
                checked = true;
            }
            file.write(&out).await?;
        }
    }
    if !parser.done() {
        return Err(bad_multipart("it ends before its closing boundary"));
    }
    if !checked {
        before_file(&parser.form)?;
    }
    file.finish().await?;
    Ok(Upload {
        file: spooled,
        size: parser.file_size,
    })
}

fn bad_multipart(why: &str) -> Problem {
    Problem::bad_request(
        ProblemCode::BodyRead,
        format!("the upload is not a valid form: {why}"),
    )
}

/// The `boundary` parameter of a multipart Content-Type.
fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case("boundary")
            .then(|| v.trim_matches('"').to_owned())
            .filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of parameter `key` of a Content-Disposition header (`name="x"`).
fn disposition_param(headers: &str, key: &str) -> Option<String> {
    let line = headers
        .split("\r\n")
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
    line.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k == key).then(|| v.trim_matches('"').to_owned())
    })
}

/// Largest part head, and largest text field.
const MAX_PART_HEAD: usize = 8 * 1024;
const MAX_TEXT_FIELD: usize = 8 * 1024;

/// Where a [`Multipart`] parser is.
#[derive(Debug, PartialEq, Eq)]
enum At {
    /// Before the first boundary.
    Start,
    /// After a boundary: `\r\n` (a part follows) or `--` (the end).
    AfterBoundary,
    /// In a part's head.
    Head,
    /// In a text field's content.
    Text(String),
    /// In the file's content.
    File,
    /// After the closing boundary.
    End,
}

/// A streaming `multipart/form-data` parser: fed the body chunk by chunk, it keeps the text
/// fields and hands back the file part's bytes as they become certain (never more than a
/// boundary's length is held back).
#[derive(Debug)]
struct Multipart {
    first: Vec<u8>,
    delim: Vec<u8>,
    file_field: String,
    buf: Vec<u8>,
    at: At,
    text: Vec<u8>,
    form: Form,
    file_seen: bool,
    file_size: u64,
}

impl Multipart {
    fn new(boundary: &str, file_field: &str) -> Multipart {
        Multipart {
            first: format!("--{boundary}").into_bytes(),
            delim: format!("\r\n--{boundary}").into_bytes(),
            file_field: file_field.to_owned(),
            buf: Vec::new(),
            at: At::Start,
            text: Vec::new(),
            form: Form::default(),
            file_seen: false,
            file_size: 0,
        }
    }

    fn in_file(&self) -> bool {
        self.at == At::File
    }

    fn done(&self) -> bool {
        self.at == At::End
    }

    /// Takes `chunk`; returns the file bytes it completed.
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Problem> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            match &self.at {
                At::Start => {
                    if self.buf.len() < self.first.len() {
                        return Ok(out);
                    }
                    if !self.buf.starts_with(&self.first) {
                        return Err(bad_multipart("it does not start with its boundary"));
                    }
                    self.buf.drain(..self.first.len());
                    self.at = At::AfterBoundary;
                }
                At::AfterBoundary => {
                    if self.buf.len() < 2 {
                        return Ok(out);
                    }
                    if self.buf.starts_with(b"--") {
                        self.buf.clear();
                        self.at = At::End;
                    } else if self.buf.starts_with(b"\r\n") {
                        self.buf.drain(..2);
                        self.at = At::Head;
                    } else {
                        return Err(bad_multipart("a boundary is not followed by a line end"));
                    }
                }
                At::Head => {
                    let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                        if self.buf.len() > MAX_PART_HEAD {
                            return Err(bad_multipart("a part has no end of headers"));
                        }
                        return Ok(out);
                    };
                    let head = std::str::from_utf8(&self.buf[..end])
                        .map_err(|_| bad_multipart("a part's headers are not text"))?;
                    let name = disposition_param(head, "name")
                        .ok_or_else(|| bad_multipart("a part has no name"))?;
                    self.buf.drain(..end + 4);
                    self.at = if name == self.file_field {
                        if self.file_seen {
                            return Err(bad_multipart("it has two files"));
                        }
                        self.file_seen = true;
                        At::File
                    } else {
                        At::Text(name)
                    };
                }
                At::Text(_) | At::File => {
                    let found = find(&self.buf, &self.delim);
                    // What is certainly content: up to the delimiter, or all but a possible
                    // start of one.
                    let take = found
                        .unwrap_or_else(|| self.buf.len().saturating_sub(self.delim.len() - 1));
                    let content: Vec<u8> = self.buf.drain(..take).collect();
                    if self.at == At::File {
                        self.file_size += content.len() as u64;
                        out.extend_from_slice(&content);
                    } else {
                        self.text.extend_from_slice(&content);
                        if self.text.len() > MAX_TEXT_FIELD {
                            return Err(bad_multipart("a text field is too long"));
                        }
                    }
                    if found.is_none() {
                        return Ok(out);
                    }
                    self.buf.drain(..self.delim.len());
                    if let At::Text(name) = std::mem::replace(&mut self.at, At::AfterBoundary) {
                        let text = String::from_utf8(std::mem::take(&mut self.text))
                            .map_err(|_| bad_multipart("a text field is not UTF-8"))?;
                        self.form.fields.push((name, Zeroizing::new(text)));
                    }
                }
                At::End => {
                    // The epilogue is ignored.
                    self.buf.clear();
                    return Ok(out);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Feeds `body` in chunks of `size`: the text fields and the file's bytes.
    fn parse(body: &[u8], size: usize) -> Result<(Form, Vec<u8>), Problem> {
        let mut p = Multipart::new("XyZ", "bundle");
        let mut file = Vec::new();
        for chunk in body.chunks(size) {
            file.extend(p.feed(chunk)?);
        }
        if !p.done() {
            return Err(bad_multipart("it ends before its closing boundary"));
        }
        Ok((p.form, file))
    }

    #[test]
    fn multipart_gives_fields_and_the_file_byte_for_byte_in_any_chunking() {
        let b = "XyZ";
        let body = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nabc\r\n--{b}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"a.fpk\"\r\nContent-Type: application/octet-stream\r\n\r\nPK\r\n\x00\x01--{b}x\r\n-\r\n--{b}--\r\n"
        );
        for size in [1, 2, 3, 7, 64, 4096] {
            let (form, file) = parse(body.as_bytes(), size).unwrap();
            assert_eq!(form.get("csrf"), Some("abc"), "chunks of {size}");
            assert_eq!(
                file,
                format!("PK\r\n\x00\x01--{b}x\r\n-").into_bytes(),
                "chunks of {size}"
            );
        }
        assert_eq!(
            boundary_of("multipart/form-data; boundary=\"XyZ\""),
            Some("XyZ".into())
        );
    }

    #[test]
    fn malformed_multipart_is_refused_naming_what_is_wrong() {
        let head = "Content-Disposition: form-data; name=\"bundle\"\r\n\r\n";
        for (body, why) in [
            ("nope-nope".to_owned(), "does not start"),
            (format!("--XyZ\r\n{head}x"), "ends before"),
            ("--XyZ\r\nno end of headers".to_owned(), "ends before"),
            (
                "--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--".to_owned(),
                "no name",
            ),
            (
                format!("--XyZ\r\n{head}a\r\n--XyZ\r\n{head}b\r\n--XyZ--"),
                "two files",
            ),
            (
                format!("--XyZ\r\n{}", "h".repeat(MAX_PART_HEAD + 10)),
                "no end of headers",
            ),
        ] {
            let e = parse(body.as_bytes(), 5).unwrap_err();
            assert!(e.detail.contains(why), "{body:?}: {}", e.detail);
        }
    }
}
