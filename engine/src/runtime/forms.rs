//! Form and start-data validation: a JSON Schema is built from a list of
//! fields once, when a definition is loaded, and every wrong field is
//! reported, not just the first.

use serde_json::{Map, Value, json};

use crate::definition::{Field, VarType};

/// What a field error says of a value that is no day of the calendar.
pub const NOT_A_DATE: &str = "must be a date (YYYY-MM-DD)";

/// What a field error says of a value that is no date and time: the
/// offset is asked for, Bolivia's first, since a time typed as UTC by
/// mistake is four hours off.
pub const NOT_A_DATETIME: &str =
    "must be a date and time with its offset (YYYY-MM-DDTHH:MM:SS-04:00 in Bolivia, or Z for UTC)";

/// A problem with one field of submitted data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// The field (empty for the form as a whole).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A compiled form.
pub struct Form {
    validator: jsonschema::Validator,
    /// Each field, in the form's order, with its type: for what JSON
    /// Schema lets through but a variable cannot hold (a whole number past
    /// CEL's int, a date-time without a day the engine can count from).
    fields: Vec<(String, VarType)>,
    /// Required text fields: blank (empty or only spaces) is not an answer.
    required_text: Vec<String>,
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Form")
            .field("fields", &self.fields)
            .finish()
    }
}

