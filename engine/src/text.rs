//! Text that a person reads (Spanish first, English optional) and the
//! human numbering of steps and versions.
//!
//! Both accept the forms process owners naturally write in YAML: a bare
//! string for Spanish-only text, a bare integer for a step number.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A language the engine can show text in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    /// Spanish, the language of the call centre and of the original procedures.
    #[default]
    Es,
    /// English.
    En,
}

/// Text shown to people: Spanish is required, English is optional and falls
/// back to Spanish when missing.
///
/// In YAML either `label: Recibir llamada` or
/// `label: {es: Recibir llamada, en: Take the call}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Text {
    /// Spanish text.
    pub es: String,
    /// English text, if translated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub en: Option<String>,
}

impl Text {
    /// The text in `lang`, falling back to Spanish.
    pub fn get(&self, lang: Lang) -> &str {
        match (lang, &self.en) {
            (Lang::En, Some(en)) => en,
            _ => &self.es,
        }
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.es)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextMap {
    es: String,
    en: Option<String>,
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a text (a string, or a map with `es` and optionally `en`)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text {
                    es: v.to_owned(),
                    en: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text, A::Error> {
                let m = TextMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Text { es: m.es, en: m.en })
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

impl JsonSchema for Text {
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Text a person reads: a Spanish string, or {es, en}.",
            "oneOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "properties": {"es": {"type": "string"}, "en": {"type": "string"}},
                    "required": ["es"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// A number as people write it in a procedure: a step (`4`, `"9.1"`) or a
/// version label (`1`, `"2022-04"`).
///
/// Decimal-looking steps must be quoted: YAML reads `9.10` as the number
/// 9.1, so an unquoted float is refused rather than silently changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Numbering(pub String);

impl fmt::Display for Numbering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Numbering {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberingVisitor;
        impl Visitor<'_> for NumberingVisitor {
            type Value = Numbering;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number or a quoted string such as \"9.1\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Numbering, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("must not be empty"));
                }
                Ok(Numbering(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Numbering, E> {
                Ok(Numbering(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Numbering, E> {
                Ok(Numbering(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Numbering, E> {
                Err(E::custom(format!(
                    "write decimal step numbers in quotes (\"{v}\"): YAML reads 9.10 as 9.1"
                )))
            }
        }
        deserializer.deserialize_any(NumberingVisitor)
    }
}

impl JsonSchema for Numbering {
    fn schema_name() -> Cow<'static, str> {
        "Numbering".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A step or version number: an integer, or a quoted string such as \"9.1\".",
            "oneOf": [{"type": "integer"}, {"type": "string", "minLength": 1}]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_accepts_string_or_map_and_falls_back_to_spanish() {
        let t: Text = serde_yaml::from_str("Hola").unwrap();
        assert_eq!(t.get(Lang::En), "Hola");
        let t: Text = serde_yaml::from_str("{es: Hola, en: Hello}").unwrap();
        assert_eq!(t.get(Lang::En), "Hello");
        assert_eq!(t.get(Lang::Es), "Hola");
        let err = serde_yaml::from_str::<Text>("{es: Hola, fr: Salut}").unwrap_err();
        assert!(err.to_string().contains("unknown field `fr`"), "{err}");
    }

    #[test]
    fn numbering_refuses_unquoted_decimals() {
        let n: Numbering = serde_yaml::from_str("4").unwrap();
        assert_eq!(n.0, "4");
        let n: Numbering = serde_yaml::from_str("'9.10'").unwrap();
        assert_eq!(n.0, "9.10");
        let err = serde_yaml::from_str::<Numbering>("9.1").unwrap_err();
        assert!(err.to_string().contains("in quotes"), "{err}");
    }
}
