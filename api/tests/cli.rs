//! The `tramite` binary as a process owner runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tramite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tramite"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_the_shipped_processes() {
    let out = tramite(&["validate", "processes/"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ok: processes/ope-sum-ven-p06.yaml (OPE-SUM-VEN-P06 v1"),
        "{stdout}"
    );
    assert!(stdout.contains("3 definition(s) valid"), "{stdout}");
}

#[test]
fn validate_a_single_file_resolves_calls_against_its_folder() {
    let out = tramite(&["validate", "processes/com-gcm-p01.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn validate_prints_every_error_compiler_style_and_exits_1() {
    let out = tramite(&[
        "validate",
        "--style",
        "short",
        "tests/definitions/invalid/connectors.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(": error[")).collect();
    assert_eq!(lines.len(), 6, "{stderr}");
    assert!(
        lines[0].starts_with(
            "tests/definitions/invalid/connectors.yaml:18:16: error[unknown-connector]"
        ),
        "{stderr}"
    );

    let out = tramite(&["validate", "tests/definitions/invalid/unknown-node.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--> tests/definitions/invalid/unknown-node.yaml:17:15"),
        "{stderr}"
    );
    assert!(stderr.contains("17 |         next: final\n"), "{stderr}");
    assert!(stderr.contains("error: 2 problem(s) found"), "{stderr}");
}

/// Warnings are printed, compiler-style, and pass; `--deny-warnings`
/// makes them fail, for a process owner's CI.
#[test]
fn validate_prints_warnings_and_fails_on_them_only_when_asked() {
    let file = "tests/definitions/warnings/maybe-unwritten.yaml";
    let out = tramite(&["validate", "--style", "short", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("8 warning(s)"), "{stdout}");
    assert!(stdout.contains("1 definition(s) valid"), "{stdout}");
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 8, "{stderr}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with(file) && l.contains(": warning[maybe-unwritten]: ")),
        "{stderr}"
    );

    let out = tramite(&["validate", "--deny-warnings", file]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("error: 8 problem(s) found"), "{stderr}");
    assert!(stderr.contains("warning[maybe-unwritten]: "), "{stderr}");
}

#[test]
fn validate_reports_a_missing_file_without_panicking() {
    let out = tramite(&["validate", "processes/nope.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read processes/nope.yaml"));
}

/// A file that cannot be read is one problem among the others: the files
/// after it are still checked; a folder without definitions is a failure,
/// not "0 definition(s) valid".
#[test]
fn validate_goes_on_past_an_unreadable_file_and_refuses_an_empty_folder() {
    let dir = std::env::temp_dir().join(format!("tramite-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a-latin1.yaml"), b"code: T-\xd1\n").unwrap();
    std::fs::write(
        dir.join("b.YAML"),
        "code: T-B\nname: B\nversion: 1\nowner_role: r\nroles: [{id: r, name: R}]\nnodes:\n  - {id: s, kind: start, channels: [web], next: e}\n  - {id: e, kind: end, outcome: ok}\n  - {id: x, kind: end, outcome: ok, surprise: 1}\n",
    )
    .unwrap();
    let out = tramite(&["validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("a-latin1.yaml"), "{err}");
    assert!(
        err.contains("b.YAML") && err.contains("surprise"),
        "the next file is checked: {err}"
    );
    // The same for a file of the library the definitions are checked
    // against: the definition is still checked.
    let library = dir.join("biblioteca");
    std::fs::create_dir_all(&library).unwrap();
    std::fs::write(library.join("latin1.yaml"), b"code: T-\xd1\n").unwrap();
    let out = tramite(&[
        "validate",
        "--library",
        library.to_str().unwrap(),
        dir.join("b.YAML").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("latin1.yaml"), "{err}");
    assert!(err.contains("surprise"), "the definition is checked: {err}");
    let empty = dir.join("vacio");
    std::fs::create_dir_all(&empty).unwrap();
    let out = tramite(&["validate", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no definition files"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn graph_prints_mermaid_and_dot() {
    let out = tramite(&["graph", "processes/ope-sum-ven-p06.yaml"]);
    assert!(out.status.success());
    let mermaid = text(&out.stdout);
    assert!(mermaid.contains("flowchart TD"));
    assert!(mermaid.contains(
        "n_tiene_impedimento -->|\"Con impedimento → paso 14\"| n_informar_imposibilidad"
    ));

    let out = tramite(&[
        "graph",
        "--format",
        "dot",
        "--lang",
        "en",
        "processes/ope-sum-ven-p06.yaml",
    ]);
    assert!(out.status.success());
    let dot = text(&out.stdout);
    assert!(dot.starts_with("digraph \"OPE-SUM-VEN-P06\""));
    assert!(
        dot.contains(
            "\"tiene_capacidad\" -> \"informar_imposibilidad\" [label=\"No capacity → step 14\"]"
        ),
        "{dot}"
    );

    // A draft away from the procedures it calls draws with `--library`.
    let alone = std::env::temp_dir().join(format!("tramite-graph-{}", std::process::id()));
    std::fs::create_dir_all(&alone).unwrap();
    let draft = alone.join("p06.yaml");
    std::fs::copy(repo().join("processes/ope-sum-ven-p06.yaml"), &draft).unwrap();
    let out = tramite(&["graph", draft.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "OPR-PAS-P02 is not beside it");
    let out = tramite(&["graph", "--library", "processes/", draft.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("flowchart TD"));
    let _ = std::fs::remove_dir_all(&alone);

    let out = tramite(&["graph", "tests/definitions/invalid/unreachable.yaml"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an invalid definition has no diagram"
    );
}

#[test]
fn schema_prints_the_committed_schema() {
    let out = tramite(&["schema"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(repo().join("docs/definition.schema.json")).unwrap();
    assert_eq!(text(&out.stdout), committed);
}

#[test]
fn validate_prints_every_expected_error_of_the_corpus() {
    let dir = repo().join("tests/definitions/invalid");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    for case in cases {
        let rel = case
            .strip_prefix(repo())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let out = tramite(&[
            "validate",
            "--style",
            "short",
            "--library",
            "processes/",
            &rel,
        ]);
        assert_eq!(out.status.code(), Some(1), "{rel} must fail");
        let stderr = text(&out.stderr);
        let expected = tramite_tests::expectations(&std::fs::read_to_string(&case).unwrap());
        let printed = stderr.lines().filter(|l| l.contains(": error[")).count();
        assert_eq!(printed, expected.len(), "{rel}:\n{stderr}");
        for e in expected {
            let head = format!("{rel}:{}:{}: error[{}]: ", e.line, e.column, e.code);
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with(&head) && l.contains(&e.contains)),
                "{rel}: missing `{head}… {}`\n{stderr}",
                e.contains
            );
        }
    }
}

#[test]
fn demo_runs_p06_on_a_sqlite_file_created_on_first_start() {
    let dir = std::env::temp_dir().join(format!("tramite-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("tramite.db");
    let url = format!("sqlite://{}", db.display());
    let out = tramite(&["demo", "--database-url", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(db.exists(), "the database file is created");
    assert!(
        stdout.contains("deployed OPE-SUM-VEN-P06 v1 (new)"),
        "{stdout}"
    );
    assert!(stdout.contains("naf.check_portfolio"), "{stdout}");
    assert!(stdout.contains("OPR-PAS-P02 →"), "{stdout}");
    assert!(stdout.contains("[venta_concretada]"), "{stdout}");
    // A second start finds everything where it was left.
    let again = tramite(&["demo", "--database-url", &url]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let stdout = text(&again.stdout);
    assert!(stdout.contains("deployed OPE-SUM-VEN-P06 v1\n"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Definitions and scenarios saved by a Windows editor begin with a byte
/// order mark; they validate and run as the same files without it.
#[test]
fn files_saved_with_a_byte_order_mark_validate_and_run() {
    let dir = std::env::temp_dir().join(format!("tramite-cli-bom-{}", std::process::id()));
    let scenarios = dir.join("scenarios");
    std::fs::create_dir_all(&scenarios).unwrap();
    for entry in std::fs::read_dir(repo().join("processes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(
                dir.join(path.file_name().unwrap()),
                format!("\u{feff}{text}"),
            )
            .unwrap();
        }
    }
    let scenario =
        std::fs::read_to_string(repo().join("processes/scenarios/01-venta-concretada.yaml"))
            .unwrap();
    std::fs::write(scenarios.join("01.yaml"), format!("\u{feff}{scenario}")).unwrap();
    let out = tramite(&["validate", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = tramite(&[
        "test",
        scenarios.to_str().unwrap(),
        "--processes",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success() && text(&out.stdout).contains("1 passed, 0 failed"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn test_runs_every_p06_scenario() {
    let out = tramite(&["test", "processes/scenarios"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let scenarios = std::fs::read_dir(repo().join("processes/scenarios"))
        .unwrap()
        .count();
    assert!(scenarios >= 15);
    assert!(
        stdout.contains(&format!("{scenarios} passed, 0 failed")),
        "{stdout}"
    );
}

#[test]
fn test_prints_expected_and_actual_paths_on_failure() {
    let out = tramite(&["test", "tests/scenarios/wrong-path.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAIL tests/scenarios/wrong-path.yaml"),
        "{stdout}"
    );
    assert!(
        stdout.contains("expected: inicio → canal_de_ingreso → recibir_llamada → identificar_cliente → consultar_naf → tiene_impedimento → solicitar_domicilio"),
        "{stdout}"
    );
    assert!(
        stdout.contains("actual:   inicio → canal_de_ingreso → recibir_llamada → identificar_cliente → consultar_naf → tiene_impedimento → informar_imposibilidad"),
        "{stdout}"
    );
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}

/// Scenario mistakes are reported, each in its own scenario, and the run
/// goes on to the next: a misspelt answer key, a start the procedure
/// refuses, an outcome on a wait, an answer never used, an expected
/// variable the procedure does not declare, a file not in UTF-8, an
/// incident that `end: running` does not hide, answers that are no answer,
/// answers written twice for one operation (the second silently replaced
/// the first), a message that reuses an earlier one's id (it did nothing),
/// a message no step waits for (kept, it did nothing), answers the catalog
/// says no system gives, a task that never opens because a call has no
/// answer (the failure names the call).
#[test]
fn test_reports_every_scenario_mistake_and_goes_on() {
    let out = tramite(&[
        "test",
        "tests/scenarios/mistakes",
        "processes/scenarios/01-venta-concretada.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for expected in [
        "answers: `naf.check_portfolo` is not an operation of the catalog",
        "FAIL tests/scenarios/mistakes/2-channel-not-allowed.yaml",
        "start: ",
        "step 1: `outcome` and `data` belong to a `complete` step",
        "answers: 1 scripted answer(s) for `gis.check_coverage` were never used",
        "variable `naf_impedimeto` is not declared by OPE-SUM-VEN-P06",
        "ok   processes/scenarios/01-venta-concretada.yaml",
        "5-not-utf8.yaml:3:13: the file is not UTF-8",
        "open incidents: expected 0, got 1: registrar_venta_smartflex in OPE-SUM-VEN-P06 (8 attempt(s) failed",
        "answers: `naf.check_portfolio` answer 1 has `retry_after`, which goes only beside `transient`",
        "answers: `naf.check_portfolio` answer 2 needs exactly one of `result`, `business`, `transient`, `refused`",
        "duplicate entry with key \"smartflex.register_service_request\" at line 8 column 3 (written again at 12:3)",
        "step 7: message `requisitos_whatsapp` has the id of one published before, so it did nothing",
        "answers: `naf.check_portfolio` answer 1 lacks `member`, which the catalog says the system always returns",
        "answers: `naf.check_portfolio` answer 1 lacks `debt_bs`",
        "answers: `naf.check_portfolio` answer 1 returns `deuda_bs`, which is not an output of the operation (outputs: found, member, client_name, has_impediment, impediments, debt_bs)",
        "answers: `naf.check_portfolio` answer 1 gives `found` the value \"si\", which is not of its type, boolean",
        "answers: `smartflex.register_service_request` answer 1 is the business error `cliente_moroso`, which the operation does not raise (it raises: product_not_available, client_blocked)",
        "step 6: no step of the procedures waits for a message `requisitos_whatsap` (they wait for `requisitos_whatsapp`",
        "step 4: no open task at `verificar_capacidad`; open: []; waiting at `consultar_gis` on a call that failed: the scenario has no (more) answers for `gis.check_coverage`",
        "1 passed, 12 failed",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing from:\n{stdout}"
        );
    }
}

/// A run that finds no scenario fails: scenarios moved into a subfolder
/// (which is not searched) must not leave CI green and untested.
#[test]
fn test_with_no_scenarios_fails() {
    let dir = std::env::temp_dir().join(format!("tramite-empty-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("p06")).unwrap();
    let out = tramite(&["test", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no scenario files"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `serve --connectors DIR` says which systems stay simulated (a folder
/// without Smartflex's file must not go unnoticed in production) and warns
/// of a service task whose timeout would cut its connector's tries short.
/// Demo users, one of whom deploys procedures and settles incidents, with
/// their tokens printed, are only for a server this machine alone reaches:
/// bound to every address without `--users`, `serve` refuses to start.
#[test]
fn serve_refuses_demo_users_where_others_can_reach_them() {
    let dir = std::env::temp_dir().join(format!("tramite-serve-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("tramite.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_tramite"))
        .args(["serve", "--database-url", &url, "--bind", "0.0.0.0:0"])
        .current_dir(repo())
        .env_remove("TRAMITE_USERS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("pass --users FILE"), "{err}");
    assert!(
        !text(&out.stdout).contains("responsable"),
        "no token printed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One of the WhatsApp webhook's two secrets without the other is refused
/// at start-up: the webhook was quietly off.
#[test]
fn serve_refuses_half_the_whatsapp_secrets() {
    let out = Command::new(env!("CARGO_BIN_EXE_tramite"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .current_dir(repo())
        .env("WHATSAPP_APP_SECRET", "secreto")
        .env_remove("WHATSAPP_VERIFY_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("go together"), "{err}");
}

/// A count of zero is refused at start-up, not quietly read as one.
#[test]
fn serve_refuses_zero_workers_writers_and_lease() {
    for flag in ["--workers", "--writers", "--lease-seconds"] {
        let out = tramite(&["serve", flag, "0"]);
        assert!(!out.status.success(), "{flag} 0");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("invalid value '0' for '{flag}")),
            "{err}"
        );
    }
}

#[test]
fn serve_names_simulated_systems_and_short_timeouts() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("tramite-serve-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    let naf = std::fs::read_to_string(repo().join("connectors/config/naf.yaml")).unwrap();
    std::fs::write(
        dir.join("connectors/naf.yaml"),
        naf.replace("timeout: 3s", "timeout: 5s"),
    )
    .unwrap();
    let url = format!("sqlite://{}", dir.join("tramite.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tramite"))
        .args(["serve", "--database-url", &url, "--bind", "127.0.0.1:0"])
        .arg("--connectors")
        .arg(dir.join("connectors"))
        .current_dir(repo())
        .env("NAF_TOKEN", "x")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let last = line.contains("WhatsApp webhook");
        lines.push(line);
        if last {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = lines.join("\n");
    for expected in [
        "connector naf → http://127.0.0.1:8090/naf",
        "connector gis → SIMULATED (no file for it in",
        "connector smartflex → SIMULATED (no file for it in",
        "warning: OPE-SUM-VEN-P06 `consultar_naf`: its timeout (10 s) is shorter than naf's tries can take (15.6 s",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing from:\n{stdout}"
        );
    }
}

/// The example in docs/scenarios.md is a scenario that runs and passes, not
/// only an illustration of the format.
/// A purge cannot be undone: a retention under a day (`180m`, minutes,
/// typed for months) stops `serve` before it opens anything.
#[test]
fn serve_refuses_a_retention_under_a_day() {
    let dir = std::env::temp_dir().join(format!("tramite-retention-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/t.db", dir.display());
    let out = tramite(&[
        "serve",
        "--database-url",
        &url,
        "--bind",
        "127.0.0.1:0",
        "--retention",
        "180m",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--retention 180m: ended requests are kept at least a day"),
        "{stderr}"
    );
    assert!(!dir.join("t.db").exists(), "nothing was opened");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_format_guides_scenario_passes() {
    let guide = std::fs::read_to_string(repo().join("docs/scenarios.md")).unwrap();
    let example = guide
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a yaml block");
    let dir = std::env::temp_dir().join(format!("tramite-guide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("guide.yaml");
    std::fs::write(&file, example).unwrap();
    let out = tramite(&["test", file.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && stdout.contains("1 passed, 0 failed"),
        "{stdout}{}",
        text(&out.stderr)
    );
}
