//! Definitions end to end: the shipped procedures validate clean, every
//! invalid case in `tests/definitions/invalid/` reports exactly the errors
//! it expects at the lines and columns it expects, P06 is faithful to the
//! original, and its diagram and the format's schema do not drift.

use std::collections::BTreeSet;

use tramite_engine::definition::{NodeKind, Side};
use tramite_engine::diagnostic::Code;
use tramite_engine::diagram::{self, Format};
use tramite_engine::text::Lang;
use tramite_tests::{compile, expectations, processes, repo_root};

fn p06_text() -> String {
    std::fs::read_to_string(repo_root().join("processes/ope-sum-ven-p06.yaml")).unwrap()
}

#[test]
fn shipped_definitions_validate_clean() {
    let files = processes();
    let codes: BTreeSet<String> = files
        .iter()
        .map(|f| {
            let name = f.path.display().to_string();
            match compile(&name, &f.text) {
                Ok(c) if c.warnings.items.is_empty() => c.definition.code,
                Ok(c) => panic!("{name} has warnings:\n{}", c.warnings.render(&f.text)),
                Err(d) => panic!("{name} does not validate:\n{}", d.render(&f.text)),
            }
        })
        .collect();
    let expected = ["COM-GCM-P01", "OPE-SUM-VEN-P06", "OPR-PAS-P02"];
    assert_eq!(codes, expected.iter().map(|s| s.to_string()).collect());
}

#[test]
fn every_invalid_case_reports_exactly_its_expected_errors() {
    let dir = repo_root().join("tests/definitions/invalid");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 19, "the corpus shrank: {cases:?}");
    let mut failures = Vec::new();
    let mut codes_seen = BTreeSet::new();
    for case in &cases {
        let text = std::fs::read_to_string(case).unwrap();
        let expected = expectations(&text);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            case.display()
        );
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let diagnostics = match compile(&name, &text) {
            Ok(_) => {
                failures.push(format!("{name}: validated clean, expected {expected:?}"));
                continue;
            }
            Err(d) => d,
        };
        let actual: Vec<(u32, u32, String, String)> = diagnostics
            .items
            .iter()
            .map(|d| {
                let pos = d
                    .pos
                    .unwrap_or_else(|| panic!("{name}: no position for {d:?}"));
                codes_seen.insert(d.code);
                (pos.line, pos.column, d.code.to_string(), d.message.clone())
            })
            .collect();
        failures.extend(mismatch(&name, &expected, actual));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    // The corpus exercises every check the validator has.
    let all = [
        Code::YamlSyntax,
        Code::InvalidValue,
        Code::UnknownField,
        Code::MissingField,
        Code::DuplicateId,
        Code::StartCount,
        Code::UnknownNode,
        Code::Unreachable,
        Code::NoEndReachable,
        Code::GateWithoutDefault,
        Code::Expression,
        Code::SpinCycle,
        Code::UnknownRole,
        Code::UnknownConnector,
        Code::UnknownOperation,
        Code::UnknownInput,
        Code::MissingInput,
        Code::UnknownOutput,
        Code::UnknownBusinessError,
        Code::UnknownVariable,
        Code::NeverWritten,
        Code::TypeMismatch,
        Code::ForkWithoutJoin,
        Code::JoinWithoutFork,
        Code::UnknownProcedure,
        Code::UnknownEnd,
        Code::UnknownDocument,
        Code::InvalidSetting,
    ];
    let missing: Vec<_> = all.iter().filter(|c| !codes_seen.contains(c)).collect();
    assert!(missing.is_empty(), "no corpus case covers {missing:?}");
}

