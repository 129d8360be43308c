//! Weighted split.

use super::*;

fn ab(weight_a: u32, weight_b: u32) -> String {
    route(
        "chat",
        &format!(
            r#"
            backends:
              - {{name: a, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {{name: openai, key: api-key}}, weight: {weight_a}, variant: control}}
              - {{name: b, provider: openai, model: gpt-4o-2024-08-06, secretRef: {{name: openai, key: api-key}}, weight: {weight_b}, variant: treatment}}
            "#
        ),
    )
}

#[tokio::test(start_paused = true)]
async fn without_a_user_key_traffic_splits_by_weight() {
    fastrand::seed(7);
    let (app, up) = app(&ab(80, 20));
    up.always("a", Reply::ok("a", 5, 1))
        .always("b", Reply::ok("b", 5, 1));
    let n = 2_000;
    let mut by_variant: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let r = post(hello("chat")).send(&app).await;
        assert_eq!(r.status, 200);
        *by_variant
            .entry(r.header("x-llmesh-variant").unwrap().to_string())
            .or_default() += 1;
    }
    let a = up.count("a");
    assert_eq!(a + up.count("b"), n);
    // 80% of 2,000 is 1,600; a binomial's standard deviation here is about 18.
    assert!((1_520..=1_680).contains(&a), "a got {a} of {n}");
    assert_eq!(by_variant["control"], a);
    assert_eq!(by_variant["treatment"], n - a);
    assert_eq!(
        metric(
            &app,
            "llmesh_requests_total",
            &[
                ("variant", "control"),
                ("backend", "a"),
                ("status_class", "2xx")
            ]
        ),
        a as f64
    );
    assert_eq!(
        metric(&app, "llmesh_requests_total", &[("variant", "treatment")]),
        (n - a) as f64
    );
}

#[tokio::test(start_paused = true)]
async fn a_user_keeps_the_same_variant_by_header_or_body_user() {
    fastrand::seed(11);
    let (app, up) = app(&ab(50, 50));
    up.always("a", Reply::ok("a", 5, 1))
        .always("b", Reply::ok("b", 5, 1));
    let mut seen_variants = std::collections::HashSet::new();
    for u in 0..40 {
        let user = format!("user-{u}");
        let first = post(hello("chat"))
            .header("x-llmesh-user", &user)
            .send(&app)
            .await
            .backend()
            .to_string();
        seen_variants.insert(first.clone());
        for _ in 0..4 {
            let r = post(hello("chat"))
                .header("x-llmesh-user", &user)
                .send(&app)
                .await;
            assert_eq!(r.backend(), first, "{user} moved");
        }
        // The body's `user` is the same key.
        let mut body = hello("chat");
        body["user"] = json!(user);
        for _ in 0..3 {
            assert_eq!(post(body.clone()).send(&app).await.backend(), first);
        }
    }
    assert_eq!(seen_variants.len(), 2, "both variants have users");
}

#[tokio::test(start_paused = true)]
async fn changing_weights_moves_few_users_and_only_toward_the_heavier_backend() {
    let (app, up) = app(&ab(50, 50));
    up.always("a", Reply::ok("a", 5, 1))
        .always("b", Reply::ok("b", 5, 1));
    let users: Vec<String> = (0..2_000).map(|u| format!("customer-{u}")).collect();
    let mut before = Vec::new();
    for u in &users {
        let r = post(hello("chat"))
            .header("x-llmesh-user", u)
            .send(&app)
            .await;
        before.push(r.backend().to_string());
    }
    let on_a = before.iter().filter(|b| *b == "a").count();
    assert!((900..=1_100).contains(&on_a), "50/50 put {on_a} users on a");

    app.apply(&snapshot(&ab(60, 40)));
    let mut moved = 0;
    for (u, was) in users.iter().zip(&before) {
        let now = post(hello("chat"))
            .header("x-llmesh-user", u)
            .send(&app)
            .await;
        if now.backend() != was {
            assert_eq!(
                (was.as_str(), now.backend()),
                ("b", "a"),
                "{u} moved the wrong way"
            );
            moved += 1;
        }
    }
    // The least any scheme can move is 10% of users; rendezvous hashing moves about that.
    let share = moved as f64 / users.len() as f64;
    assert!((0.07..=0.13).contains(&share), "{moved} users moved");
}
