//! A deployed definition, ready to run: the definition plus what is
//! compiled from it once (forms, declared variables).

use std::collections::{HashMap, HashSet};

use crate::definition::{Definition, NodeKind};
use crate::runtime::forms::Form;

/// A deployed version of a definition.
#[derive(Debug)]
pub struct Process {
    /// Row id of the version.
    pub id: i64,
    /// The definition's code.
    pub code: String,
    /// The deployment version (1, 2, …).
    pub version: i64,
    /// The definition.
    pub definition: Definition,
    /// Forms of user tasks by node id, and the start's data under its node id.
    forms: HashMap<String, Form>,
    /// The same forms with no field required, for outcomes with `validate: false`.
    lenient: HashMap<String, Form>,
    declared: HashSet<String>,
}

impl Process {
    /// Compiles the forms of a validated definition.
    pub fn new(id: i64, version: i64, definition: Definition) -> Process {
        let mut forms = HashMap::new();
        let mut lenient = HashMap::new();
        for node in &definition.nodes {
            let fields = match &node.kind {
                NodeKind::UserTask(t) => &t.form,
                NodeKind::Start(s) => &s.data,
                _ => continue,
            };
            // Patterns were checked by validation; a form that still fails to
            // compile accepts nothing rather than anything.
            let optional: Vec<_> = fields
                .iter()
                .cloned()
                .map(|mut f| {
                    f.required = false;
                    f
                })
                .collect();
            match (Form::new(fields), Form::new(&optional)) {
                (Ok(form), Ok(relaxed)) => {
                    forms.insert(node.id.clone(), form);
                    lenient.insert(node.id.clone(), relaxed);
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(node = %node.id, error = %e, "form does not compile");
                    forms.insert(node.id.clone(), Form::reject_all());
                    lenient.insert(node.id.clone(), Form::reject_all());
                }
            }
        }
        let declared = definition
            .variables
            .iter()
            .map(|v| v.name.clone())
            .collect();
        Process {
            id,
            code: definition.code.clone(),
            version,
            definition,
            forms,
            lenient,
            declared,
        }
    }

    /// The form of a user task or start node.
    pub fn form(&self, node: &str) -> Option<&Form> {
        self.forms.get(node)
    }

    /// The form of a user task with no field required.
    pub fn lenient_form(&self, node: &str) -> Option<&Form> {
        self.lenient.get(node)
    }

    /// Whether `name` is a declared variable.
    pub fn declares(&self, name: &str) -> bool {
        self.declared.contains(name)
    }

    /// The values a form opens with for `instance`: each field's `default`
    /// expression where it gives a value, else the variable of the field's
    /// name where it is set. A default that gives null or cannot be
    /// computed (it reads a variable still null, say) falls back to that
    /// variable rather than failing the page.
    pub fn proposed(
        &self,
        fields: &[crate::definition::Field],
        instance: &crate::store::instances::InstanceRow,
    ) -> serde_json::Map<String, serde_json::Value> {
        let meta = crate::runtime::machine::InstanceMeta::from(instance).value();
        let variables = &instance.state.variables;
        let declared = |name: &str| self.declares(name);
        let scope = crate::runtime::eval::Scope {
            variables,
            declared: &declared,
            instance: &meta,
            extra: None,
        };
        fields
            .iter()
            .filter_map(|f| {
                let proposed = f
                    .default
                    .as_ref()
                    .and_then(|expr| match crate::runtime::eval::eval(expr, &scope) {
                        Ok(value) => Some(value),
                        Err(e) => {
                            tracing::debug!(field = %f.name, error = %e, "no proposed value");
                            None
                        }
                    })
                    .filter(|v| !v.is_null())
                    .or_else(|| variables.get(&f.name).filter(|v| !v.is_null()).cloned())?;
                Some((f.name.clone(), proposed))
            })
            .collect()
    }

    /// The start node.
    pub fn start(&self) -> Option<(&str, &crate::definition::Start)> {
        self.definition.nodes.iter().find_map(|n| match &n.kind {
            NodeKind::Start(s) => Some((n.id.as_str(), s)),
            _ => None,
        })
    }
}