/// What differs between a case's `# expect:` lines and what it got, as a
/// message; `None` when they agree.
fn mismatch(
    name: &str,
    expected: &[tramite_tests::Expected],
    mut actual: Vec<(u32, u32, String, String)>,
) -> Option<String> {
    actual.sort();
    let matches = actual.len() == expected.len()
        && actual.iter().zip(expected).all(|(a, e)| {
            a.0 == e.line && a.1 == e.column && a.2 == e.code && a.3.contains(&e.contains)
        });
    (!matches).then(|| {
        format!(
            "{name}:\n  expected:\n{}\n  actual:\n{}",
            expected
                .iter()
                .map(|e| format!("    {}:{} {} {:?}", e.line, e.column, e.code, e.contains))
                .collect::<Vec<_>>()
                .join("\n"),
            actual
                .iter()
                .map(|a| format!("    {}:{} {} {:?}", a.0, a.1, a.2, a.3))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// `tests/definitions/warnings/`: definitions that deploy, each with the
/// warnings it must get, at their lines and columns.
#[test]
fn every_warning_case_deploys_with_exactly_its_expected_warnings() {
    let dir = repo_root().join("tests/definitions/warnings");
    let mut failures = Vec::new();
    let mut cases = 0;
    for case in std::fs::read_dir(&dir).unwrap() {
        let case = case.unwrap().path();
        let text = std::fs::read_to_string(&case).unwrap();
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        cases += 1;
        let compiled = match compile(&name, &text) {
            Ok(c) => c,
            Err(d) => {
                failures.push(format!("{name} has errors:\n{}", d.render(&text)));
                continue;
            }
        };
        let actual = compiled
            .warnings
            .items
            .iter()
            .map(|d| {
                let pos = d.pos.expect("a warning has a position");
                (pos.line, pos.column, d.code.to_string(), d.message.clone())
            })
            .collect();
        failures.extend(mismatch(&name, &expectations(&text), actual));
        // Rendered like an error, but called a warning.
        let rendered = compiled.warnings.render(&text);
        assert!(rendered.starts_with("warning["), "{rendered}");
        assert!(!rendered.contains("error["), "{rendered}");
    }
    assert!(cases >= 1);
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn a_broken_copy_of_p06_with_three_mistakes_gets_three_messages() {
    let text = p06_text()
        // 1. a misspelt field inside a node
        .replacen(
            "    role: agente_ventas_digitales\n",
            "    rol: agente_ventas_digitales\n",
            1,
        )
        // 2. an outcome leading to a node that does not exist
        .replacen(
            "        next: informar_imposibilidad\n",
            "        next: informar_imposibilida\n",
            1,
        )
        // 3. a gate condition that reads an undeclared variable
        .replacen(
            "      - when: capacidad_confirmada\n",
            "      - when: capacidad_confirmda\n",
            1,
        );
    let diagnostics = compile("p06-broken.yaml", &text).expect_err("three mistakes");
    let got: Vec<(Code, u32)> = diagnostics
        .items
        .iter()
        .map(|d| (d.code, d.pos.expect("positioned").line))
        .collect();
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .expect("mistake present") as u32
            + 1
    };
    // In the order of the file.
    let mut expected = vec![
        (Code::UnknownField, line_of("rol: agente_ventas_digitales")),
        (Code::UnknownVariable, line_of("when: capacidad_confirmda")),
        (Code::UnknownNode, line_of("next: informar_imposibilida")),
    ];
    expected.sort_by_key(|(_, line)| *line);
    assert_eq!(got, expected, "{diagnostics}");
}

#[test]
fn graph_mistakes_are_reported_beside_the_others() {
    let text = p06_text()
        // 1. an unknown top-level field
        .replacen("owner_role:", "descripcion: x\nowner_role:", 1)
        // 2. two gates whose defaults lead to each other: a cycle without waiting
        .replacen(
            "    default: informar_imposibilidad\n    default_label: {es: Con impedimento",
            "    default: tiene_capacidad\n    default_label: {es: Con impedimento",
            1,
        )
        .replacen(
            "    default: informar_imposibilidad\n    default_label: {es: Sin capacidad",
            "    default: tiene_impedimento\n    default_label: {es: Sin capacidad",
            1,
        )
        // 3. an indicator counting an end that does not exist
        .replacen("ends: [venta_concretada]", "ends: [venta_concretda]", 1);
    let diagnostics = compile("p06-broken.yaml", &text).expect_err("three mistakes");
    let codes: Vec<Code> = diagnostics.items.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        vec![Code::UnknownField, Code::UnknownEnd, Code::SpinCycle],
        "{diagnostics}"
    );
    let cycle = &diagnostics.items[2].message;
    assert!(
        cycle.contains("tiene_impedimento → tiene_capacidad → tiene_impedimento"),
        "{cycle}"
    );
}

#[test]
fn p06_models_every_step_of_the_original() {
    let compiled = compile("p06", &p06_text()).unwrap();
    let def = compiled.definition;
    assert_eq!(def.code, "OPE-SUM-VEN-P06");
    let steps: BTreeSet<String> = def
        .nodes
        .iter()
        .filter_map(|n| n.step.as_ref())
        .map(|s| s.0.split('.').next().unwrap().to_owned())
        .collect();
    for step in 1..=14 {
        assert!(steps.contains(&step.to_string()), "step {step} has no node");
    }
    // Both decision points lead to step 14 when they fail.
    let step_of = |id: &str| def.node(id).and_then(|n| n.step.clone()).map(|s| s.0);
    for gate in ["tiene_impedimento", "tiene_capacidad"] {
        let NodeKind::ExclusiveGate(g) = &def.node(gate).unwrap().kind else {
            panic!("{gate} is a gate");
        };
        assert_eq!(
            step_of(g.default.as_deref().unwrap()).as_deref(),
            Some("14")
        );
    }
    // The WhatsApp wait correlates on the mobile the agent wrote at step 8
    // (the phone the client called from, unless that was a landline) and
    // has a timeout route.
    let NodeKind::MessageWait(w) = &def.node("recibir_requisitos").unwrap().kind else {
        panic!("step 9 is a message wait");
    };
    assert_eq!(
        w.correlation.source(),
        "whatsapp != null ? whatsapp : telefono"
    );
    assert!(w.timeout.is_some());
    // Lost call → call back (1.2), with a deadline that escalates.
    let NodeKind::UserTask(t) = &def.node("devolver_llamada").unwrap().kind else {
        panic!("1.2 is a user task");
    };
    assert!(t.due.is_some() && t.escalation.is_some());
    // Step 14's reasons include the ones the original names.
    let NodeKind::UserTask(t) = &def.node("informar_imposibilidad").unwrap().kind else {
        panic!("14 is a user task");
    };
    let reasons: Vec<&str> = t.form[0].options.iter().map(|o| o.value.as_str()).collect();
    for r in [
        "central_riesgos",
        "devolucion_equipo",
        "sin_capacidad_tecnica",
        "otro",
    ] {
        assert!(reasons.contains(&r), "reason {r} missing: {reasons:?}");
    }
    // Documents, indicator and links as in the original.
    let docs: Vec<&str> = def.documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(docs, ["solicitud_servicio", "contrato_servicios"]);
    let ind = &def.indicators[0];
    assert_eq!(ind.verdict.threshold, 95.0);
    assert_eq!(ind.verdict.at_threshold, Side::Above);
    assert_eq!(ind.numerator.ends, ["venta_concretada"]);
    assert_eq!(def.links.entry[0].code, "COM-GCM-P01");
    assert_eq!(def.links.exit[0].code, "OPR-PAS-P02");
    // Instructions of step 3 carry the Annex 1 protocol.
    let NodeKind::UserTask(t) = &def.node("identificar_cliente").unwrap().kind else {
        panic!("3 is a user task");
    };
    let instructions = t.instructions.as_ref().unwrap();
    assert!(
        instructions
            .es
            .contains("Bienvenido(a) a Ventas Digitales Comteco")
    );
    assert!(instructions.get(Lang::En).contains("Annex 1"));
}

#[test]
fn p06_mermaid_diagram_matches_its_snapshot() {
    let compiled = compile("p06", &p06_text()).unwrap();
    let actual = diagram::render(&compiled.definition, Format::Mermaid, Lang::Es);
    let path = repo_root().join("tests/snapshots/ope-sum-ven-p06.mmd");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected =
        std::fs::read_to_string(&path).expect("snapshot exists (UPDATE_SNAPSHOTS=1 writes it)");
    assert_eq!(
        actual, expected,
        "rerun with UPDATE_SNAPSHOTS=1 if the change is intended"
    );
}

#[test]
fn committed_schema_is_the_generated_one() {
    let committed = std::fs::read_to_string(repo_root().join("docs/definition.schema.json"))
        .expect("docs/definition.schema.json exists");
    assert_eq!(
        committed,
        tramite_engine::schema::definition_schema_text(),
        "regenerate with `cargo run -p tramite -- schema > docs/definition.schema.json`"
    );
}

#[test]
fn schema_accepts_the_shipped_definitions_and_flags_mistakes() {
    let schema = tramite_engine::schema::definition_schema();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    for f in processes() {
        let doc: serde_json::Value = serde_yaml::from_str(&f.text).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", f.path.display());
    }
    let broken = p06_text().replacen(
        "    role: agente_ventas_digitales\n",
        "    rol: agente_ventas_digitales\n",
        1,
    );
    let doc: serde_json::Value = serde_yaml::from_str(&broken).unwrap();
    assert!(
        !validator.is_valid(&doc),
        "an unknown field must fail the schema"
    );
}

#[test]
fn the_worked_example_in_the_format_guide_validates() {
    let guide = std::fs::read_to_string(repo_root().join("docs/definition-format.md")).unwrap();
    let after = guide
        .split("## A worked example")
        .nth(1)
        .expect("the guide has a worked example");
    let example = after
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a yaml block");
    if let Err(d) = compile("docs/definition-format.md", example) {
        panic!(
            "the worked example does not validate:\n{}",
            d.render(example)
        );
    }
}

#[test]
fn the_readme_shows_the_current_p06_diagram() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let compiled = compile("p06", &p06_text()).unwrap();
    let diagram = diagram::render(&compiled.definition, Format::Mermaid, Lang::Es);
    assert!(
        readme.contains(&format!("```mermaid\n{diagram}```")),
        "README.md's P06 diagram is stale: paste `tramite graph processes/ope-sum-ven-p06.yaml`"
    );
}

/// A rework loop through a join is no spin when a branch of its fork waits
/// (the join fires only once that branch arrives); with every branch
/// instant, the same loop spins and is named.
#[test]
fn a_loop_through_a_join_that_waits_is_no_spin() {
    use tramite_tests::REWORK;
    let review = "  - id: revisar\n    kind: user_task\n    role: agente\n    form:\n      - {name: rehacer, type: boolean}\n    outcomes:\n      - {id: ok, label: Listo, next: unir}";
    assert!(REWORK.contains(review));
    let instant = REWORK.replacen(
        review,
        "  - id: revisar\n    kind: exclusive_gate\n    branches:\n      - when: rehacer == true\n        next: unir\n    default: unir",
        1,
    );
    if let Err(d) = compile("rework.yaml", REWORK) {
        panic!("a loop that waits at its join was refused:\n{d}");
    }
    let diagnostics = compile("spin.yaml", &instant).expect_err("every branch instant");
    let codes: Vec<Code> = diagnostics.items.iter().map(|d| d.code).collect();
    assert!(codes.contains(&Code::SpinCycle), "{diagnostics}");
    // A token that reaches the join from outside its fork passes through
    // it: a loop back to a branch rather than to the fork spins.
    let past_the_fork = REWORK.replacen(
        "      - when: rehacer == true\n        next: dividir",
        "      - when: rehacer == true\n        next: anotar",
        1,
    );
    let diagnostics = compile("spin.yaml", &past_the_fork).expect_err("a loop past the fork");
    assert!(
        diagnostics.items.iter().any(|d| d.code == Code::SpinCycle
            && d.message.contains("anotar → unir → otra_vez → anotar")),
        "{diagnostics}"
    );
}

/// What the checks added for side paths and known types must not refuse:
/// a side path inside a fork ends at the fork's join, whatever follows the
/// join (the side token is absorbed there); a date is written as text.
#[test]
fn side_paths_to_their_join_and_dates_written_as_text_validate() {
    let text = r#"
code: T-VALIDO
name: Válido
version: 1
owner_role: agente
roles: [{id: agente, name: Agente}]
variables:
  - {name: fecha, type: date}
  - {name: monto, type: number}
  - {name: dias, type: integer}
nodes:
  - {id: inicio, kind: start, channels: [web], next: dividir}
  - {id: dividir, kind: fork, branches: [lenta, rapida], join: unir}
  - id: lenta
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Listo, next: unir, set: {fecha: "'2026-12-01'", dias: monto}}]
    due: 1h
    escalation: {next: aviso, interrupting: false}
  - id: aviso
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Avisado, next: unir}]
  - id: rapida
    kind: user_task
    role: agente
    form: [{name: monto, type: number}]
    outcomes: [{id: ok, label: Listo, next: unir}]
  - {id: unir, kind: join, next: registrar}
  - id: registrar
    kind: user_task
    role: agente
    outcomes: [{id: ok, label: Listo, next: fin}]
  - {id: fin, kind: end, outcome: listo}
