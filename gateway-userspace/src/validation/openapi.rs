//! Loads an OpenAPI 3.0 or 3.1 document (YAML or JSON) into operations: path template,
//! method, parameters with compiled schemas, request body media types and schemas.
//!
//! Schemas are compiled with the document as their root, so `$ref`s within the document
//! (`#/components/schemas/Order`) resolve; references to other files or URLs are refused at
//! load time (nothing is fetched). OpenAPI 3.1 schemas are JSON Schema 2020-12; OpenAPI 3.0
//! schema objects are compiled as draft 4 after `nullable: true` is rewritten to a `null` type
//! (see docs/validation.md for the deviations).

use std::sync::Arc;

use http::{HeaderMap, Method};
use serde_json::{Map, Value};

use super::{Failure, Schema, schema_failures};

/// Why a document cannot be used; `at` is where inside it (a line or a JSON pointer).
#[derive(Debug, thiserror::Error)]
#[error("{at}{reason}")]
pub struct DocumentError {
    pub at: String,
    pub reason: String,
}

impl DocumentError {
    fn at(pointer: &str, reason: impl Into<String>) -> Self {
        Self {
            at: if pointer.is_empty() {
                String::new()
            } else {
                format!("at `{pointer}`: ")
            },
            reason: reason.into(),
        }
    }
}

/// Which schema dialect the document's schemas use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAPI 3.0 schema objects (draft 4 based, with `nullable`).
    OpenApi30,
    /// JSON Schema 2020-12 (OpenAPI 3.1, and plain body schemas).
    Draft202012,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamIn {
    Path,
    Query,
    Header,
    Cookie,
}

impl ParamIn {
    fn as_str(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Query => "query",
            Self::Header => "header",
            Self::Cookie => "cookie",
        }
    }
}

#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub location: ParamIn,
    pub required: bool,
    /// The schema's type, to turn the string into a JSON value before validation.
    ty: Option<String>,
    item_ty: Option<String>,
    /// Arrays in one value separated by commas (`explode: false`, and always for headers).
    comma_separated: bool,
    schema: Option<Arc<Schema>>,
}

/// One path segment of a template: `literal`, or `prefix{name}suffix`.
#[derive(Debug)]
enum Segment {
    Literal(String),
    Param {
        prefix: String,
        name: String,
        suffix: String,
    },
}

#[derive(Debug)]
pub struct Operation {
    pub method: Method,
    pub template: String,
    segments: Vec<Segment>,
    params: Vec<Param>,
    pub body_required: bool,
    /// Media ranges of `requestBody.content`, lower case, with their schemas.
    pub media: Vec<(String, Option<Arc<Schema>>)>,
    /// The documented responses; empty unless loaded with [`Parts::Responses`].
    pub responses: Vec<Response>,
}

/// Which status codes a documented response covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKey {
    Exact(u16),
    /// `2XX`: the hundreds digit.
    Class(u16),
    Default,
}

/// One entry of an operation's `responses`.
#[derive(Debug)]
pub struct Response {
    pub status: StatusKey,
    /// Media ranges of its `content`, lower case, with their schemas.
    pub media: Media,
}

/// What [`operations`] compiles: request validation needs parameters and request bodies,
/// response validation needs the responses too (their schemas cost compile time and memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parts {
    Requests,
    Responses,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Parses YAML or JSON (JSON is YAML; the YAML reader also gives line and column).
pub fn parse(text: &str) -> Result<Value, DocumentError> {
    let yaml: serde_norway::Value = serde_norway::from_str(text).map_err(|e| DocumentError {
        at: e
            .location()
            .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
            .unwrap_or_default(),
        reason: e.to_string(),
    })?;
    yaml_to_json(yaml, 0)
}

/// YAML allows non-string keys (`200:` in responses); JSON does not: keys become strings.
fn yaml_to_json(v: serde_norway::Value, depth: usize) -> Result<Value, DocumentError> {
    use serde_norway::Value as Y;
    if depth > 128 {
        return Err(DocumentError::at("", "the document is nested too deeply"));
    }
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(|i| yaml_to_json(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    _ => return Err(DocumentError::at("", "a mapping key is not a scalar")),
                };
                out.insert(key, yaml_to_json(v, depth + 1)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value, depth + 1)?,
    })
}

