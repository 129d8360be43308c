use serde_json::json;

use super::*;

#[test]
fn only_messages_paths_are_anthropics() {
    let r = |m: Method, p: &str| Anthropic.route(&m, p, None).map(|e| e.op);
    assert_eq!(r(Method::POST, "/v1/messages"), Some(Op::Chat));
    assert_eq!(
        r(Method::POST, "/v1/messages/count_tokens"),
        Some(Op::CountTokens)
    );
    assert_eq!(r(Method::GET, "/v1/messages"), None);
    assert_eq!(r(Method::POST, "/v1/chat/completions"), None);
}

#[test]
fn validation_accepts_a_full_tool_round_trip() {
    let body = json!({"model": "m", "max_tokens": 5, "system": "be brief", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_a", "name": "w", "input": {}},
            {"type": "tool_use", "id": "toolu_b", "name": "w", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "1"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "2"}]},
        {"role": "assistant", "content": ""}]});
    assert_eq!(validate(&body, true), Ok(()));
    let mut partial = body.clone();
    partial["messages"][2]["content"]
        .as_array_mut()
        .unwrap()
        .pop();
    assert!(validate(&partial, true).unwrap_err().contains("toolu_b"));
}
