//! JSON Schema (as OpenAI tools and `response_format` carry it) -> Gemini's `Schema`, a subset of
//! OpenAPI 3.0. Gemini refuses unknown keys, so only the ones its `Schema` object documents are
//! kept; `$ref`s to local `$defs`/`definitions` are inlined (Gemini has no references), type
//! unions with `null` become `nullable`, `oneOf` becomes `anyOf`, `const` a one-value `enum`, and
//! enums of other than strings (Gemini's are string-only) a note in the description.

use serde_json::{Map, Value};

/// Keys of Gemini's `Schema` object (ai.google.dev/api/caching#Schema) spelled as in JSON Schema.
/// `title` is left out: older models refuse it and it only documents.
const KEPT: &[&str] = &[
    "format",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "propertyOrdering",
    "default",
    "minimum",
    "maximum",
];

/// Deepest `$ref` chain followed: a recursive schema cannot be inlined.
const MAX_DEPTH: usize = 16;

/// The Gemini form of `schema`; `None` when it has a recursive reference.
pub fn convert(schema: &Value) -> Option<Value> {
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .cloned()
        .unwrap_or(Value::Null);
    convert_at(schema, &defs, 0)
}

fn resolve<'a>(reference: &str, defs: &'a Value) -> Option<&'a Value> {
    let name = reference
        .strip_prefix("#/$defs/")
        .or_else(|| reference.strip_prefix("#/definitions/"))?;
    defs.get(name)
}

fn gemini_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "string" => "STRING",
        "number" => "NUMBER",
        "integer" => "INTEGER",
        "boolean" => "BOOLEAN",
        "array" => "ARRAY",
        "object" => "OBJECT",
        "null" => "NULL",
        _ => return None,
    })
}

fn convert_at(schema: &Value, defs: &Value, depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    let Value::Object(s) = schema else {
        // `true` / `{}`: anything goes, which Gemini spells as no constraint at all.
        return Some(Value::Object(Map::new()));
    };
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let target = resolve(r, defs)?;
        let mut out = convert_at(target, defs, depth + 1)?;
        // Sibling keys (a description next to the reference) describe this use of it.
        if let (Some(d), Some(o)) = (s.get("description"), out.as_object_mut()) {
            o.insert("description".into(), d.clone());
        }
        return Some(out);
    }
    let mut out = Map::new();
    let mut nullable = false;
    match s.get("type") {
        Some(Value::String(t)) => {
            if let Some(t) = gemini_type(t) {
                out.insert("type".into(), t.into());
            }
        }
        Some(Value::Array(types)) => {
            let mut named = Vec::new();
            for t in types.iter().filter_map(Value::as_str) {
                if t == "null" {
                    nullable = true;
                } else if let Some(g) = gemini_type(t) {
                    named.push(g);
                }
            }
            match named.as_slice() {
                [one] => {
                    out.insert("type".into(), (*one).into());
                }
                [] => {}
                many => {
                    let any = many
                        .iter()
                        .map(|t| {
                            let mut m = Map::new();
                            m.insert("type".into(), (*t).into());
                            Value::Object(m)
                        })
                        .collect();
                    out.insert("anyOf".into(), Value::Array(any));
                }
            }
        }
        _ => {}
    }
    for key in KEPT {
        if let Some(v) = s.get(*key) {
            out.insert((*key).into(), v.clone());
        }
    }
    if let Some(c) = s.get("const") {
        out.insert("enum".into(), Value::Array(vec![c.clone()]));
    }
    if out.get("default").is_some_and(Value::is_null) {
        out.remove("default");
    }
    // Gemini's `type` is required; JSON Schema lets it be implied.
    if !out.contains_key("type")
        && !out.contains_key("anyOf")
        && !s.contains_key("anyOf")
        && !s.contains_key("oneOf")
    {
        let implied = if s.contains_key("properties") {
            Some("OBJECT")
        } else if s.contains_key("items") {
            Some("ARRAY")
        } else if out.contains_key("enum") {
            Some("STRING")
        } else {
            None
        };
        if let Some(t) = implied {
            out.insert("type".into(), t.into());
        }
    }
    // Gemini enums constrain strings only: other enums move into the description, so the
    // model still sees the allowed values and the arguments keep their type.
    if let Some(Value::Array(values)) = out.get("enum").cloned() {
        if out.get("type").and_then(Value::as_str) == Some("STRING") {
            let strings = values
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Value::String(s),
                    other => Value::String(other.to_string()),
                })
                .collect();
            out.insert("enum".into(), Value::Array(strings));
            out.entry("format").or_insert_with(|| "enum".into());
        } else {
            out.remove("enum");
            let list: Vec<String> = values.iter().map(Value::to_string).collect();
            let note = format!("One of: {}.", list.join(", "));
            let description = match out.get("description").and_then(Value::as_str) {
                Some(d) => format!("{d} {note}"),
                None => note,
            };
            out.insert("description".into(), description.into());
        }
    }
    if let Some(Value::Object(props)) = s.get("properties") {
        let mut converted = Map::new();
        for (name, p) in props {
            converted.insert(name.clone(), convert_at(p, defs, depth + 1)?);
        }
        out.insert("properties".into(), Value::Object(converted));
    }
    if let Some(req) = s.get("required").filter(|r| r.is_array()) {
        out.insert("required".into(), req.clone());
    }
    if let Some(items) = s.get("items") {
        out.insert("items".into(), convert_at(items, defs, depth + 1)?);
    }
    let variants = s
        .get("anyOf")
        .or_else(|| s.get("oneOf"))
        .and_then(Value::as_array);
    if let Some(variants) = variants {
        let mut any = Vec::new();
        for v in variants {
            // `{"type": "null"}` as a variant is how Pydantic spells an optional field.
            if v.get("type").and_then(Value::as_str) == Some("null")
                && v.as_object().is_some_and(|o| o.len() == 1)
            {
                nullable = true;
                continue;
            }
            any.push(convert_at(v, defs, depth + 1)?);
        }
        match any.len() {
            0 => {}
            1 if !out.contains_key("type") => {
                if let Some(Value::Object(one)) = any.pop() {
                    for (k, v) in one {
                        out.entry(k).or_insert(v);
                    }
                }
            }
            _ => {
                out.insert("anyOf".into(), Value::Array(any));
            }
        }
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        // Only the common single-element form (a described `$ref`) is expressible.
        if let [one] = all.as_slice()
            && let Some(Value::Object(one)) = convert_at(one, defs, depth + 1)
        {
            for (k, v) in one {
                out.entry(k).or_insert(v);
            }
        }
    }
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    Some(Value::Object(out))
}

/// Whether a converted object schema has no properties: Gemini refuses
/// `parameters: {type: OBJECT}` with no `properties`, and a function without parameters is
/// declared by leaving `parameters` out.
pub fn is_empty_object(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("OBJECT")
        && schema
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty)
}