/// Compiles a schema with `root` as its document (for `$ref`s within it).
pub fn compile(
    root: &Value,
    pointer: &str,
    dialect: Dialect,
) -> Result<Arc<Schema>, DocumentError> {
    let Some(schema) = root.pointer(pointer) else {
        return Err(DocumentError::at(pointer, "no schema there"));
    };
    let draft = match dialect {
        Dialect::OpenApi30 => jsonschema::Draft::Draft4,
        Dialect::Draft202012 => jsonschema::Draft::Draft202012,
    };
    // A schema without references compiles alone; one with references compiles as a `$ref`
    // to its place in the whole document, so every local reference resolves.
    let compiled = if pointer.is_empty() || !has_ref(schema) {
        schema.clone()
    } else {
        let mut wrapper = root.as_object().cloned().unwrap_or_default();
        wrapper.insert(
            "$ref".into(),
            Value::String(format!("#{}", uri_fragment(pointer))),
        );
        wrapper.remove("$schema");
        wrapper.remove("$id");
        Value::Object(wrapper)
    };
    jsonschema::options()
        .with_draft(draft)
        .should_validate_formats(true)
        .build(&compiled)
        .map(|v| Arc::new(Schema(v)))
        .map_err(|e| DocumentError::at(pointer, format!("invalid schema: {e}")))
}

/// A JSON pointer as a URI fragment: path templates' `{` and `}` must be percent-encoded.
fn uri_fragment(pointer: &str) -> String {
    let mut out = String::with_capacity(pointer.len());
    for b in pointer.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn has_ref(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("$ref") || m.values().any(has_ref),
        Value::Array(a) => a.iter().any(has_ref),
        _ => false,
    }
}

/// The operations of an OpenAPI document.
pub fn operations(mut doc: Value, parts: Parts) -> Result<Vec<Operation>, DocumentError> {
    let version = doc
        .get("openapi")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            DocumentError::at(
                "",
                "not an OpenAPI 3 document (no `openapi` version; Swagger 2.0 is not supported)",
            )
        })?
        .to_string();
    let dialect = if version.starts_with("3.0") {
        Dialect::OpenApi30
    } else if version.starts_with("3.1") {
        Dialect::Draft202012
    } else {
        return Err(DocumentError::at(
            "/openapi",
            format!("OpenAPI version `{version}` is not supported (3.0 or 3.1)"),
        ));
    };
    if dialect == Dialect::OpenApi30 {
        rewrite_nullable(&mut doc, 0);
    }
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Err(DocumentError::at("", "the document has no `paths` object"));
    };
    let mut ops = Vec::new();
    for (template, item) in paths {
        let item_ptr = format!("/paths/{}", escape(template));
        let item_ptr = resolve_ptr(&doc, &item_ptr, item)?;
        let segments = segments(template).map_err(|r| DocumentError::at(&item_ptr, r))?;
        let item = doc.pointer(&item_ptr).cloned().unwrap_or(Value::Null);
        let shared = item.get("parameters").and_then(Value::as_array);
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let op_ptr = format!("{item_ptr}/{m}");
            let mut params = Vec::new();
            let own = op.get("parameters").and_then(Value::as_array);
            // Operation parameters override path-item ones with the same name and location.
            for (list, base) in [
                (own, format!("{op_ptr}/parameters")),
                (shared, format!("{item_ptr}/parameters")),
            ] {
                for (i, p) in list.into_iter().flatten().enumerate() {
                    let ptr = resolve_ptr(&doc, &format!("{base}/{i}"), p)?;
                    if let Some(param) = param(&doc, &ptr, dialect)?
                        && !params.iter().any(|q: &Param| {
                            q.name.eq_ignore_ascii_case(&param.name) && q.location == param.location
                        })
                    {
                        params.push(param);
                    }
                }
            }
            for s in &segments {
                if let Segment::Param { name, .. } = s
                    && !params
                        .iter()
                        .any(|p| p.location == ParamIn::Path && &p.name == name)
                {
                    return Err(DocumentError::at(
                        &op_ptr,
                        format!("the path parameter `{name}` is not declared"),
                    ));
                }
            }
            let (body_required, media) = match op.get("requestBody") {
                Some(b) => {
                    let ptr = resolve_ptr(&doc, &format!("{op_ptr}/requestBody"), b)?;
                    request_body(&doc, &ptr, dialect)?
                }
                None => (false, Vec::new()),
            };
            let responses = match (parts, op.get("responses")) {
                (Parts::Responses, Some(r)) => {
                    let ptr = resolve_ptr(&doc, &format!("{op_ptr}/responses"), r)?;
                    responses(&doc, &ptr, dialect)?
                }
                _ => Vec::new(),
            };
            ops.push(Operation {
                method: Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .unwrap_or(Method::GET),
                template: template.clone(),
                segments: segments_clone(&segments),
                params,
                body_required,
                media,
                responses,
            });
        }
    }
    // Concrete paths match before templated ones (`/orders/mine` before `/orders/{id}`).
    ops.sort_by_key(|o| {
        o.segments
            .iter()
            .filter(|s| matches!(s, Segment::Param { .. }))
            .count()
    });
    Ok(ops)
}

