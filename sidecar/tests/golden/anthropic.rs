//! The Anthropic adapter (`tests/fixtures/anthropic/`):
//!
//! - `req_<case>.openai.json` (an OpenAI request): the snapshot is the URL and Messages body;
//! - `<case>.response.json` (a Messages answer): the snapshot is the OpenAI body and the
//!   normalised usage, or the classified error;
//! - `<case>.sse` (a whole Messages stream): the snapshot is the OpenAI chunks, the stream's end
//!   and the usage, identical whichever way the bytes are split. Cases named `*_usage` stream as
//!   for a client that asked for `stream_options.include_usage`.

use llmesh_api::ProviderKind;
use llmesh_api::prices::Prices;
use llmesh_api::snapshot::{Backend, SecretValue};
use llmesh_sidecar::providers::anthropic::Anthropic;
use llmesh_sidecar::providers::{Op, Provider};

use super::adapters::{SPLITS, case_name, decoded, pinning_created, raw, request, run_stream};
use super::{each_fixture, read_json};

const KEY: &str = "sk-ant-api03-Zx9TestKeyNotReal0000";

fn backend() -> Backend {
    Backend {
        name: "claude".into(),
        variant: "claude".into(),
        provider: ProviderKind::Anthropic,
        model: "claude-sonnet-4-5-20250929".into(),
        base_url: "https://api.anthropic.com/v1".into(),
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
    each_fixture("anthropic", "req_*.openai.json", 6, |path| {
        let input = read_json(path);
        let body = input.as_object().expect("object body");
        insta::assert_json_snapshot!(request(&Anthropic, &backend(), body));
    });
}

#[test]
fn responses() {
    each_fixture("anthropic", "*.response.json", 7, |path| {
        let actual = pinning_created(|| decoded(Anthropic.decode(&backend(), Op::Chat, raw(path))));
        insta::assert_json_snapshot!(actual);
    });
}

#[test]
fn streams_in_any_split() {
    each_fixture("anthropic", "*.sse", 8, |path| {
        let name = case_name(path, ".sse");
        let wants_usage = name.ends_with("_usage");
        let raw = raw(path);
        let run = |piece| {
            pinning_created(|| {
                run_stream(
                    Anthropic.stream(&backend(), Op::Chat, wants_usage),
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
