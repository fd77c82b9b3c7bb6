//! The JSON Schema of the definition format, for editors (YAML language
//! server) and for `tramite schema`.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::definition::{
    Call, Definition, End, ExclusiveGate, Fork, Join, MessageWait, Node, NodeKind, ServiceTask,
    Start, TimerWait, UserTask,
};
use crate::text::{Numbering, Text};

/// The schema of a definition file (JSON Schema draft 7, which editors support best).
pub fn definition_schema() -> Value {
    let generator = SchemaGenerator::new(SchemaSettings::draft07().for_deserialize());
    let mut schema = generator.into_root_schema_for::<Definition>();
    schema.insert(
        "$id".to_owned(),
        json!("https://tramite.dev/schema/definition.schema.json"),
    );
    schema.to_value()
}

/// The schema text as committed in `docs/definition.schema.json`.
pub fn definition_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&definition_schema()).expect("a schema serializes");
    text.push('\n');
    text
}

fn kind_schema<T: JsonSchema>(generator: &mut SchemaGenerator, kind: &str) -> Value {
    let mut schema = T::json_schema(generator).to_value();
    let common = json!({
        "id": {"type": "string", "description": "Unique node id."},
        "kind": {"const": kind},
        "step": generator.subschema_for::<Option<Numbering>>().to_value(),
        "label": generator.subschema_for::<Option<Text>>().to_value(),
    });
    let object = schema
        .as_object_mut()
        .expect("a struct schema is an object");
    let properties = object
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("properties is an object");
    if let Value::Object(common) = common {
        properties.extend(common);
    }
    let required = object
        .entry("required")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .expect("required is an array");
    required.insert(0, json!("kind"));
    required.insert(0, json!("id"));
    object.insert("additionalProperties".to_owned(), Value::Bool(false));
    object.insert("title".to_owned(), json!(kind));
    schema
}

impl JsonSchema for Node {
    fn schema_name() -> Cow<'static, str> {
        "Node".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let kinds = vec![
            kind_schema::<Start>(generator, "start"),
            kind_schema::<UserTask>(generator, "user_task"),
            kind_schema::<ServiceTask>(generator, "service_task"),
            kind_schema::<ExclusiveGate>(generator, "exclusive_gate"),
            kind_schema::<Fork>(generator, "fork"),
            kind_schema::<Join>(generator, "join"),
            kind_schema::<MessageWait>(generator, "message_wait"),
            kind_schema::<TimerWait>(generator, "timer_wait"),
            kind_schema::<Call>(generator, "call"),
            kind_schema::<End>(generator, "end"),
        ];
        debug_assert_eq!(kinds.len(), NodeKind::NAMES.len());
        let schema = json!({
            "description": "A node: `id`, `kind`, optional `step` and `label`, and the fields of its kind.",
            "type": "object",
            "required": ["id", "kind"],
            "properties": {"kind": {"enum": NodeKind::NAMES}},
            "oneOf": kinds,
        });
        Schema::try_from(schema).expect("an object is a schema")
    }
}