fn segments_clone(s: &[Segment]) -> Vec<Segment> {
    s.iter()
        .map(|s| match s {
            Segment::Literal(l) => Segment::Literal(l.clone()),
            Segment::Param {
                prefix,
                name,
                suffix,
            } => Segment::Param {
                prefix: prefix.clone(),
                name: name.clone(),
                suffix: suffix.clone(),
            },
        })
        .collect()
}

fn segments(template: &str) -> Result<Vec<Segment>, String> {
    if !template.starts_with('/') {
        return Err(format!("the path `{template}` does not start with `/`"));
    }
    template
        .split('/')
        .skip(1)
        .map(|seg| match seg.split_once('{') {
            None if !seg.contains('}') => Ok(Segment::Literal(seg.to_string())),
            Some((prefix, rest)) => match rest.split_once('}') {
                Some((name, suffix)) if !name.is_empty() && !suffix.contains(['{', '}']) => {
                    Ok(Segment::Param {
                        prefix: prefix.to_string(),
                        name: name.to_string(),
                        suffix: suffix.to_string(),
                    })
                }
                _ => Err(format!(
                    "the path `{template}` has a malformed template segment (one `{{name}}` per \
                     segment)"
                )),
            },
            None => Err(format!("the path `{template}` has an unmatched `}}`")),
        })
        .collect()
}

/// Follows `$ref` (within the document) from `v` at `ptr`; returns the final pointer.
fn resolve_ptr(doc: &Value, ptr: &str, v: &Value) -> Result<String, DocumentError> {
    let mut ptr = ptr.to_string();
    let mut v = v;
    for _ in 0..32 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return Ok(ptr);
        };
        let Some(target) = r.strip_prefix('#') else {
            return Err(DocumentError::at(
                &ptr,
                format!("`$ref: {r}` points outside the document (only `#/...` is supported)"),
            ));
        };
        v = doc
            .pointer(target)
            .ok_or_else(|| DocumentError::at(&ptr, format!("`$ref: {r}` points to nothing")))?;
        ptr = target.to_string();
    }
    Err(DocumentError::at(&ptr, "`$ref` chain too long or circular"))
}

fn param(doc: &Value, ptr: &str, dialect: Dialect) -> Result<Option<Param>, DocumentError> {
    let p = doc.pointer(ptr).unwrap_or(&Value::Null);
    let name = p
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| DocumentError::at(ptr, "a parameter needs a `name`"))?;
    let location = match p.get("in").and_then(Value::as_str) {
        Some("path") => ParamIn::Path,
        Some("query") => ParamIn::Query,
        Some("header") => ParamIn::Header,
        Some("cookie") => ParamIn::Cookie,
        _ => {
            return Err(DocumentError::at(
                ptr,
                "a parameter's `in` must be path, query, header or cookie",
            ));
        }
    };
    // OpenAPI: these headers are described elsewhere and their parameters are ignored.
    if location == ParamIn::Header
        && ["accept", "content-type", "authorization"].contains(&name.to_ascii_lowercase().as_str())
    {
        return Ok(None);
    }
    let required =
        location == ParamIn::Path || p.get("required").and_then(Value::as_bool).unwrap_or(false);
    let (mut ty, mut item_ty, mut schema) = (None, None, None);
    if let Some(s) = p.get("schema") {
        let sptr = format!("{ptr}/schema");
        let resolved = resolve_ptr(doc, &sptr, s)?;
        let target = doc.pointer(&resolved).unwrap_or(&Value::Null);
        ty = type_of(target);
        item_ty = target.get("items").and_then(|i| {
            let iptr = resolve_ptr(doc, &format!("{resolved}/items"), i).ok()?;
            type_of(doc.pointer(&iptr)?)
        });
        schema = Some(compile(doc, &sptr, dialect)?);
    }
    let style_form = location == ParamIn::Query;
    let explode = p
        .get("explode")
        .and_then(Value::as_bool)
        .unwrap_or(style_form);
    Ok(Some(Param {
        name: name.to_string(),
        location,
        required,
        ty,
        item_ty,
        comma_separated: !explode,
        schema,
    }))
}