/// The JSON Schema of a list of fields.
pub fn schema(fields: &[Field]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in fields {
        let mut p = Map::new();
        let ty = match f.ty {
            VarType::String | VarType::Text | VarType::Date | VarType::Datetime => "string",
            VarType::Integer => "integer",
            VarType::Number => "number",
            VarType::Boolean => "boolean",
            VarType::List => "array",
            VarType::Object => "object",
        };
        // An optional field may be sent as null (cleared).
        if f.required {
            p.insert("type".into(), json!(ty));
            required.push(json!(f.name));
        } else {
            p.insert("type".into(), json!([ty, "null"]));
        }
        match f.ty {
            VarType::Date => {
                p.insert("format".into(), json!("date"));
            }
            VarType::Datetime => {
                p.insert("format".into(), json!("date-time"));
            }
            _ => {}
        }
        if let Some(pattern) = &f.pattern {
            // A form pattern must match the whole value; JSON Schema's searches.
            p.insert("pattern".into(), json!(format!("^(?:{pattern})$")));
        }
        if !f.options.is_empty() {
            let mut values: Vec<Value> = f.options.iter().map(|o| json!(o.value)).collect();
            if !f.required {
                values.push(Value::Null);
            }
            p.insert("enum".into(), Value::Array(values));
        }
        if let Some(min) = f.min {
            p.insert("minimum".into(), json!(min));
        }
        if let Some(max) = f.max {
            p.insert("maximum".into(), json!(max));
        }
        if let Some(n) = f.min_length {
            p.insert("minLength".into(), json!(n));
        }
        if let Some(n) = f.max_length {
            p.insert("maxLength".into(), json!(n));
        }
        properties.insert(f.name.clone(), Value::Object(p));
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

impl Form {
    /// Compiles the form of `fields`.
    pub fn new(fields: &[Field]) -> Result<Form, jsonschema::ValidationError<'static>> {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema(fields))?;
        Ok(Form {
            validator,
            fields: fields.iter().map(|f| (f.name.clone(), f.ty)).collect(),
            required_text: fields
                .iter()
                .filter(|f| f.required && matches!(f.ty, VarType::String | VarType::Text))
                .map(|f| f.name.clone())
                .collect(),
        })
    }

    /// A form that accepts nothing: what a form that fails to compile becomes,
    /// so that broken validation never lets any data through.
    pub fn reject_all() -> Form {
        Form {
            validator: jsonschema::validator_for(&Value::Bool(false)).expect("`false` is a schema"),
            fields: Vec::new(),
            required_text: Vec::new(),
        }
    }

    /// Every problem of `data`, in field order.
    pub fn check(&self, data: &Value) -> Vec<FieldError> {
        let mut errors: Vec<FieldError> = self
            .validator
            .iter_errors(data)
            .map(|e| {
                let path = e.instance_path().to_string();
                let mut field = path
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let message = match e.kind() {
                    jsonschema::error::ValidationErrorKind::Required { property } => {
                        field = property.as_str().unwrap_or_default().to_owned();
                        "this field is required".to_owned()
                    }
                    jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                        field = unexpected.join(", ");
                        "this form has no such field".to_owned()
                    }
                    // Messages a person can act on; the schema's own wording
                    // (a regular expression, a JSON type) is for developers.
                    jsonschema::error::ValidationErrorKind::Pattern { .. } => {
                        "does not have the expected format".to_owned()
                    }
                    jsonschema::error::ValidationErrorKind::Enum { .. } => {
                        "is not one of the allowed values".to_owned()
                    }
                    jsonschema::error::ValidationErrorKind::Minimum { limit } => {
                        format!("must be at least {}", bound(limit))
                    }
                    jsonschema::error::ValidationErrorKind::Maximum { limit } => {
                        format!("must be at most {}", bound(limit))
                    }
                    jsonschema::error::ValidationErrorKind::Format { format } => {
                        match format.as_str() {
                            "date" => NOT_A_DATE.to_owned(),
                            "date-time" => NOT_A_DATETIME.to_owned(),
                            _ => "does not have the expected format".to_owned(),
                        }
                    }
                    jsonschema::error::ValidationErrorKind::MinLength { limit } => {
                        format!("must have at least {limit} characters")
                    }
                    jsonschema::error::ValidationErrorKind::MaxLength { limit } => {
                        format!("must have at most {limit} characters")
                    }
                    jsonschema::error::ValidationErrorKind::Type { kind } => {
                        let types: Vec<jsonschema::JsonType> = match kind {
                            jsonschema::error::TypeKind::Single(t) => vec![*t],
                            jsonschema::error::TypeKind::Multiple(set) => set.iter().collect(),
                        };
                        must_be(&types)
                    }
                    _ => e.to_string(),
                };
                FieldError { field, message }
            })
            .collect();
        // Empty or only spaces is no answer to a required question (the
        // web form trims; the API and scenarios must not store "").
        let blank: Vec<&String> = self
            .required_text
            .iter()
            .filter(|n| {
                data.get(n.as_str())
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.trim().is_empty())
            })
            .collect();
        errors.retain(|e| !blank.contains(&&e.field));
        // What the schema let through that the field's variable would
        // refuse: stored, it would fail every expression that reads it.
        for (name, ty) in &self.fields {
            if let Some(value) = data.get(name.as_str())
                && !super::machine::admits(*ty, value)
                && !errors.iter().any(|e| e.field == *name)
            {
                let message = match ty {
                    VarType::Integer => "is too large for a whole number",
                    VarType::Date => NOT_A_DATE,
                    VarType::Datetime => NOT_A_DATETIME,
                    _ => "does not have the expected type",
                };
                errors.push(FieldError {
                    field: name.clone(),
                    message: message.to_owned(),
                });
            }
        }
        errors.extend(blank.into_iter().map(|n| FieldError {
            field: n.clone(),
            message: "this field is required".to_owned(),
        }));
        let order = |f: &FieldError| {
            self.fields
                .iter()
                .position(|(n, _)| *n == f.field)
                .unwrap_or(usize::MAX)
        };
        errors.sort_by_key(order);
        errors
    }
}

