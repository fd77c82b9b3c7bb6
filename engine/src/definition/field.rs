//! Variable types and form fields.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::expr::Expr;
use crate::text::Text;

/// The type of a variable or form field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VarType {
    /// Text on one line.
    String,
    /// Text on several lines.
    Text,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// Yes or no.
    Boolean,
    /// A calendar date (`2026-11-27`).
    Date,
    /// A date and time with offset (RFC 3339).
    Datetime,
    /// A list of values.
    List,
    /// A structured value.
    Object,
}

impl VarType {
    /// Whether a value of type `self` can be stored in a variable of type `other`.
    pub fn fits(self, other: VarType) -> bool {
        self == other
            || matches!(
                (self, other),
                (VarType::String, VarType::Text)
                    | (VarType::Text, VarType::String)
                    | (VarType::Integer, VarType::Number)
            )
    }
}

impl fmt::Display for VarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            VarType::String => "string",
            VarType::Text => "text",
            VarType::Integer => "integer",
            VarType::Number => "number",
            VarType::Boolean => "boolean",
            VarType::Date => "date",
            VarType::Datetime => "datetime",
            VarType::List => "list",
            VarType::Object => "object",
        };
        f.write_str(s)
    }
}

/// A field of a form (user task) or of the data a start carries. Filling it
/// writes the variable of the same name.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// The variable this field writes.
    pub name: String,
    /// Its type; must agree with the variable's.
    #[serde(rename = "type")]
    pub ty: VarType,
    /// The field's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Text>,
    /// A hint shown under the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<Text>,
    /// Must be filled in.
    #[serde(default)]
    pub required: bool,
    /// Regular expression the whole value must match (`string` and `text` fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// The only values allowed.
    #[serde(default, rename = "enum", skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<EnumOption>,
    /// Smallest number allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest number allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Fewest characters allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u32>,
    /// Most characters allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    /// Value proposed when the form opens, computed from the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Expr>,
}

/// An allowed value of a field, with an optional label: `fibra` or
/// `{value: fibra, label: Internet por fibra}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnumOption {
    /// The stored value.
    pub value: String,
    /// What people see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnumOptionMap {
    value: String,
    label: Option<Text>,
}

impl<'de> Deserialize<'de> for EnumOption {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OptionVisitor;
        impl<'de> Visitor<'de> for OptionVisitor {
            type Value = EnumOption;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value, or a map with `value` and `label`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnumOption, E> {
                Ok(EnumOption {
                    value: v.to_owned(),
                    label: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EnumOption, A::Error> {
                let m = EnumOptionMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EnumOption {
                    value: m.value,
                    label: m.label,
                })
            }
        }
        deserializer.deserialize_any(OptionVisitor)
    }
}

impl JsonSchema for EnumOption {
    fn schema_name() -> Cow<'static, str> {
        "EnumOption".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let text = generator.subschema_for::<Text>();
        json_schema!({
            "oneOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "properties": {"value": {"type": "string"}, "label": text},
                    "required": ["value"],
                    "additionalProperties": false
                }
            ]
        })
    }
}