"#;
    if let Err(d) = compile("valido.yaml", text) {
        panic!("{}", d.render(text));
    }
}

/// A form's `pattern` is ECMA-262, as the docs say and as the submission
/// check and the browser read it: a look-ahead validates and is enforced.
#[test]
fn an_ecma_pattern_validates_and_is_enforced() {
    let text = "code: T-PATTERN\nname: Patrón\nversion: 1\nowner_role: agente\nroles: [{id: agente, name: Agente}]\nvariables:\n  - {name: telefono, type: string}\nnodes:\n  - {id: inicio, kind: start, channels: [web], next: tarea}\n  - id: tarea\n    kind: user_task\n    role: agente\n    form:\n      - {name: telefono, type: string, pattern: \"^(?!0)[0-9]{7,8}$\"}\n    outcomes:\n      - {id: ok, label: Listo, next: fin}\n  - {id: fin, kind: end, outcome: listo}\n";
    let compiled = compile("pattern.yaml", text).unwrap_or_else(|d| panic!("{}", d.render(text)));
    let NodeKind::UserTask(task) = &compiled.definition.node("tarea").unwrap().kind else {
        panic!("a user task");
    };
    let form = tramite_engine::runtime::forms::Form::new(&task.form).unwrap();
    assert!(
        form.check(&serde_json::json!({"telefono": "71234567"}))
            .is_empty()
    );
    assert_eq!(
        form.check(&serde_json::json!({"telefono": "01234567"}))
            .len(),
        1,
        "a leading zero is refused"
    );
}

