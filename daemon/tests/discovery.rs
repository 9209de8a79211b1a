//! Model discovery (routing's third tier) asks every upstream without an explicit model list
//! at once: an upstream that never answers holds only its own list, up to the 15 s timeout,
//! and another upstream's models are routable as soon as it answers. Under both runtimes,
//! with the gateway as a library and mock upstreams on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{temp_dir, Mock};
use gate_daemon::auth::TokenStore;
use gate_daemon::gateway::Gateway;
use gate_rt::Runtime;

/// Well under the 15 s a hanging upstream may hold its query: a sequential discovery that
/// asks the hanging upstream first cannot meet it.
const DEADLINE: Duration = Duration::from_secs(10);

async fn hanging_upstream_does_not_delay_another<R: Runtime>(rt: R) {
    let dir = temp_dir(&format!("discovery-{}", R::NAME));
    let state = dir.join("state");
    // Upstreams are asked in name order: the hanging one comes first.
    let hanging = Mock::hanging("hanging");
    let fast = Mock::listing("fast", &["fast-model", "fast-model-2"]);
    let config = dir.join("gate.toml");
    std::fs::write(
        &config,
        format!(
            "[upstreams.a-hanging]\nprovider = \"custom\"\nbase_url = \"{}\"\n\n\
             [upstreams.b-fast]\nprovider = \"custom\"\nbase_url = \"{}\"\n",
            hanging.base_url(),
            fast.base_url()
        ),
    )
    .expect("write gate.toml");
    let loaded = gate_daemon::settings::load(&[config], &state).expect("configuration");
    let tokens = TokenStore::load(&state).expect("token store");
    let gateway = Arc::new(Gateway::new(rt.clone(), &loaded.config, tokens).expect("gateway"));
    assert!(gateway.routes().is_empty(), "{:?}", gateway.routes());

    let started = Instant::now();
    let discovery = gateway.clone();
    rt.spawn(async move { discovery.discover_models().await });
    let routed_to_fast = |model: &str| {
        gateway.routes().iter().any(|(name, candidates)| {
            name == model && candidates.iter().any(|c| &*c.upstream_name == "b-fast")
        })
    };
    while !(routed_to_fast("fast-model") && routed_to_fast("fast-model-2")) {
        assert!(
            started.elapsed() < DEADLINE,
            "the fast upstream's models are not routable after {DEADLINE:?}: {:?}",
            gateway.routes()
        );
        rt.sleep(Duration::from_millis(20)).await;
    }
    // The hanging upstream was asked too (it never answers).
    while hanging.model_list_requests.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < DEADLINE,
            "the hanging upstream was never asked"
        );
        rt.sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fast.model_list_requests.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hanging_upstream_does_not_delay_another_on_tokio() {
    gate_runtime_tokio::block_on(hanging_upstream_does_not_delay_another).expect("runtime");
}

#[test]
fn hanging_upstream_does_not_delay_another_on_smol() {
    gate_runtime_smol::block_on(hanging_upstream_does_not_delay_another).expect("runtime");
}