/// The first non-null `type` of a schema.
fn type_of(schema: &Value) -> Option<String> {
    match schema.get("type")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .map(str::to_string),
        _ => None,
    }
}

/// Media ranges (lower case) with the schema of each, when it has one.
pub type Media = Vec<(String, Option<Arc<Schema>>)>;

fn request_body(doc: &Value, ptr: &str, dialect: Dialect) -> Result<(bool, Media), DocumentError> {
    let b = doc.pointer(ptr).unwrap_or(&Value::Null);
    let required = b.get("required").and_then(Value::as_bool).unwrap_or(false);
    let mut media = Vec::new();
    if let Some(content) = b.get("content").and_then(Value::as_object) {
        for (range, m) in content {
            let schema = match m.get("schema") {
                Some(_) => Some(compile(
                    doc,
                    &format!("{ptr}/content/{}/schema", escape(range)),
                    dialect,
                )?),
                None => None,
            };
            media.push((range.to_ascii_lowercase(), schema));
        }
    }
    Ok((required, media))
}

/// The `responses` object at `ptr`: status keys (`200`, `2XX`, `default`) with their media.
fn responses(doc: &Value, ptr: &str, dialect: Dialect) -> Result<Vec<Response>, DocumentError> {
    let Some(map) = doc.pointer(ptr).and_then(Value::as_object) else {
        return Err(DocumentError::at(ptr, "`responses` must be an object"));
    };
    let mut out = Vec::new();
    for (key, r) in map {
        // Specification extensions (`x-...`) are not responses.
        if key.starts_with("x-") {
            continue;
        }
        let status = status_key(key).ok_or_else(|| {
            DocumentError::at(
                ptr,
                format!("`{key}` is not a status code, a range such as `2XX`, or `default`"),
            )
        })?;
        let rptr = resolve_ptr(doc, &format!("{ptr}/{}", escape(key)), r)?;
        let mut media = Vec::new();
        let content = doc.pointer(&rptr).and_then(|r| r.get("content"));
        if let Some(content) = content.and_then(Value::as_object) {
            for (range, m) in content {
                let schema = match m.get("schema") {
                    Some(_) => Some(compile(
                        doc,
                        &format!("{rptr}/content/{}/schema", escape(range)),
                        dialect,
                    )?),
                    None => None,
                };
                media.push((range.to_ascii_lowercase(), schema));
            }
        }
        out.push(Response { status, media });
    }
    Ok(out)
}

fn status_key(key: &str) -> Option<StatusKey> {
    if key == "default" {
        return Some(StatusKey::Default);
    }
    let b = key.as_bytes();
    if b.len() != 3 || !(b'1'..=b'5').contains(&b[0]) {
        return None;
    }
    if b[1..].eq_ignore_ascii_case(b"XX") {
        return Some(StatusKey::Class(u16::from(b[0] - b'0')));
    }
    key.parse().ok().map(StatusKey::Exact)
}

