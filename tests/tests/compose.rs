//! `docker-compose.yml` cannot be run here (no Docker engine), so it is checked against
//! the Compose Specification's JSON schema (vendored in `fixtures/compose-spec.json`,
//! from the docker-compose 1.29.2 distribution, Apache-2.0) and for what the README says
//! it provides.

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(r) => r
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(r.as_str())),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.as_str()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => panic!("non-string YAML key {other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect::<Map<_, _>>(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unsupported YAML node {other:?}"),
    }
}

fn compose() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .expect("docker-compose.yml at the repository root");
    let docs = YamlLoader::load_from_str(&text).expect("docker-compose.yml is valid YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    to_json(&docs[0])
}

#[test]
fn compose_file_matches_the_compose_specification() {
    let mut schema: Value =
        serde_json::from_str(include_str!("../fixtures/compose-spec.json")).unwrap();
    // The file names its draft as `.../2019-09/schema#`, a spelling the validator does not
    // resolve; the draft is given explicitly instead.
    schema.as_object_mut().unwrap().remove("$schema");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft201909)
        .build(&schema)
        .expect("the vendored schema compiles");
    let doc = compose();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "docker-compose.yml violates the compose spec:\n{}",
        errors.join("\n")
    );

    // The schema is strict enough to notice a misspelled service key.
    let mut broken = doc.clone();
    broken["services"]["redis"]["imagee"] = Value::from("redis");
    assert!(
        !validator.is_valid(&broken),
        "the schema check accepts unknown keys"
    );
}

#[test]
fn redis_service_takes_its_password_from_the_environment() {
    let doc = compose();
    let redis = &doc["services"]["redis"];
    assert!(redis["image"].as_str().unwrap().starts_with("redis:"));
    let command: Vec<&str> = redis["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let at = command
        .iter()
        .position(|a| *a == "--requirepass")
        .expect("--requirepass");
    assert!(
        command[at + 1].starts_with("${REDIS_PASSWORD"),
        "password must come from the environment"
    );
    // Only published on loopback.
    let port = redis["ports"][0].as_str().unwrap();
    assert!(port.starts_with("127.0.0.1:"), "{port}");
}

#[test]
fn tests_service_runs_the_ci_script_under_the_test_profile() {
    let doc = compose();
    let tests = &doc["services"]["tests"];
    assert_eq!(tests["profiles"], serde_json::json!(["test"]));
    assert_eq!(tests["command"], serde_json::json!(["bash", ".ci/run"]));
    let url = tests["environment"]["REDIS_URL"].as_str().unwrap();
    assert!(
        url.contains("${REDIS_PASSWORD") && url.contains("@redis:6379"),
        "{url}"
    );
}