/// A bound as a person writes it: `2`, not `2.0`.
fn bound(limit: &Value) -> String {
    match limit.as_f64() {
        Some(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", n as i64),
        _ => limit.to_string(),
    }
}

/// "must be a whole number" for a field typed `integer` (or `integer` or
/// null: a value may always be cleared, so null is not named).
fn must_be(types: &[jsonschema::JsonType]) -> String {
    use jsonschema::JsonType;
    let what = types.iter().find_map(|t| match t {
        JsonType::Integer => Some("a whole number"),
        JsonType::Number => Some("a number"),
        JsonType::Boolean => Some("yes or no (true or false)"),
        JsonType::String => Some("text"),
        JsonType::Array => Some("a list"),
        JsonType::Object => Some("an object"),
        JsonType::Null => None,
    });
    format!("must be {}", what.unwrap_or("empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(yaml: &str) -> Form {
        let fields: Vec<Field> = serde_yaml::from_str(yaml).unwrap();
        Form::new(&fields).unwrap()
    }

    /// A whole number JSON Schema takes but no variable could hold (CEL's
    /// int is 64 bits) is refused at the form, not stored to fail every
    /// expression that reads it later.
    #[test]
    fn a_whole_number_past_the_engines_range_is_refused() {
        let f = form("- {name: n, type: integer}\n- {name: m, type: integer}");
        let big: Value = serde_json::from_str(r#"{"n": 18446744073709551615, "m": 1e19}"#).unwrap();
        let errors = f.check(&big);
        assert_eq!(
            errors,
            ["n", "m"].map(|field| FieldError {
                field: field.to_owned(),
                message: "is too large for a whole number".to_owned(),
            })
        );
        assert!(
            f.check(&json!({"n": 9_223_372_036_854_775_807_i64, "m": 3.0}))
                .is_empty()
        );
    }

    #[test]
    fn reports_every_wrong_field() {
        let f = form(
            r#"
- {name: ci, type: string, required: true, pattern: "[0-9]{5,10}"}
- {name: dias, type: integer, required: true, min: 2, max: 15}
- {name: zona, type: string, enum: [Centro, Sarco]}
- {name: fecha, type: date}
"#,
        );
        assert!(f.check(&json!({"ci": "1234567", "dias": 3})).is_empty());
        let errors = f
            .check(&json!({"ci": "12a", "dias": 40, "zona": "Marte", "fecha": "ayer", "extra": 1}));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["ci", "dias", "zona", "fecha", "extra"],
            "{errors:?}"
        );
        let missing = f.check(&json!({}));
        assert_eq!(missing.len(), 2);
        assert_eq!(missing[0].message, "this field is required");
        let messages: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.message.as_str()))
            .collect();
        assert!(
            messages.contains(&("dias", "must be at most 15")),
            "{messages:?}"
        );
        assert!(
            messages.contains(&("fecha", "must be a date (YYYY-MM-DD)")),
            "{messages:?}"
        );
    }

    /// A day not of the calendar is no date, and a time without its offset
    /// is refused with Bolivia's offset shown (typed as UTC, it would be
    /// four hours off).
    #[test]
    fn dates_are_days_and_times_carry_their_offset() {
        let f = form(
            r#"
- {name: fecha, type: date}
- {name: cita, type: datetime}
"#,
        );
        assert!(
            f.check(&json!({"fecha": "2028-02-29", "cita": "2026-12-07T10:00:00-04:00"}))
                .is_empty()
        );
        let errors = f.check(&json!({"fecha": "2026-02-30", "cita": "2026-12-07T10:00:00"}));
        let messages: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            messages,
            [("fecha", NOT_A_DATE), ("cita", NOT_A_DATETIME)],
            "{errors:?}"
        );
        assert!(NOT_A_DATETIME.contains("-04:00"));
    }

    /// A required text left empty or only spaces is no answer, in the API
    /// and in scenarios as in the web form (which trims).
    #[test]
    fn a_blank_required_text_is_missing() {
        let f = form(
            r#"
- {name: zona, type: string, required: true, pattern: "[A-Za-z ]+"}
- {name: nota, type: text}
"#,
        );
        for blank in ["", "   "] {
            let errors = f.check(&json!({"zona": blank, "nota": ""}));
            assert_eq!(
                errors,
                [FieldError {
                    field: "zona".into(),
                    message: "this field is required".into()
                }],
                "{blank:?}"
            );
        }
    }

    #[test]
    fn pattern_must_match_the_whole_value() {
        let f = form(r#"[{name: tel, type: string, required: true, pattern: "[0-9]{7}"}]"#);
        assert_eq!(f.check(&json!({"tel": "44400001234"})).len(), 1);
        assert!(f.check(&json!({"tel": "4440000"})).is_empty());
    }
}
