//! Properties of `gate_core::config`: the priority law over arbitrary key sets, environment
//! name decoding, errors naming key and layer, and tombstones against the other layers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use std::collections::BTreeSet;

use gate_core::config::{
    decode_env_name, get_path, load_daemon, merge_layers, ConfigSources, Layer, LayerData, Leaf,
    Node, Origin, SourceText, Value,
};
use proptest::prelude::*;

/// A key of the daemon schema with a generator of valid values.
#[derive(Debug, Clone, Copy)]
enum KeyKind {
    Port,
    Hours,
    RenewDays,
    Bool,
    Level,
    Label,
    Models,
}

const KEYS: &[(&str, KeyKind)] = &[
    ("port", KeyKind::Port),
    ("p2p_port", KeyKind::Port),
    ("log_level", KeyKind::Level),
    ("auth.allow_loopback", KeyKind::Bool),
    ("auth.jwt.issuer", KeyKind::Label),
    ("auth.jwt.expiration_hours", KeyKind::Hours),
    ("letsencrypt.auto_renew_days", KeyKind::RenewDays),
    ("letsencrypt.staging", KeyKind::Bool),
    ("relay.custom_domain", KeyKind::Label),
    ("upstreams.openai.models", KeyKind::Models),
    ("upstreams.groq.enabled", KeyKind::Bool),
];

fn value_for(kind: KeyKind) -> BoxedStrategy<Value> {
    match kind {
        KeyKind::Port => (1i64..=65535).prop_map(Value::Integer).boxed(),
        KeyKind::Hours => (1i64..=8760).prop_map(Value::Integer).boxed(),
        KeyKind::RenewDays => (1i64..=89).prop_map(Value::Integer).boxed(),
        KeyKind::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        KeyKind::Level => prop::sample::select(vec!["trace", "debug", "info", "warn", "error"])
            .prop_map(|s| Value::String(s.to_owned()))
            .boxed(),
        KeyKind::Label => "[a-z][a-z0-9]{0,8}".prop_map(Value::String).boxed(),
        KeyKind::Models => prop::collection::vec("[a-z][a-z0-9-]{0,6}", 0..3)
            .prop_map(Value::List)
            .boxed(),
    }
}

fn env_text(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::String(s) => s.clone(),
        Value::List(items) => items.join(","),
    }
}

fn env_name(prefix: &str, key: &str, double: bool) -> String {
    let body: Vec<String> = key.split('.').map(|s| s.to_ascii_uppercase()).collect();
    format!(
        "{prefix}{}{}",
        if double { "__" } else { "_" },
        body.join("__")
    )
}

fn insert_toml(table: &mut toml::Table, key: &str, value: &Value) {
    let parts: Vec<&str> = key.split('.').collect();
    let Some((last, parents)) = parts.split_last() else {
        return;
    };
    let mut current = table;
    for p in parents {
        let entry = current
            .entry((*p).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => unreachable!("test builds tables only"),
        };
    }
    current.insert((*last).to_owned(), value.to_toml());
}

/// Per key: a value (or nothing) for each of nix file 1, nix file 2, runtime, environment,
/// and which underscore form the environment variable uses.
type Assignment = Vec<([Option<Value>; 4], bool)>;

fn assignments() -> impl Strategy<Value = Assignment> {
    let per_key: Vec<_> = KEYS
        .iter()
        .map(|(_, kind)| {
            (
                [
                    prop::option::of(value_for(*kind)),
                    prop::option::of(value_for(*kind)),
                    prop::option::of(value_for(*kind)),
                    prop::option::of(value_for(*kind)),
                ],
                any::<bool>(),
            )
        })
        .collect();
    per_key
}

fn build_sources(assignment: &Assignment) -> ConfigSources {
    let mut files = [toml::Table::new(), toml::Table::new(), toml::Table::new()];
    let mut env = Vec::new();
    for ((key, _), (values, double)) in KEYS.iter().zip(assignment) {
        for (file, value) in files.iter_mut().zip(values.iter()) {
            if let Some(v) = value {
                insert_toml(file, key, v);
            }
        }
        if let Some(v) = &values[3] {
            env.push((env_name("GATE", key, *double), env_text(v)));
        }
    }
    let text = |t: &toml::Table| toml::to_string(t).unwrap();
    ConfigSources {
        nix_files: vec![
            SourceText::new("/nix1.toml", text(&files[0])),
            SourceText::new("/nix2.toml", text(&files[1])),
        ],
        runtime: SourceText::new("/state/config.toml", text(&files[2])),
        env,
    }
}

fn expected_origin_matches(origin: &Origin, layer_index: usize) -> bool {
    match (layer_index, origin) {
        (
            0,
            Origin::File {
                layer: Layer::Nix,
                path,
                ..
            },
        ) => path == "/nix1.toml",
        (
            1,
            Origin::File {
                layer: Layer::Nix,
                path,
                ..
            },
        ) => path == "/nix2.toml",
        (
            2,
            Origin::File {
                layer: Layer::Runtime,
                ..
            },
        ) => true,
        (3, Origin::Env { .. }) => true,
        _ => false,
    }
}

