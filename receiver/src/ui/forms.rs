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

/// An uploaded file and the text fields sent with it.
#[derive(Debug, Default)]
pub struct Upload {
    /// The text fields.
    pub form: Form,
    /// The content of the file field named as asked, if one was sent.
    pub file: Option<Vec<u8>>,
}

/// Reads a `multipart/form-data` body of at most `max_file` bytes of file and a little more
/// of framing; the file is the part named `file_field`.
pub async fn multipart(
    app: &App,
    req: Request<Incoming>,
    file_field: &str,
    max_file: u64,
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
    let body = read_body(app, req, max_file.saturating_add(MULTIPART_SLACK)).await?;
    parse_multipart(&body, &boundary, file_field)
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

/// Splits a multipart body into its text fields and the file part named `file_field`.
fn parse_multipart(body: &[u8], boundary: &str, file_field: &str) -> Result<Upload, Problem> {
    let first = format!("--{boundary}");
    let delim = format!("\r\n--{boundary}");
    let mut rest = body
        .strip_prefix(first.as_bytes())
        .ok_or_else(|| bad_multipart("it does not start with its boundary"))?;
    let mut out = Upload::default();
    loop {
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or_else(|| bad_multipart("a boundary is not followed by a line end"))?;
        let head_end =
            find(rest, b"\r\n\r\n").ok_or_else(|| bad_multipart("a part has no end of headers"))?;
        let headers = std::str::from_utf8(&rest[..head_end])
            .map_err(|_| bad_multipart("a part's headers are not text"))?;
        let content_start = &rest[head_end + 4..];
        let end = find(content_start, delim.as_bytes())
            .ok_or_else(|| bad_multipart("a part has no closing boundary"))?;
        let content = &content_start[..end];
        rest = &content_start[end + delim.len()..];
        let name = disposition_param(headers, "name")
            .ok_or_else(|| bad_multipart("a part has no name"))?;
        if name == file_field {
            out.file = Some(content.to_vec());
        } else {
            let text = std::str::from_utf8(content)
                .map_err(|_| bad_multipart("a text field is not UTF-8"))?;
            out.form
                .fields
                .push((name, Zeroizing::new(text.to_owned())));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn multipart_gives_fields_and_the_file_byte_for_byte() {
        let b = "XyZ";
        let body = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nabc\r\n--{b}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"a.fpk\"\r\nContent-Type: application/octet-stream\r\n\r\nPK\r\n\x00\x01--{b}x\r\n--{b}--\r\n"
        );
        let u = parse_multipart(body.as_bytes(), b, "bundle").unwrap();
        assert_eq!(u.form.get("csrf"), Some("abc"));
        assert_eq!(
            u.file.unwrap(),
            format!("PK\r\n\x00\x01--{b}x").into_bytes()
        );
        assert_eq!(
            boundary_of("multipart/form-data; boundary=\"XyZ\""),
            Some("XyZ".into())
        );
    }

    #[test]
    fn malformed_multipart_is_refused_naming_what_is_wrong() {
        for (body, why) in [
            ("nope", "does not start"),
            (
                "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx",
                "no closing",
            ),
            ("--B\r\nno end of headers", "no end of headers"),
            (
                "--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--",
                "no name",
            ),
        ] {
            let e = parse_multipart(body.as_bytes(), "B", "f").unwrap_err();
            assert!(e.detail.contains(why), "{body:?}: {}", e.detail);
        }
    }
}