impl Operation {
    /// The documented response for `status`: the exact code, else its class (`2XX`), else
    /// `default`.
    pub fn response_for(&self, status: u16) -> Option<&Response> {
        let find = |k: StatusKey| self.responses.iter().find(|r| r.status == k);
        find(StatusKey::Exact(status))
            .or_else(|| find(StatusKey::Class(status / 100)))
            .or_else(|| find(StatusKey::Default))
    }
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// OpenAPI 3.0 `nullable: true` means "also null": draft 4 says it with a type list (and a
/// `null` in an `enum`).
fn rewrite_nullable(v: &mut Value, depth: usize) {
    if depth > 256 {
        return;
    }
    match v {
        Value::Object(m) => {
            if m.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = m.get("type").cloned() {
                    m.insert("type".into(), serde_json::json!([t, "null"]));
                }
                if let Some(Value::Array(e)) = m.get_mut("enum")
                    && !e.contains(&Value::Null)
                {
                    e.push(Value::Null);
                }
            }
            for child in m.values_mut() {
                rewrite_nullable(child, depth + 1);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_nullable(c, depth + 1)),
        _ => {}
    }
}

impl Operation {
    /// The path parameters' raw values when `path` matches the template.
    pub fn match_path<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut values = Vec::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Segment::Literal(l) => {
                    if l != part {
                        return None;
                    }
                }
                Segment::Param {
                    prefix,
                    name,
                    suffix,
                } => {
                    let value = part
                        .strip_prefix(prefix.as_str())?
                        .strip_suffix(suffix.as_str())?;
                    if value.is_empty() {
                        return None;
                    }
                    values.push((name.as_str(), value));
                }
            }
        }
        Some(values)
    }

    /// Checks the parameters: required ones present, each value valid for its schema.
    pub fn check_params(
        &self,
        path_values: &[(&str, &str)],
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Vec<Failure> {
        let query: Vec<(String, String)> = query
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (decode(k, true), decode(v, true))
            })
            .collect();
        let mut failures = Vec::new();
        for p in &self.params {
            let raw: Vec<String> = match p.location {
                ParamIn::Path => path_values
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| decode(v, false))
                    .collect(),
                ParamIn::Query => query
                    .iter()
                    .filter(|(k, _)| *k == p.name)
                    .map(|(_, v)| v.clone())
                    .collect(),
                ParamIn::Header => headers
                    .get_all(p.name.as_str())
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect(),
                ParamIn::Cookie => cookies(headers, &p.name),
            };
            let location = format!("{}:{}", p.location.as_str(), p.name);
            if raw.is_empty() {
                if p.required {
                    failures.push(Failure::new(location, "required parameter is missing"));
                }
                continue;
            }
            let Some(schema) = &p.schema else { continue };
            let value = p.value(raw);
            failures.extend(schema_failures(schema, &value, &location));
        }
        failures
    }
}

impl Param {
    /// The parameter's strings as the JSON value its schema describes: numbers and booleans
    /// parsed (left as strings when they do not parse, so the schema reports the type).
    fn value(&self, raw: Vec<String>) -> Value {
        if self.ty.as_deref() == Some("array") {
            let items = raw.iter().flat_map(|r| {
                if self.comma_separated || self.location == ParamIn::Header {
                    r.split(',').map(str::to_string).collect::<Vec<_>>()
                } else {
                    vec![r.clone()]
                }
            });
            return Value::Array(
                items
                    .map(|i| scalar(self.item_ty.as_deref(), i.trim()))
                    .collect(),
            );
        }
        // A repeated scalar parameter: the first one counts (as most frameworks read it).
        scalar(self.ty.as_deref(), raw[0].trim())
    }
}

/// The values of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4: pairs
/// separated by `;`, an h2 client may split them over several headers).
fn cookies(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
        })
        .collect()
}

fn scalar(ty: Option<&str>, s: &str) -> Value {
    match ty {
        Some("integer") => s
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.to_string())),
        Some("number") => s
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.to_string()), Value::Number),
        Some("boolean") => match s {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(s.to_string()),
        },
        _ => Value::String(s.to_string()),
    }
}

/// Percent-decoding (and `+` as space in queries); invalid escapes are kept as written.
fn decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
openapi: 3.0.3
info: {title: t, version: "1"}
paths:
  /orders/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: integer, minimum: 1}}
    get:
      parameters:
        - {name: expand, in: query, schema: {type: boolean}}
        - {name: session, in: cookie, required: true, schema: {type: string, pattern: '^[a-f0-9]{8}$'}}
      responses:
        200: {description: ok}
  /orders/mine:
    get:
      responses: {200: {description: ok}}
  /orders:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Order'}
      responses: {201: {description: ok}}