fn segment() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,5}(_[a-z0-9]{1,4})?"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For random values of each key in each layer, the merged value is the one from the
    /// highest layer that sets it (the later nix file over the earlier), and its origin
    /// names that layer; keys no layer sets keep their default.
    #[test]
    fn priority_law_over_the_daemon_schema(assignment in assignments()) {
        let sources = build_sources(&assignment);
        let loaded = load_daemon(&sources).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for ((key, _), (values, _)) in KEYS.iter().zip(&assignment) {
            let winner = values.iter().enumerate().rev().find_map(|(i, v)| v.as_ref().map(|v| (i, v)));
            let leaf = loaded.merged.get(key);
            match (winner, leaf) {
                (Some((index, value)), Some(leaf)) => {
                    prop_assert_eq!(&leaf.value, value, "key {}", key);
                    prop_assert!(expected_origin_matches(&leaf.origin, index), "key {} origin {:?}", key, leaf.origin);
                }
                (Some(_), None) => prop_assert!(false, "key {} lost", key),
                (None, Some(leaf)) => prop_assert_eq!(leaf.origin.layer(), Layer::Defaults, "key {}", key),
                (None, None) => {}
            }
        }
    }

    /// The generic merge over arbitrary key sets: highest layer wins, per key.
    #[test]
    fn priority_law_generic(
        layers in prop::collection::vec(
            prop::collection::btree_map(("[a-c]", "[a-c]"), "[a-z]{1,3}", 0..6), 4)
    ) {
        let order = [Layer::Defaults, Layer::Nix, Layer::Runtime, Layer::Environment];
        let mut data = Vec::new();
        for (layer, values) in order.iter().zip(&layers) {
            let mut d = LayerData::default();
            for ((a, b), v) in values {
                let origin = match layer {
                    Layer::Defaults => Origin::Default,
                    Layer::Environment => Origin::Env { var: format!("GATE_{a}__{b}") },
                    l => Origin::File { layer: *l, path: "f".into(), line: 1, column: 1 },
                };
                d.insert(&[a.clone(), b.clone()], Leaf { value: Value::String(v.clone()), origin });
            }
            data.push(d);
        }
        let (tree, _) = merge_layers(data);
        let all_keys: BTreeSet<_> = layers.iter().flat_map(|m| m.keys().cloned()).collect();
        for (a, b) in all_keys {
            let winner = order.iter().zip(&layers).rev().find_map(|(l, m)| m.get(&(a.clone(), b.clone())).map(|v| (*l, v)));
            let node = get_path(&tree, &[a.clone(), b.clone()]);
            match (winner, node) {
                (Some((layer, v)), Some(Node::Leaf(leaf))) => {
                    prop_assert_eq!(&leaf.value, &Value::String(v.clone()));
                    prop_assert_eq!(leaf.origin.layer(), layer);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }

    /// `GATE_A__B__C`, `GATE__A__B__C`, `RELAY__A__B` and `RELAY_A__B` all decode to the
    /// lower-cased segments, single underscores kept.
    #[test]
    fn env_names_decode(segments in prop::collection::vec(segment(), 1..4)) {
        let upper: Vec<String> = segments.iter().map(|s| s.to_ascii_uppercase()).collect();
        let body = upper.join("__");
        for (prefix, name) in [
            ("GATE", format!("GATE_{body}")),
            ("GATE", format!("GATE__{body}")),
            ("RELAY", format!("RELAY__{body}")),
            ("RELAY", format!("RELAY_{body}")),
        ] {
            prop_assert_eq!(decode_env_name(prefix, &name), Some(segments.clone()), "{}", name);
        }
        prop_assert_eq!(decode_env_name("RELAY", &format!("GATE_{body}")), None);
    }

    /// A bad value is reported with its key and the layer it was set in.
    #[test]
    fn bad_value_names_key_and_layer(
        key_index in 0usize..4,
        layer_index in 0usize..3,
        junk in "x[a-z]{0,5}",
        double in any::<bool>(),
    ) {
        let key = ["port", "p2p_port", "auth.jwt.expiration_hours", "letsencrypt.auto_renew_days"][key_index];
        let mut sources = ConfigSources::new("/state/config.toml");
        let mut table = toml::Table::new();
        insert_toml(&mut table, key, &Value::String(junk.clone()));
        let text = toml::to_string(&table).unwrap();
        let layer = match layer_index {
            0 => { sources.nix_files.push(SourceText::new("/nix.toml", text)); Layer::Nix }
            1 => { sources.runtime.text = text; Layer::Runtime }
            _ => { sources.env.push((env_name("GATE", key, double), junk.clone())); Layer::Environment }
        };
        let error = load_daemon(&sources).err();
        prop_assert!(error.is_some());
        let error = error.unwrap();
        prop_assert_eq!(error.key(), Some(key));
        prop_assert_eq!(error.layer(), Some(layer));
        let message = error.to_string();
        prop_assert!(message.contains(&format!("`{key}`")), "{}", message);
        prop_assert!(message.contains(layer.name()), "{}", message);
    }

    /// Tombstones in the runtime file beat the nix layer; the runtime file may define the
    /// name again; the environment wins over a tombstone.
    #[test]
    fn tombstones_beat_lower_layers_and_lose_to_environment(
        in_nix in prop::collection::vec(any::<bool>(), 5),
        removed in prop::collection::vec(any::<bool>(), 5),
        in_runtime in prop::collection::vec(any::<bool>(), 5),
        in_env in prop::collection::vec(any::<bool>(), 5),
    ) {
        let names = ["openai", "anthropic", "groq", "mistral", "google"];
        let mut nix = String::new();
        let mut runtime_body = String::new();
        let mut tombstones = Vec::new();
        let mut env = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if in_nix[i] {
                nix.push_str(&format!("[upstreams.{name}]\nprovider = \"{name}\"\nmodels = [\"from-nix\"]\n"));
            }
            if removed[i] {
                tombstones.push(format!("\"upstreams.{name}\""));
            }
            if in_runtime[i] {
                runtime_body.push_str(&format!("[upstreams.{name}]\nenabled = false\n"));
            }
            if in_env[i] {
                env.push((format!("GATE_UPSTREAMS__{}__API_KEY", name.to_ascii_uppercase()), "k".to_owned()));
            }
        }
        let runtime = format!("_removed = [{}]\n{runtime_body}", tombstones.join(", "));
        let sources = ConfigSources {
            nix_files: vec![SourceText::new("/nix.toml", nix)],
            runtime: SourceText::new("/state/config.toml", runtime),
            env,
        };
        let config = load_daemon(&sources).map_err(|e| TestCaseError::fail(e.to_string()))?.config;
        for (i, name) in names.iter().enumerate() {
            let nix_survives = in_nix[i] && !removed[i];
            let present = nix_survives || in_runtime[i] || in_env[i];
            prop_assert_eq!(config.upstreams.contains_key(*name), present, "{}", name);
            if let Some(up) = config.upstreams.get(*name) {
                let has_nix_models = up.models == ["from-nix"];
                prop_assert_eq!(has_nix_models, nix_survives, "{}", name);
                prop_assert_eq!(up.api_key.is_some(), in_env[i]);
                prop_assert_eq!(up.enabled, !in_runtime[i]);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Key paths survive format -> parse, including segments that need quotes.
    #[test]
    fn key_paths_round_trip(segments in prop::collection::vec("[a-z0-9_.\" \\\\-]{1,8}", 1..5)) {
        let text = gate_core::config::format_key_path(&segments);
        prop_assert_eq!(gate_core::config::parse_key_path(&text), Some(segments));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A variable under `GATE_` whose first segment starts with a prefix no daemon key has
    /// (so it is neither a section nor a typo of one) never stops loading: it is ignored
    /// with one warning naming it, whatever its value, and never quotes the value.
    #[test]
    fn foreign_env_vars_only_warn(
        tail in "[A-Z0-9_]{0,20}",
        value in "[ -~]{0,40}",
    ) {
        let name = format!("GATE_ZZQX{tail}");
        let mut sources = ConfigSources::new("/state/config.toml");
        sources.env = vec![(name.clone(), value.clone())];
        let loaded = load_daemon(&sources);
        prop_assert!(loaded.is_ok(), "{:?}", loaded.err());
        let warnings = loaded.map(|l| l.merged.warnings).unwrap_or_default();
        prop_assert_eq!(warnings.len(), 1);
        prop_assert!(warnings[0].contains(&name));
    }

    /// Any value of an integer key from the environment, multi-byte text included, gives a
    /// result (a value, an error or a service-link warning), never a panic.
    #[test]
    fn env_port_values_never_panic(value in "\\PC{0,12}") {
        let mut sources = ConfigSources::new("/state/config.toml");
        sources.env = vec![("GATE_PORT".to_owned(), value.clone())];
        let _ = load_daemon(&sources);
        sources.env = vec![("GATE_PORT".to_owned(), format!("tcp:/{value}"))];
        let _ = load_daemon(&sources);
    }

    /// A secret of the wrong type is never quoted in the error, from a file or the
    /// environment.
    #[test]
    fn wrong_typed_secrets_are_never_quoted(n in 100_000i64..i64::MAX) {
        let mut sources = ConfigSources::new("/state/config.toml");
        sources.nix_files.push(SourceText::new(
            "/etc/gate.toml",
            format!("[upstreams.openai]\napi_key = {n}\n\n[auth.jwt]\nsecret = {n}\n"),
        ));
        let e = load_daemon(&sources).err().map(|e| e.to_string()).unwrap_or_default();
        prop_assert!(!e.is_empty());
        prop_assert!(!e.contains(&n.to_string()), "{}", e);
        let mut sources = ConfigSources::new("/state/config.toml");
        sources.env = vec![("GATE_AUTH__JWT__SECRET".to_owned(), n.to_string())];
        let e = load_daemon(&sources).err().map(|e| e.to_string()).unwrap_or_default();
        prop_assert!(!e.contains(&n.to_string()), "{}", e);
    }
}
