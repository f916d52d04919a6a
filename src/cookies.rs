//! Session-cookie files: the formats users export from their browser, parsed into one shape.
//!
//! Accepted: a JSON array as cookie-export extensions write it (`name`, `value`, `domain`,
//! `path`, `secure`, `httpOnly`, `expirationDate` or `expires`, `sameSite`), and Netscape
//! `cookies.txt` (tab-separated; `#HttpOnly_` prefix). A bad file gets an error that names the
//! line or the field. `poectl cookies import` parses here and sends the result to the daemon,
//! which puts the cookies into its profile through CDP.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One cookie, in the shape of the wire protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    #[serde(default = "root_path")]
    pub path: String,
    #[serde(default)]
    pub secure: bool,
    #[serde(default)]
    pub http_only: bool,
    /// Seconds since the epoch; absent for a session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<f64>,
    /// `Strict`, `Lax` or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<String>,
}

fn root_path() -> String {
    "/".into()
}

/// Parses a cookie file of either format (detected from its first non-blank character).
pub fn parse(text: &str) -> Result<Vec<Cookie>, String> {
    let cookies = if text.trim_start().starts_with('[') || text.trim_start().starts_with('{') {
        parse_json(text)?
    } else {
        parse_netscape(text)?
    };
    if cookies.is_empty() {
        return Err("the file holds no cookies".into());
    }
    Ok(cookies)
}

fn parse_json(text: &str) -> Result<Vec<Cookie>, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("not valid JSON: {e} (line {})", e.line()))?;
    // Some tools wrap the array: {"cookies": [...]}.
    let items = match &value {
        Value::Array(items) => items,
        Value::Object(map) => match map.get("cookies") {
            Some(Value::Array(items)) => items,
            _ => return Err("expected a JSON array of cookies (or {\"cookies\": [...]})".into()),
        },
        _ => return Err("expected a JSON array of cookies".into()),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            json_cookie(item).map_err(|e| format!("cookie #{} (index {i}): {e}", i + 1))
        })
        .collect()
}

fn json_cookie(item: &Value) -> Result<Cookie, String> {
    let text = |field: &str| -> Result<String, String> {
        match item.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("field \"{field}\" must be a string")),
            None => Err(format!("field \"{field}\" is missing")),
        }
    };
    let flag = |field: &str| item.get(field).and_then(Value::as_bool).unwrap_or(false);
    let name = text("name")?;
    if name.is_empty() {
        return Err("field \"name\" is empty".into());
    }
    let domain = text("domain")?;
    let session = flag("session");
    let expires = match item.get("expirationDate").or_else(|| item.get("expires")) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if t > 0.0 => Some(t),
            Some(_) => None,
            None => return Err("field \"expirationDate\" must be a number of seconds".into()),
        },
    };
    let same_site = match item.get("sameSite").and_then(Value::as_str) {
        None => None,
        Some(s) => match s.to_ascii_lowercase().as_str() {
            "strict" => Some("Strict".to_string()),
            "lax" => Some("Lax".to_string()),
            "none" | "no_restriction" => Some("None".to_string()),
            "unspecified" | "" => None,
            other => return Err(format!("field \"sameSite\" has an unknown value {other:?}")),
        },
    };
    Ok(Cookie {
        name,
        value: text("value")?,
        domain,
        path: item
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned(),
        secure: flag("secure"),
        http_only: flag("httpOnly"),
        expires: if session { None } else { expires },
        same_site,
    })
}

fn parse_netscape(text: &str) -> Result<Vec<Cookie>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let (line, http_only) = match raw.strip_prefix("#HttpOnly_") {
            Some(rest) => (rest, true),
            None => (raw, false),
        };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 7 {
            return Err(format!(
                "line {line_no}: expected 7 tab-separated fields (domain, subdomains, path, secure, expiry, name, value), found {}",
                fields.len()
            ));
        }
        let boolean = |i: usize, what: &str| match fields[i].to_ascii_uppercase().as_str() {
            "TRUE" => Ok(true),
            "FALSE" => Ok(false),
            other => Err(format!(
                "line {line_no}: field {what} must be TRUE or FALSE, not {other:?}"
            )),
        };
        boolean(1, "2 (include subdomains)")?;
        let secure = boolean(3, "4 (secure)")?;
        let expiry: f64 = fields[4].parse().map_err(|_| {
            format!(
                "line {line_no}: field 5 (expiry) must be a number of seconds, not {:?}",
                fields[4]
            )
        })?;
        if fields[5].is_empty() {
            return Err(format!("line {line_no}: field 6 (name) is empty"));
        }
        out.push(Cookie {
            name: fields[5].to_owned(),
            value: fields[6].to_owned(),
            domain: fields[0].to_owned(),
            path: fields[2].to_owned(),
            secure,
            http_only,
            expires: (expiry > 0.0).then_some(expiry),
            same_site: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_export_of_an_extension() {
        let text = r#"[
          {"domain": ".poe.com", "expirationDate": 1798000000.5, "hostOnly": false, "httpOnly": true,
           "name": "p-b", "path": "/", "sameSite": "no_restriction", "secure": true,
           "session": false, "storeId": "0", "value": "abc%3D%3D"},
          {"domain": "poe.com", "name": "p-lat", "value": "xyz", "session": true, "expirationDate": 5}
        ]"#;
        let c = parse(text).expect("valid");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name, "p-b");
        assert_eq!(c[0].value, "abc%3D%3D");
        assert!(c[0].http_only && c[0].secure);
        assert_eq!(c[0].expires, Some(1798000000.5));
        assert_eq!(c[0].same_site.as_deref(), Some("None"));
        assert_eq!((c[1].path.as_str(), c[1].expires), ("/", None));
    }

    #[test]
    fn netscape_cookies_txt() {
        let text = "# Netscape HTTP Cookie File\n\n.poe.com\tTRUE\t/\tTRUE\t1798000000\tp-b\tabc\n#HttpOnly_poe.com\tFALSE\t/\tFALSE\t0\tp-lat\txyz\n";
        let c = parse(text).expect("valid");
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].domain.as_str(), c[0].secure, c[0].expires),
            (".poe.com", true, Some(1798000000.0))
        );
        assert_eq!(
            (c[1].name.as_str(), c[1].http_only, c[1].expires),
            ("p-lat", true, None)
        );
    }

    #[test]
    fn errors_name_the_line_or_field() {
        let e = parse("poe.com\tTRUE\t/\tTRUE\t0\tp-b\n").expect_err("6 fields");
        assert!(e.starts_with("line 1:"), "{e}");
        let e = parse("# c\npoe.com\tMAYBE\t/\tTRUE\t0\tp-b\tv\n").expect_err("bad bool");
        assert!(
            e.starts_with("line 2:") && e.contains("TRUE or FALSE"),
            "{e}"
        );
        let e = parse("poe.com\tTRUE\t/\tTRUE\tsoon\tp-b\tv\n").expect_err("bad expiry");
        assert!(e.contains("expiry"), "{e}");
        let e = parse(r#"[{"name": "p-b", "value": "v"}]"#).expect_err("no domain");
        assert!(e.contains("cookie #1") && e.contains("\"domain\""), "{e}");
        let e = parse(r#"[{"name": "p-b", "value": 5, "domain": "x"}]"#).expect_err("value type");
        assert!(e.contains("\"value\" must be a string"), "{e}");
        let e = parse("[1, 2").expect_err("bad json");
        assert!(e.contains("not valid JSON"), "{e}");
        assert!(parse("# only comments\n").is_err());
    }
}