components:
  schemas:
    Order:
      type: object
      required: [item]
      properties:
        item: {type: string}
        note: {type: string, nullable: true}
"#;

    #[test]
    fn operations_match_by_template_and_method() {
        let ops = operations(parse(DOC).expect("parse"), Parts::Requests).expect("ops");
        let find = |m: &Method, p: &str| {
            ops.iter()
                .find(|o| o.method == *m && o.match_path(p).is_some())
                .map(|o| o.template.as_str())
        };
        assert_eq!(find(&Method::GET, "/orders/mine"), Some("/orders/mine"));
        assert_eq!(find(&Method::GET, "/orders/7"), Some("/orders/{id}"));
        assert_eq!(find(&Method::POST, "/orders"), Some("/orders"));
        assert_eq!(find(&Method::DELETE, "/orders/7"), None);
        assert_eq!(find(&Method::GET, "/orders/7/x"), None);
    }

    #[test]
    fn parameters_are_parsed_to_their_types() {
        let ops = operations(parse(DOC).expect("parse"), Parts::Requests).expect("ops");
        let op = ops
            .iter()
            .find(|o| o.template == "/orders/{id}")
            .expect("op");
        let mut h = HeaderMap::new();
        h.insert("cookie", "theme=dark; session=0a1b2c3d".parse().unwrap());
        assert!(
            op.check_params(&[("id", "7")], Some("expand=true"), &h)
                .is_empty()
        );
        let f = op.check_params(&[("id", "x")], Some("expand=maybe"), &h);
        let at: Vec<&str> = f.iter().map(|f| f.location.as_str()).collect();
        assert_eq!(at, ["query:expand", "path:id"]);
        let f = op.check_params(&[("id", "0")], None, &h);
        assert_eq!(f[0].reason, "must be at least 1");
        // Cookies: a missing required one, and one that fails its pattern.
        let f = op.check_params(&[("id", "7")], None, &HeaderMap::new());
        assert_eq!(f[0].location, "cookie:session");
        assert_eq!(f[0].reason, "required parameter is missing");
        h.insert("cookie", "session=not-hex!".parse().unwrap());
        let f = op.check_params(&[("id", "7")], None, &h);
        assert_eq!(f[0].location, "cookie:session");
        assert_eq!(f[0].reason, "does not match the required pattern");
    }

    #[test]
    fn nullable_and_refs_in_openapi_30() {
        let ops = operations(parse(DOC).expect("parse"), Parts::Requests).expect("ops");
        let op = ops.iter().find(|o| o.method == Method::POST).expect("op");
        let schema = op.media[0].1.as_ref().expect("schema");
        let ok = serde_json::json!({"item": "a", "note": null});
        assert!(schema_failures(schema, &ok, "").is_empty());
        let bad = serde_json::json!({"note": 3});
        let f = schema_failures(schema, &bad, "");
        assert!(f.iter().any(|f| f.location == "/item"), "{f:?}");
        assert!(f.iter().any(|f| f.location == "/note"), "{f:?}");
    }

    #[test]
    fn broken_documents_are_errors_not_panics() {
        for doc in [
            "",
            "[",
            "openapi: 2.0\npaths: {}",
            "swagger: '2.0'",
            "openapi: 3.1.0\npaths:\n  /a/{x}:\n    get: {}\n",
            "openapi: 3.1.0\npaths:\n  /a:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: {$ref: 'other.yaml#/X'}\n",
            "openapi: 3.1.0\npaths:\n  /a:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: {type: 12}\n",
            "openapi: 3.1.0\npaths:\n  a{:\n    get: {}\n",
        ] {
            let r = parse(doc).and_then(|d| operations(d, Parts::Responses));
            assert!(r.is_err(), "{doc}");
        }
    }

    #[test]
    fn decoding_never_panics() {
        assert_eq!(decode("a%20b+c", true), "a b c");
        assert_eq!(decode("%", true), "%");
        assert_eq!(decode("%4", true), "%4");
        assert_eq!(decode("%zz", true), "%zz");
        assert_eq!(decode("%41", false), "A");
    }
}