/// A called procedure with problems of its own (here a misspelt `channels`
/// in its start, or a file that is not YAML) is not read as one that takes
/// no fields and cannot be called: the caller gets one line that sends the
/// owner to it, not a false error per input.
#[test]
fn a_broken_callee_is_named_not_misread() {
    use tramite_engine::library::{SourceFile, compile as compile_all};
    let root = repo_root().join("processes");
    let file = |name: &str, text: String| SourceFile {
        path: root.join(name),
        text,
    };
    let p02 = std::fs::read_to_string(root.join("opr-pas-p02.yaml")).unwrap();
    let misspelt = p02.replacen("channels:", "chanels:", 1);
    assert_ne!(misspelt, p02);
    // A broken draft beside the real file does not hide it.
    let results = compile_all(
        &[file("ope-sum-ven-p06.yaml", p06_text())],
        &[
            file("opr-pas-p02-borrador.yaml", misspelt.clone()),
            file("opr-pas-p02.yaml", p02),
        ],
        &tramite_connectors::catalog(),
    );
    assert!(results[0].1.is_ok(), "{:?}", results[0].1);
    for callee in [
        misspelt,
        "code: \"OPR-PAS-P02\"\nname: [sin cerrar\n".to_owned(),
    ] {
        let results = compile_all(
            &[file("ope-sum-ven-p06.yaml", p06_text())],
            &[file("opr-pas-p02.yaml", callee.clone())],
            &tramite_connectors::catalog(),
        );
        let Err(d) = &results[0].1 else {
            panic!("P06 cannot be checked against a broken OPR-PAS-P02");
        };
        let found: Vec<(Code, &str)> = d
            .items
            .iter()
            .map(|d| (d.code, d.message.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "{callee}: {found:?}");
        assert_eq!(found[0].0, Code::UnknownProcedure);
        assert!(
            found[0].1.contains("`OPR-PAS-P02` has problems of its own"),
            "{found:?}"
        );
    }
}
