//! The Gemini adapter (`tests/fixtures/gemini/`):
//!
//! - `req_<case>.openai.json` (an OpenAI request): the snapshot is the URL and Gemini body;
//! - `<case>.response.json` (a `GenerateContentResponse`): the snapshot is the OpenAI body, or
//!   the classified error;
//! - `<case>.sse` (a whole `alt=sse` stream): the snapshot is the OpenAI chunks, the stream's
//!   end and the usage, identical whichever way the bytes are split. Cases named `*_usage`
//!   stream as for a client that asked for `stream_options.include_usage`.
//!
//! Tool-call and completion ids come from the thread's generator, seeded before each decoder
//! is made, so the snapshots are stable.

use llmesh_api::ProviderKind;
use llmesh_api::prices::Prices;
use llmesh_api::snapshot::{Backend, SecretValue};
use llmesh_sidecar::providers::gemini::Gemini;
use llmesh_sidecar::providers::{Op, Provider};

use super::adapters::{SPLITS, case_name, decoded, pinning_created, raw, request, run_stream};
use super::{each_fixture, read_json};

const KEY: &str = "AIzaSyD-TestKeyNotReal-0000000000000";
const SEED: u64 = 42;

fn backend() -> Backend {
    Backend {
        name: "gemini".into(),
        variant: "gemini".into(),
        provider: ProviderKind::Gemini,
        model: "gemini-2.5-flash".into(),
        base_url: "https://generativelanguage.googleapis.com/v1beta".into(),
        api_key: Some(SecretValue::new(KEY)),
        weight: 1,
        prices: Prices::default(),
        priced: false,
        context_window: None,
        max_concurrency: None,
        headers: Vec::new(),
        azure: None,
        mock: None,
    }
}

#[test]
fn requests() {
    each_fixture("gemini", "req_*.openai.json", 7, |path| {
        let input = read_json(path);
        let body = input.as_object().expect("object body");
        insta::assert_json_snapshot!(request(&Gemini, &backend(), body));
    });
}

#[test]
fn responses() {
    each_fixture("gemini", "*.response.json", 6, |path| {
        let actual = pinning_created(|| {
            fastrand::seed(SEED);
            decoded(Gemini.decode(&backend(), Op::Chat, raw(path)))
        });
        insta::assert_json_snapshot!(actual);
    });
}

#[test]
fn streams_in_any_split() {
    each_fixture("gemini", "*.sse", 8, |path| {
        let name = case_name(path, ".sse");
        let wants_usage = name.ends_with("_usage");
        let raw = raw(path);
        let run = |piece| {
            pinning_created(|| {
                fastrand::seed(SEED);
                run_stream(
                    Gemini.stream(&backend(), Op::Chat, wants_usage),
                    &raw,
                    piece,
                )
            })
        };
        let whole = run(0);
        for piece in SPLITS {
            assert_eq!(run(piece), whole, "{name} split every {piece} bytes");
        }
        insta::assert_json_snapshot!(whole);
    });
}
